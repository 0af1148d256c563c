"""The intent/result ledger around outside effects that must not repeat (README: Durability).

``call_once`` commits SENDING before the call and DONE with the result after it; both
writes wait out a database outage (``leases.until_stored``), so an answer that arrived
is recorded once the database is back. A claim that finds DONE reuses the recorded
result. One that finds SENDING (its holder died after sending: a claim never takes a
step over from a live holder, ``models.engine.leases``) cannot know whether the call landed:
it marks the effect UNKNOWN and parks the step WAITING for an operator, who settles it
(``shiftflow effects settle``: done with a result, failed, or call again); the call is
never repeated blindly. A refusal that says nothing was done (``RateLimited``: a 429, or a
503 asking us to wait) puts the effect back to PLANNED, so the attempt after the wait sends.

The ledger records the holder's answer whenever it arrives: a holder whose answer comes
after its effect was marked UNKNOWN still records DONE and completes the parked step.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shiftflow.kernel.enqueue import Outgoing
from shiftflow.kernel.errors import PermanentError, RateLimited
from shiftflow.models.engine import leases, mongo_log, runs
from shiftflow.models.tables.base import utcnow
from shiftflow.models.tables.executions import Execution, StepExecution
from shiftflow.models.tables.side_effects import SideEffect

#: ``wait_key`` prefix of a step parked until an operator settles its effect.
EFFECT_WAIT = "effect:"
#: Marks the execution error written while a step waits for an operator (cleared when settled).
WAITING_NOTE = "outcome unknown, waiting for an operator"


class OutcomeUnknown(PermanentError):
    """Raised when an effect was sent before and its outcome was never recorded."""

    def __init__(self, message: str, effect_id: Any) -> None:
        super().__init__(message)
        self.effect_id = effect_id


def request_hash(request: Any) -> str:
    """SHA-256 of the canonical JSON of a request."""
    return hashlib.sha256(json.dumps(request, sort_keys=True, default=str).encode()).hexdigest()


def settle_hint(effect_id: Any) -> str:
    """What an operator runs to settle an effect with an unknown outcome."""
    return (f"shiftflow effects settle {effect_id} --done --result JSON | --failed --reason TEXT | --retry "
            f"(or POST /api/v1/effects/{effect_id}/settle)")


@dataclass
class _Intent:
    """What the intent transaction found: reuse a result, an unknown outcome, or send."""

    effect_id: Any = None
    attempt: int = 0  # the ``attempts`` value this holder's SENDING wrote
    done: bool = False
    result: Any = None
    unknown: bool = False


def _intend(claim: runs.Claim, digest: str, kind: str, mine: _Intent) -> _Intent:
    """One try of the intent transaction. ``mine.attempt`` is set once this holder wrote
    SENDING, so a retry after a commit whose answer was lost recognises its own SENDING."""
    assert claim.step is not None
    execution, step = claim.execution, claim.step
    with runs.transaction():
        SideEffect.insert(workspace=execution.workspace_id, execution=execution.id, step_id=step.step_id,
                          iteration=step.iteration, kind=kind, state="PLANNED", request_hash=digest,
                          created_at=utcnow(), updated_at=utcnow()).on_conflict_ignore().execute()
        effect = SideEffect.get((SideEffect.execution == execution.id) & (SideEffect.step_id == step.step_id)
                                & (SideEffect.iteration == step.iteration))
        if effect.request_hash != digest:
            raise PermanentError(f"step {step.step_id}: the request differs from the one already recorded")
        found = _Intent(effect.id, mine.attempt)
        if effect.state == "DONE":
            found.done, found.result = True, effect.result
        elif effect.state == "SENDING" and mine.attempt and effect.attempts == mine.attempt:
            pass  # this holder's own SENDING, committed although its answer was lost: send
        elif effect.state in ("SENDING", "UNKNOWN"):
            # Committed before the step parks: the UNKNOWN mark must outlive the failure.
            effect.state, effect.updated_at, found.unknown = "UNKNOWN", utcnow(), True
            effect.save()
            mongo_log.execution_log(execution, f"step {step.step_id}: effect outcome unknown, needs reconciliation",
                               level="error", step_id=step.step_id, metadata={"effectId": str(effect.id)})
        else:
            effect.state, effect.sent_at, effect.attempts = "SENDING", utcnow(), effect.attempts + 1
            effect.save()
            found.attempt = mine.attempt = effect.attempts
    return found


def call_once(claim: runs.Claim, request: Any, call: Callable[[], Any], *, kind: str = "http") -> Any:
    """Make ``call`` at most once per (execution, step, iteration).

    Raises:
        OutcomeUnknown: a previous attempt was sent and never recorded.
        PermanentError: the request differs from the one recorded for this step.
    """
    assert claim.step is not None
    step_id = claim.step.step_id
    digest = request_hash(request)
    mine = _Intent()
    intent = leases.until_stored(f"step {step_id}: record the call's intent",
                                 lambda: _intend(claim, digest, kind, mine))
    if intent.done:
        return intent.result
    if intent.unknown:
        raise OutcomeUnknown(f"step {step_id}: a previous attempt was sent and its outcome is unknown; "
                             f"settle it instead of repeating it: {settle_hint(intent.effect_id)}", intent.effect_id)
    try:
        result = call()
    except PermanentError as exc:
        reason = str(exc)
        leases.until_stored(f"step {step_id}: record the call's failure",
                            lambda: _record(intent, "FAILED", error=reason))
        raise
    except RateLimited as exc:
        # Refused before anything was done (429, or 503 asking us to wait): the effect did
        # not happen, so it goes back to PLANNED and the attempt after the wait sends it.
        refused = str(exc)
        leases.until_stored(f"step {step_id}: record the refusal", lambda: _release(intent, refused))
        raise
    except Exception:
        # A transient failure may or may not have reached the other side: leave SENDING,
        # so the retry finds it and reconciles instead of repeating.
        raise
    leases.until_stored(f"step {step_id}: record the call's answer", lambda: _record(intent, "DONE", result=result))
    return result


def _record(intent: _Intent, state: str, *, result: Any = None, error: str | None = None) -> int:
    """Record this holder's outcome: over its own SENDING, or over the UNKNOWN a claim marked
    while the answer was on its way (the answer is the truth). Not over an operator's
    settlement or a later attempt (``attempts`` differs)."""
    now = utcnow()
    return int(SideEffect.update(state=state, result=result, error=error, completed_at=now, updated_at=now).where(
        (SideEffect.id == intent.effect_id) & (SideEffect.attempts == intent.attempt)
        & SideEffect.state.in_(("SENDING", "UNKNOWN"))).execute())


def _release(intent: _Intent, error: str) -> int:
    """Put this holder's SENDING back to PLANNED: the other side refused before acting."""
    return int(SideEffect.update(state="PLANNED", error=error, updated_at=utcnow()).where(
        (SideEffect.id == intent.effect_id) & (SideEffect.attempts == intent.attempt)
        & (SideEffect.state == "SENDING")).execute())


