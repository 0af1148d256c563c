"""What operators do with ``effect: once`` calls: list them, and settle an unknown outcome.

A call whose outcome is unknown (an attempt sent it and died before recording the
answer) parks its step WAITING (``call_once``). Nobody but a person can tell what
happened on the other side, so a person settles it, as one of:

* ``done`` with the result they found: the ledger records it, the step SUCCEEDS with it
  as its output, and the execution goes on;
* ``failed`` with a reason: the ledger records it and the step FAILS (so does the
  execution, unless the workflow handles it);
* ``retry``: the call is made once more, deliberately: the ledger is set back to
  PLANNED (its attempt count kept) and the step is re-published.

Each settlement is checked against the caller's workspace and the ``effects:settle``
permission and written to the audit log in the same transaction. SideShift orders keep
their own reconciliation (``shiftflow sideshift reconcile``), which checks the shift
with SideShift: settling their ledger rows here is refused.
"""

from __future__ import annotations

from typing import Any

from shiftflow.kernel.db import is_postgres
from shiftflow.kernel.enqueue import Outgoing
from shiftflow.kernel.errors import NotFound
from shiftflow.kernel.storable import unstorable
from shiftflow.models.engine import mongo_log, runs
from shiftflow.models.engine.call_once import EFFECT_WAIT, clear_waiting_note
from shiftflow.models.manage import audit
from shiftflow.models.manage.access import Principal
from shiftflow.models.manage.paging import Page, choice, keyset, parse_limit, scoped
from shiftflow.models.manage.plain import parse_id, stamp
from shiftflow.models.manage.problems import Conflict, InvalidInput
from shiftflow.models.tables.base import utcnow
from shiftflow.models.tables.executions import StepExecution
from shiftflow.models.tables.side_effects import EFFECT_STATES, SideEffect

#: How an operator may settle an unknown outcome.
OUTCOMES = ("done", "failed", "retry")
#: The ledger states an operator may settle: the outcome was never recorded.
UNSETTLED = ("UNKNOWN", "SENDING")
#: The ledger kind of SideShift orders (``models.swaps.orders.KIND``), reconciled on their own.
SIDESHIFT_KIND = "sideshift.shift"
#: Longest reason an operator may give.
MAX_REASON = 2_000

_MISSING = object()


def effect_dict(row: SideEffect, step: StepExecution | None = None) -> dict[str, Any]:
    """A ledger row as plain data, with its step's status (None if the step is gone)."""
    return {
        "id": str(row.id),
        "execution_id": str(row.__data__.get("execution")),
        "step_id": row.step_id,
        "iteration": row.iteration,
        "kind": row.kind,
        "state": row.state,
        "attempts": row.attempts,
        "external_ref": row.external_ref,
        "result": row.result,
        "error": row.error,
        "step_status": step.status if step is not None else None,
        "created_at": stamp(row.created_at),
        "updated_at": stamp(row.updated_at),
        "sent_at": stamp(row.sent_at),
        "completed_at": stamp(row.completed_at),
    }


def _step_of(effect: SideEffect) -> StepExecution | None:
    return StepExecution.get_or_none((StepExecution.execution == effect.__data__.get("execution"))
                                     & (StepExecution.step_id == effect.step_id)
                                     & (StepExecution.iteration == effect.iteration))


def list_effects(actor: Principal, *, state: Any = None, execution_id: Any = None, limit: Any = None,
                 cursor: str | None = None) -> Page:
    """``effect: once`` ledger rows of the caller's workspace, newest first, filtered and paged.

    Raises:
        InvalidInput: an unknown ``state``, a bad ``limit`` or ``cursor``.
    """
    actor.require("executions:read")
    query = scoped(SideEffect.select(), SideEffect.workspace, actor)
    if state not in (None, ""):
        query = query.where(SideEffect.state == choice(state, "state", EFFECT_STATES))
    if execution_id not in (None, ""):
        query = query.where(SideEffect.execution == parse_id(execution_id, "execution"))
    rows, nxt = keyset(query, SideEffect, parse_limit(limit), cursor)
    return Page([effect_dict(r, _step_of(r)) for r in rows], nxt)


def get_effect(actor: Principal, effect_id: Any) -> SideEffect:
    """One ledger row of the caller's workspace.

    Raises:
        NotFound: no such effect in the workspace.
    """
    actor.require("executions:read")
    eid = parse_id(effect_id, "effect")
    row = scoped(SideEffect.select().where(SideEffect.id == eid), SideEffect.workspace, actor).get_or_none()
    if row is None:
        raise NotFound(f"effect {eid} does not exist")
    return row


def effect_detail(actor: Principal, effect_id: Any) -> dict[str, Any]:
    """One ledger row of the caller's workspace as plain data."""
    row = get_effect(actor, effect_id)
    return effect_dict(row, _step_of(row))


