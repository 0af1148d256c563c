"""Run one step end to end: claim it, do its work, record the result.

Commit first, publish second, ack last: this function commits the step's result and
returns the messages to publish; the actor publishes them and Dramatiq acks after.
"""

from __future__ import annotations

from dramatiq.middleware import CurrentMessage

from shiftflow.kernel import failpoints
from shiftflow.kernel.contracts import StepPayload
from shiftflow.kernel.enqueue import Outgoing
from shiftflow.kernel.errors import PermanentError, TransientError
from shiftflow.kernel.executors import execute
from shiftflow.kernel.settings import get_settings
from shiftflow.models.runs import claim_step, complete_step, fail_step, note_retry, step_context


def run_step(payload: StepPayload) -> list[Outgoing]:
    """Claim, run and record one step; return the messages for the steps that follow.

    Raises:
        TransientError: the work may pass later and the step's retry budget is not spent;
            Dramatiq's Retries middleware redelivers the message with backoff.
    """
    settings = get_settings()
    message = CurrentMessage.get_current_message()
    claim = claim_step(payload, delivery_limit=settings.delivery_limit,
                       message_id=message.message_id if message is not None else None)
    if claim.step is None:
        return claim.outgoing
    step_def = claim.definition.step(claim.step.step_id)
    failpoints.hit("step.before_work", step_def.id)
    try:
        output = execute(step_def, step_context(claim.execution, claim.definition), settings)
    except PermanentError as exc:
        fail_step(claim, str(exc))
        return []
    except TransientError as exc:
        if note_retry(claim, str(exc)) > step_def.retry_max:
            fail_step(claim, f"gave up after {step_def.retry_max} retries: {exc}")
            return []
        raise
    failpoints.hit("step.after_work", step_def.id)
    outgoing = complete_step(claim, output)
    failpoints.hit("step.after_commit", step_def.id)
    return outgoing
