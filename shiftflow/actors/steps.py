"""Step actors: cheap steps on ``steps``, outside calls on ``tools``; both run one step."""

from __future__ import annotations

from typing import Any

from shiftflow.actors import actor
from shiftflow.kernel.contracts import StepPayload, decode
from shiftflow.kernel.enqueue import send_all
from shiftflow.models.engine import waits
from shiftflow.models.engine.run_step import register_handler, run_step

register_handler("event", waits.run_event_step)


@actor("steps.run")
def run(payload: dict[str, Any]) -> None:
    """Run a condition or transform step, then publish the steps that became ready."""
    send_all(run_step(decode(StepPayload, payload)))


@actor("tools.call")
def call(payload: dict[str, Any]) -> None:
    """Run a step that calls an outside tool, then publish the steps that became ready."""
    send_all(run_step(decode(StepPayload, payload)))
