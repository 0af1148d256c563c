"""The intent/result ledger around outside effects that must not repeat (DESIGN.md 4).

``call_once`` commits SENDING before the call and DONE with the result after it. A
redelivery that finds DONE reuses the recorded result; one that finds SENDING cannot
know whether the call landed, so it marks the effect UNKNOWN and fails the step for an
operator to reconcile (``shiftflow effects``) instead of calling again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from shiftflow.kernel.errors import PermanentError
from shiftflow.models import logs, runs
from shiftflow.models.base import utcnow
from shiftflow.models.effects import SideEffect


class OutcomeUnknown(PermanentError):
    """Raised when an effect was sent before and its outcome was never recorded."""


def request_hash(request: Any) -> str:
    """SHA-256 of the canonical JSON of a request."""
    return hashlib.sha256(json.dumps(request, sort_keys=True, default=str).encode()).hexdigest()


def call_once(claim: runs.Claim, request: Any, call: Callable[[], Any], *, kind: str = "http") -> Any:
    """Make ``call`` at most once per (execution, step, iteration).

    Raises:
        OutcomeUnknown: a previous attempt was sent and never recorded.
        PermanentError: the request differs from the one recorded for this step.
    """
    assert claim.step is not None
    execution, step = claim.execution, claim.step
    digest = request_hash(request)
    unknown = False
    with runs.transaction():
        SideEffect.insert(workspace=execution.workspace_id, execution=execution.id, step_id=step.step_id,
                          iteration=step.iteration, kind=kind, state="PLANNED", request_hash=digest,
                          created_at=utcnow(), updated_at=utcnow()).on_conflict_ignore().execute()
        effect = SideEffect.get((SideEffect.execution == execution.id) & (SideEffect.step_id == step.step_id)
                                & (SideEffect.iteration == step.iteration))
        if effect.request_hash != digest:
            raise PermanentError(f"step {step.step_id}: the request differs from the one already recorded")
        if effect.state == "DONE":
            return effect.result
        if effect.state in ("SENDING", "UNKNOWN"):
            # Committed before raising: the UNKNOWN mark must outlive the failure.
            effect.state, effect.updated_at, unknown = "UNKNOWN", utcnow(), True
            effect.save()
            logs.execution_log(execution, f"step {step.step_id}: effect outcome unknown, needs reconciliation",
                               level="error", step_id=step.step_id)
        else:
            effect.state, effect.sent_at, effect.attempts = "SENDING", utcnow(), effect.attempts + 1
            effect.save()
    if unknown:
        raise OutcomeUnknown(f"step {step.step_id}: a previous attempt was sent and its outcome is unknown; "
                             "reconcile it (shiftflow effects) instead of repeating it")
    try:
        result = call()
    except PermanentError as exc:
        SideEffect.update(state="FAILED", error=str(exc), completed_at=utcnow(), updated_at=utcnow()).where(
            SideEffect.id == effect.id).execute()
        raise
    except Exception:
        # A transient failure may or may not have reached the other side: leave SENDING,
        # so the retry finds it and reconciles instead of repeating.
        raise
    SideEffect.update(state="DONE", result=result, completed_at=utcnow(), updated_at=utcnow()).where(
        SideEffect.id == effect.id).execute()
    return result
