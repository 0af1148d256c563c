"""Run one step end to end: claim it, do its work, record the result.

Commit first, publish second, ack last: this function commits the step's result and
returns the messages to publish; the actor publishes them and Dramatiq acks after.
Transient failures are parked with a durable timer (``retry_later``) instead of being
re-raised, so a backoff never holds a message unacknowledged in RabbitMQ.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from dramatiq.middleware import CurrentMessage

from shiftflow.kernel import failpoints, isolation
from shiftflow.kernel.contracts import StepPayload
from shiftflow.kernel.enqueue import Outgoing
from shiftflow.kernel.errors import PermanentError, TransientError
from shiftflow.kernel.executors import call_tool
from shiftflow.kernel.settings import get_settings
from shiftflow.models import effects_ledger, fanout, waits
from shiftflow.models.runs import (
    Claim,
    claim_step,
    complete_step,
    fail_step,
    render_inputs,
    retry_later,
    was_running,
)

#: Step types that park the step WAITING instead of producing an output at once.
WAITING_TYPES = frozenset({"wait", "wait_event", "approval", "workflow"})

#: Step types whose whole run is owned by a domain module (registered by name, so the
#: engine does not import every domain): handler(claim, inputs, stored) -> messages.
Handler = Callable[[Claim, Any, Any], list[Outgoing]]
HANDLERS: dict[str, Handler] = {}


def register_handler(step_type: str, handler: Handler) -> None:
    """Let a domain module run every step of ``step_type`` (e.g. SideShift swaps)."""
    HANDLERS[step_type] = handler


def run_step(payload: StepPayload) -> list[Outgoing]:
    """Claim, run and record one step; return the messages for the steps that follow.

    A redelivered message whose step was RUNNING when its process died is a suspect and
    runs alone in this process (``kernel.isolation``), so a death can be pinned on it.
    """
    message = CurrentMessage.get_current_message()
    suspect = bool(getattr(message, "redelivered", False)) and was_running(payload)
    with isolation.guard(suspect):
        return _run_step(payload, message.message_id if message is not None else None)


def _run_step(payload: StepPayload, message_id: str | None) -> list[Outgoing]:
    settings = get_settings()
    claim = claim_step(payload, delivery_limit=settings.delivery_limit, message_id=message_id)
    if claim.step is None:
        return claim.outgoing
    step = claim.definition.step(claim.step.step_id)
    if step.for_each is not None and claim.step.iteration == 0:
        return fanout.expand(claim)
    failpoints.hit("step.before_work", step.id)
    extra = fanout.item_context(claim.step) if claim.step.iteration > 0 else None
    stored = None
    scrub: Any = str  # until the inputs are rendered, no secret was used
    try:
        rendered = render_inputs(claim, extra)
        inputs, stored, scrub = rendered.call, rendered.stored, rendered.scrub
        if step.type in WAITING_TYPES:
            return waits.begin(claim, inputs, stored)
        if step.type in HANDLERS:
            return HANDLERS[step.type](claim, inputs, stored)
        # An outside service may echo a secret it was sent: scrub before anything stores it
        # (the effect ledger's result included); the tool masks its own error messages
        # before it shortens them (a secret cut in two would escape a mask applied after).
        if step.effect == "once":
            output = effects_ledger.call_once(claim, stored,
                                              lambda: scrub(call_tool(step, inputs, settings, scrub)))
        else:
            output = scrub(call_tool(step, inputs, settings, scrub))
    except PermanentError as exc:
        return fail_step(claim, scrub(str(exc)), stored_input=stored)
    except TransientError as exc:
        if claim.step.retry_count >= step.retry.max:
            return fail_step(claim, scrub(f"gave up after {step.retry.max} retries: {exc}"), stored_input=stored)
        retry_later(claim, scrub(str(exc)), step.retry.delay(claim.step.retry_count + 1, random.random()))
        return []
    failpoints.hit("step.after_work", step.id)
    outgoing = complete_step(claim, output, stored)
    failpoints.hit("step.after_commit", step.id)
    return outgoing
