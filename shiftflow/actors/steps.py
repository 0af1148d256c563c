"""Step actors: cheap steps on ``steps``, outside calls on ``tools`` and the per-kind tool
queues (``tools.email``, ``tools.browser``, ``tools.media``: a tool step goes to the queue
its tool declares), model calls on ``llm``. Each runs one step; a tool actor goes on with
the next step when it is the only one ready and runs on the same actor (``run_chain``)."""

from __future__ import annotations

from typing import Any

from shiftflow.actors import actor
from shiftflow.kernel.contracts import StepPayload, decode
from shiftflow.kernel.enqueue import send_all
from shiftflow.models.engine import deploy_step, task_planner, tasks, waits
from shiftflow.models.engine.run_step import register_handler, run_chain, run_step
from shiftflow.models.patterns import agent

register_handler("event", waits.run_event_step)
register_handler("task", tasks.run_task_step)
register_handler("deploy", deploy_step.run_deploy_step)
assert agent.NAME in tasks.TASKS  # the shipped agent task registers itself on import
register_handler("agent_plan", task_planner.run_plan_step)


@actor("steps.run")
def run(payload: dict[str, Any]) -> None:
    """Run a condition or transform step, then publish the steps that became ready."""
    send_all(run_step(decode(StepPayload, payload)))


@actor("tools.call")
def call(payload: dict[str, Any]) -> None:
    """Run a step that calls an outside tool, then the next ones while they are exactly one
    for this actor (``run_chain``), then publish the steps that became ready."""
    send_all(run_chain(decode(StepPayload, payload), "tools.call"))


@actor("tools.email")
def email(payload: dict[str, Any]) -> None:
    """Run a tool step whose tool sends email (its own pool: SMTP servers are slow)."""
    send_all(run_chain(decode(StepPayload, payload), "tools.email"))


@actor("tools.browser")
def browser(payload: dict[str, Any]) -> None:
    """Run a tool step whose tool drives the headless browser (a memory-hungry pool)."""
    send_all(run_chain(decode(StepPayload, payload), "tools.browser"))


@actor("tools.media")
def media(payload: dict[str, Any]) -> None:
    """Run a tool step whose tool converts images, audio or video."""
    send_all(run_chain(decode(StepPayload, payload), "tools.media"))


@actor("llm.call")
def llm(payload: dict[str, Any]) -> None:
    """Run a model-call step: an ``llm`` step (one model call, or a few when its output fails
    validation, recorded as ``llm_call`` rows) or an agent task's planner (``agent_plan``)."""
    send_all(run_step(decode(StepPayload, payload)))