def _check(outcome: Any, result: Any, reason: Any) -> str:
    outcome = choice(outcome, "outcome", OUTCOMES)
    if outcome == "done":
        if result is _MISSING:
            raise InvalidInput("result", "settling as done needs the call's result (any JSON value)")
        problem = unstorable(result)
        if problem:
            raise InvalidInput("result", problem)
    elif result is not _MISSING:
        raise InvalidInput("result", f"only settling as done takes a result, not {outcome}")
    if outcome == "failed":
        if not isinstance(reason, str) or not reason.strip() or len(reason) > MAX_REASON or unstorable(reason):
            raise InvalidInput("reason", f"settling as failed needs a reason: a non-empty text of at most "
                                         f"{MAX_REASON} characters")
    elif reason not in (None, ""):
        raise InvalidInput("reason", f"only settling as failed takes a reason, not {outcome}")
    return outcome


def _lock(effect_id: Any) -> SideEffect:
    query = SideEffect.select().where(SideEffect.id == effect_id)
    if is_postgres():
        query = query.for_update()
    return query.get()


def settle(actor: Principal, effect_id: Any, outcome: Any, *, result: Any = _MISSING, reason: Any = None,
           by: str | None = None) -> tuple[dict[str, Any], list[Outgoing]]:
    """Settle an ``effect: once`` call whose outcome was never recorded (see the module).

    Parameters:
        actor: the caller (needs ``effects:settle``).
        effect_id: the ledger row's id.
        outcome: ``done`` (with ``result``), ``failed`` (with ``reason``) or ``retry``.
        result: the call's result as the operator found it (``done`` only).
        reason: why the call failed (``failed`` only).
        by: who decides (the CLI's ``--by``); by default the caller's user or key.

    Returns:
        The ledger row after the change, and the messages to publish once committed.

    Raises:
        NotFound: no such effect in the caller's workspace.
        InvalidInput: a bad outcome, a missing or extra ``result``/``reason``.
        Conflict: its outcome is recorded, its step still runs, it is a SideShift order,
            or (``retry``) its step no longer waits.
    """
    actor.require("effects:settle")
    outcome = _check(outcome, result, reason)
    found = get_effect(actor, effect_id)
    if found.kind == SIDESHIFT_KIND:
        raise Conflict(f"effect {found.id} is a SideShift order: reconcile it with `shiftflow sideshift orders "
                       "--state NEEDS_RECONCILIATION` and `shiftflow sideshift reconcile`, which checks the shift")
    who = by or actor.who
    outgoing: list[Outgoing] = []
    with runs.transaction():
        # Lock order: execution, then its rows (as the engine does).
        execution = runs.lock_execution(found.__data__.get("execution"))
        effect = _lock(found.id)
        step = _step_of(effect)
        if effect.state not in UNSETTLED:
            raise Conflict(f"effect {effect.id} is {effect.state}: its outcome is recorded; nothing to settle")
        if step is not None and step.status == "RUNNING":
            raise Conflict(f"effect {effect.id}: its step {effect.step_id} is running; a worker holds it")
        waiting = step is not None and step.status == "WAITING" and step.wait_key == EFFECT_WAIT + str(effect.id)
        if outcome == "retry" and (not waiting or execution.status not in ("RUNNING", "PENDING")):
            raise Conflict(f"effect {effect.id}: its step is {step.status if step else 'gone'}, not waiting for "
                           "this effect: there is nothing to call again")
        before = {"state": effect.state, "step_status": step.status if step else None}
        now = utcnow()
        definition = runs.load_definition(execution.workflow_id, execution.workflow_version)
        if outcome == "done":
            effect.state, effect.result, effect.error, effect.completed_at = "DONE", result, None, now
        elif outcome == "failed":
            effect.state, effect.error, effect.completed_at = "FAILED", f"settled as failed by {who}: {reason}", now
        else:
            effect.state, effect.error, effect.sent_at = "PLANNED", f"called again by order of {who}", None
        effect.save()
        if waiting and step is not None:
            clear_waiting_note(execution)
            if outcome == "done":
                outgoing = runs.record_step(execution, definition, step, "SUCCEEDED", output=result,
                                            from_status=("WAITING",))
            elif outcome == "failed":
                outgoing = runs.record_step(execution, definition, step, "FAILED",
                                            error=f"its call was settled as failed by {who}: {reason}",
                                            from_status=("WAITING",))
            else:
                StepExecution.update(status="PENDING", wait_key=None, error=None, claimed_by=None,
                                     lease_until=None).where(
                    (StepExecution.id == step.id) & (StepExecution.status == "WAITING")).execute()
                outgoing = [runs.message_for(execution, definition, step.step_id, step.iteration)]
        after_step = _step_of(effect)
        audit.record(actor, "effect.settled", "side_effect", effect.id, before=before,
                         after={"state": effect.state, "outcome": outcome, "by": who, "reason": reason,
                                "step_status": after_step.status if after_step else None},
                         workspace_id=effect.__data__.get("workspace"),
                         metadata={"execution_id": str(execution.id), "step_id": effect.step_id,
                                   "iteration": effect.iteration})
        mongo_log.execution_log(execution, f"step {effect.step_id}: its call's unknown outcome was settled as "
                                      f"{outcome} by {who}", level="warn", step_id=effect.step_id,
                           metadata={"effectId": str(effect.id), "reason": reason})
    fresh = SideEffect.get_by_id(effect.id)
    return effect_dict(fresh, _step_of(fresh)), outgoing


__all__ = ["OUTCOMES", "effect_detail", "effect_dict", "get_effect", "list_effects", "settle"]