def unknown_text(step_id: str, effect_id: Any) -> str:
    """The error a parked step and its execution show."""
    return (f"step {step_id}: {WAITING_NOTE}: an earlier attempt sent its call and never recorded the answer; "
            f"{settle_hint(effect_id)}")


def park_unknown(claim: runs.Claim, effect_id: Any, stored: Any) -> list[Outgoing]:
    """Park the step WAITING until an operator settles its effect (no timer: a person decides);
    the execution stays RUNNING and says why in its error."""
    assert claim.step is not None
    step = claim.step
    text = unknown_text(step.step_id, effect_id)
    with runs.transaction():
        execution = runs.lock_execution(claim.execution.id)
        fields: dict[Any, Any] = {"status": "WAITING", "wait_key": EFFECT_WAIT + str(effect_id), "claimed_by": None,
                                  "resume_at": None, "timeout_at": None, "error": text,
                                  # A recorded outcome: this delivery does not count towards quarantine.
                                  "retry_count": StepExecution.retry_count + 1}
        if stored is not None:
            fields["input"] = runs.masked(stored)
        parked = StepExecution.update(fields).where(
            (StepExecution.id == step.id) & (StepExecution.status == "RUNNING")).execute()
        if parked and execution.status == "RUNNING":
            execution.error = text[:4000]
            execution.save(only=[Execution.error])
        if parked:
            runs.announce_step(execution, step.step_id, step.step_type, "WAITING",
                               {"iteration": step.iteration, "error": text, "effectId": str(effect_id)})
    return []


def clear_waiting_note(execution: Execution) -> None:
    """Drop the "waiting for an operator" error of a RUNNING execution (its effect was settled)."""
    if execution.status == "RUNNING" and execution.error and WAITING_NOTE in execution.error:
        execution.error = None
        execution.save(only=[Execution.error])


def complete(claim: runs.Claim, output: Any, stored: Any = None) -> list[Outgoing]:
    """Record the step's output like ``runs.complete_step``; a step a claim parked for an
    operator while this holder's answer was on its way completes too."""
    assert claim.step is not None
    with runs.transaction():
        execution = runs.lock_execution(claim.execution.id)
        row = StepExecution.get_by_id(claim.step.id)
        if row.status == "WAITING" and (row.wait_key or "").startswith(EFFECT_WAIT):
            clear_waiting_note(execution)
            return runs.record_step(execution, claim.definition, claim.step, "SUCCEEDED", output=output,
                                    stored_input=stored, from_status=("WAITING",))
        return runs.record_step(execution, claim.definition, claim.step, "SUCCEEDED", output=output,
                                stored_input=stored)
