"""The swap step handler, and what operators do with orders (list, reconcile, poll).

``run_swap_step`` owns every run of a claimed ``sideshift_swap`` step and decides by the
step's order (``orders`` module docstring): plan and create it, mark it for
reconciliation, or poll it (the step's durable timer fired). It never creates twice.

``reconcile`` is the operator's answer for an order in NEEDS_RECONCILIATION: the shift id
they found on SideShift (the order is verified against SideShift, becomes OPEN, and its
step goes back to polling), or "none was created" (the order FAILS and so does its step,
which a re-run may retry with a new order ``<external id>/r2``).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from shiftflow.kernel.contracts import StepPayload
from shiftflow.kernel.enqueue import Outgoing
from shiftflow.kernel.errors import PermanentError
from shiftflow.kernel.settings import get_settings
from shiftflow.kernel.sideshift import ShiftNotFound, SideShiftError
from shiftflow.kernel.steps import TERMINAL
from shiftflow.kernel.swap_spec import SwapSpec, request_hash
from shiftflow.models import order_create, order_status, runs
from shiftflow.models.base import utcnow
from shiftflow.models.effects import SideEffect
from shiftflow.models.executions import Execution
from shiftflow.models.orders import (
    RECONCILE_WAIT,
    ReconcileError,
    apply_shift,
    clear_reconcile_error,
    client_for,
    fk_id,
    get_order,
    lock_execution_of,
    lock_order,
    log,
    notify,
    operator_hint,
    orders_of_step,
    park_polling,
    set_effect,
    step_row,
    summary,
)
from shiftflow.models.sideshift import ORDER_STATES, SideShiftOrder
from shiftflow.models.tenancy import Workspace

#: ``--state`` values of ``shiftflow sideshift orders``: ours, plus CREATING (sent, unrecorded).
LISTABLE_STATES = (*ORDER_STATES, "CREATING")


def run_swap_step(claim: runs.Claim, inputs: Any, stored: Any) -> list[Outgoing]:
    """The ``sideshift_swap`` handler (``stepwork.register_handler``).

    Raises:
        SwapInputError: bad inputs (before any order exists); the engine fails the step.
        PermanentError: SideShift is not configured, or the inputs changed under an intent.
    """
    assert claim.step is not None
    spec = SwapSpec.parse(inputs)
    client = client_for(get_settings())
    existing = orders_of_step(claim.execution.id, claim.step.step_id, claim.step.iteration)
    order = existing[0] if existing else None
    if order is None or order.state == "FAILED":
        # No order yet, or a re-run after one that provably created nothing.
        if order is None:
            _refuse_if_unsettled_before(claim.execution, claim.step.step_id)
        order = order_create.plan(claim, spec, generation=len(existing) + 1)
    if order.state == "PENDING_CREATE" and order.create_sent_at is None:
        recorded = SideEffect.get_or_none(SideEffect.id == fk_id(order, "side_effect"))
        if recorded is not None and recorded.request_hash != request_hash(spec):
            raise PermanentError(
                f"step {claim.step.step_id}: the swap request differs from the one recorded for "
                f"order {order.id}; refusing to send it"
            )
        return order_create.create(claim, order, spec, client, stored)
    if order.state == "PENDING_CREATE":
        return order_create.needs_reconciliation(
            claim,
            order,
            "a previous delivery sent the create call and stopped before recording its answer",
            stored,
        )
    if order.state == "NEEDS_RECONCILIATION":
        return order_create.needs_reconciliation(claim, order, order.error or "outcome unknown", stored)
    return order_status.poll_claimed(claim, order)


def _refuse_if_unsettled_before(execution: Execution, step_id: str) -> None:
    """A re-run (``shiftflow rerun``: a new execution) must not place a second order while
    the execution it repeats still has one whose shift may exist or is still open.

    Raises:
        PermanentError: such an order exists; the message says which and what to do.
    """
    current, depth = execution, 0
    while current.source == "rerun" and fk_id(current, "parent") is not None and depth < 50:
        parent_id = fk_id(current, "parent")
        pending = (SideShiftOrder.state.in_(("NEEDS_RECONCILIATION", "OPEN"))) | (
            (SideShiftOrder.state == "PENDING_CREATE") & SideShiftOrder.create_sent_at.is_null(False)
        )
        found = (
            SideShiftOrder.select()
            .where((SideShiftOrder.execution == parent_id) & (SideShiftOrder.step_id == step_id) & pending)
            .first()
        )
        if found is not None:
            raise PermanentError(
                f"step {step_id}: execution {parent_id}, which this one re-runs, has SideShift order {found.id} "
                f"in {found.state}: its shift may exist. Reconcile or wait for it first ({operator_hint(found)})"
            )
        parent = Execution.get_or_none(Execution.id == parent_id)
        if parent is None:
            return
        current, depth = parent, depth + 1


def after_delivery(payload: StepPayload) -> list[Outgoing]:
    """After a ``sideshift.order`` delivery: settle an order whose step ended without its
    handler (quarantined after too many deliveries, cancelled, timed out).

    An intent never sent becomes FAILED; one that may have been sent becomes
    NEEDS_RECONCILIATION; an open order nobody polls for a while gets an orphan poll.
    """
    found = orders_of_step(payload.execution_id, payload.step_id, payload.iteration)
    if not found or found[0].state not in ("PENDING_CREATE", "OPEN"):
        return []
    order = found[0]
    step = step_row(order)
    if step is not None and step.status not in TERMINAL:
        return []
    if order.state == "OPEN":
        stale = order.next_poll_at is None or order.next_poll_at < utcnow() - dt.timedelta(
            seconds=2 * get_settings().sideshift_poll_max_seconds
        )
        return order_status.orphan_poll(order) if stale else []
    with runs.transaction():
        locked = lock_order(order.id)
        if locked.state != "PENDING_CREATE":
            return []
        why = f"its step ended ({step.status.lower() if step else 'gone'}: {step.error if step else ''})"
        execution = Execution.get_or_none(Execution.id == fk_id(locked, "execution"))
        if locked.create_sent_at is None:
            locked.state, locked.error, locked.completed_at = "FAILED", f"never sent: {why}", utcnow()
            locked.save()
            set_effect(locked, "FAILED", error=locked.error)
            log(locked, execution, f"SideShift order {locked.id} failed: {locked.error}", level="error")
        else:
            locked.state, locked.error = "NEEDS_RECONCILIATION", f"the create call may have been sent; {why}"
            locked.save()
            set_effect(locked, "UNKNOWN", error=locked.error)
            text = (
                f"SideShift order {locked.id} needs reconciliation: {locked.error}; {operator_hint(locked)}"
            )
            log(locked, execution, text, level="error")
            if execution is not None:
                notify(
                    execution,
                    "SYSTEM_ALERT",
                    f"SideShift order {locked.id} needs reconciliation",
                    text,
                    {"orderId": str(locked.id), "externalId": locked.external_id},
                )
    return []


def poll_for_step(payload: StepPayload) -> list[Outgoing]:
    """``sideshift.poll``: poll the newest order of one step once (an orphan's poll)."""
    found = orders_of_step(payload.execution_id, payload.step_id, payload.iteration)
    return order_status.poll_order(found[0], due_only=True) if found else []


def poll_due(limit: int = 100) -> list[tuple[SideShiftOrder, list[Outgoing]]]:
    """Poll every open order whose next poll is due (``shiftflow sideshift poll --due``)."""
    due = (
        SideShiftOrder.select()
        .where((SideShiftOrder.state == "OPEN") & (SideShiftOrder.next_poll_at <= utcnow()))
        .order_by(SideShiftOrder.next_poll_at)
        .limit(limit)
    )
    return [(order, order_status.poll_order(order)) for order in due]


def list_orders(
    *, state: str | None = None, workspace: str | None = None, limit: int = 50
) -> list[SideShiftOrder]:
    """Orders, newest first, optionally of one state (``CREATING``: sent, outcome unrecorded).

    Raises:
        ReconcileError: an unknown state or workspace.
    """
    query = SideShiftOrder.select()
    if state is not None:
        if state not in LISTABLE_STATES:
            raise ReconcileError(f"--state must be one of {', '.join(LISTABLE_STATES)}, got {state!r}")
        if state == "CREATING":
            query = query.where(
                (SideShiftOrder.state == "PENDING_CREATE") & SideShiftOrder.create_sent_at.is_null(False)
            )
        else:
            query = query.where(SideShiftOrder.state == state)
    if workspace is not None:
        row = Workspace.get_or_none(Workspace.slug == workspace)
        if row is None:
            raise ReconcileError(f"--workspace {workspace!r} does not exist")
        query = query.where(SideShiftOrder.workspace == row.id)
    return list(query.order_by(SideShiftOrder.created_at.desc()).limit(limit))


def _reconcilable(order: SideShiftOrder) -> bool:
    if order.state == "NEEDS_RECONCILIATION":
        return True
    step = step_row(order)
    # Left "CREATING" by a step that ended without its handler (see after_delivery).
    return (
        order.state == "PENDING_CREATE"
        and order.create_sent_at is not None
        and (step is None or step.status in TERMINAL)
    )


def reconcile(
    order_id: Any, *, shift_id: str | None = None, none: bool = False, by: str = "operator"
) -> tuple[SideShiftOrder, list[Outgoing]]:
    """Settle an order whose creation has an unknown outcome, with an operator's finding.

    Parameters:
        order_id: the order (id or unique id prefix).
        shift_id: the shift the operator found on SideShift (its ``externalId`` should be
            the order's); it is fetched and checked before it is attached.
        none: the operator established that no shift was created.
        by: who decides (recorded in the order and the logs).

    Returns:
        The order after the change, and the messages to publish.

    Raises:
        NotFound: no such order.
        ReconcileError: not exactly one of ``shift_id``/``none``, an order that is not
            waiting for reconciliation, or a shift that SideShift does not know or that
            does not match the order.
    """
    if (shift_id is None) == (not none):
        raise ReconcileError("give exactly one of --shift-id ID and --none")
    order = get_order(order_id)
    if not _reconcilable(order):
        raise ReconcileError(
            f"order {order.id} is {order.state}: only orders in NEEDS_RECONCILIATION can be reconciled"
        )
    if none:
        return _declare_none(order, by)
    assert shift_id is not None
    return _attach(order, shift_id.strip(), by)


def _attach(order: SideShiftOrder, shift_id: str, by: str) -> tuple[SideShiftOrder, list[Outgoing]]:
    none_hint = f"if no shift was created for this order, run `shiftflow sideshift reconcile {order.id} --none`"
    if not shift_id:
        raise ReconcileError(f"--shift-id is empty: give the id of the shift SideShift created, or {none_hint}")
    try:
        shift = client_for(get_settings()).get_shift(shift_id)
    except ShiftNotFound:
        # SideShift answers 404, or 400 for an id it cannot read: both mean no such shift.
        raise ReconcileError(
            f"SideShift does not know shift {shift_id!r}: check the id (SideShift's look like "
            f"8c9ba87d02a801a2f254); {none_hint}"
        ) from None
    except SideShiftError as exc:
        raise ReconcileError(f"could not fetch shift {shift_id!r} from SideShift: {exc}") from exc
    if shift.external_id is not None and shift.external_id != order.external_id:
        raise ReconcileError(
            f"shift {shift_id} has externalId {shift.external_id!r}, not this order's {order.external_id!r}"
        )
    if (shift.deposit_coin.lower(), shift.settle_coin.lower()) != (order.deposit_coin, order.settle_coin):
        raise ReconcileError(
            f"shift {shift_id} swaps {shift.deposit_coin}->{shift.settle_coin}, not "
            f"{order.deposit_coin}->{order.settle_coin}"
        )
    other = SideShiftOrder.get_or_none(
        (SideShiftOrder.shift_id == shift.id) & (SideShiftOrder.id != order.id)
    )
    if other is not None:
        raise ReconcileError(f"shift {shift.id} already belongs to order {other.id}")
    with runs.transaction():
        locked = lock_order(order.id)
        if not _reconcilable(locked):
            raise ReconcileError(f"order {locked.id} is {locked.state} now; nothing to reconcile")
        apply_shift(locked, shift)
        now = utcnow()
        locked.state, locked.error = "OPEN", None
        locked.last_polled_at, locked.next_poll_at = now, now
        locked.save()
        set_effect(locked, "DONE", external_ref=shift.id, result=summary(locked))
        step = step_row(locked)
        execution = lock_execution_of(locked)
        if execution is not None:
            clear_reconcile_error(execution)
            log(
                locked,
                execution,
                f"SideShift order {locked.id} reconciled by {by}: shift {shift.id} ({shift.status})",
                level="warn",
            )
        waiting = (
            step is not None and step.status == "WAITING" and step.wait_key == RECONCILE_WAIT + str(locked.id)
        )
        if shift.is_final:
            outgoing = order_status.finish(locked, step if waiting else None, shift)
        elif waiting and step is not None and park_polling(step, now, summary(locked)):
            outgoing = []  # the timer loop re-publishes the step at once; it polls from there
        else:
            outgoing = order_status.orphan_poll(locked)
    return locked, outgoing


def _declare_none(order: SideShiftOrder, by: str) -> tuple[SideShiftOrder, list[Outgoing]]:
    outgoing: list[Outgoing] = []
    with runs.transaction():
        locked = lock_order(order.id)
        if not _reconcilable(locked):
            raise ReconcileError(f"order {locked.id} is {locked.state} now; nothing to reconcile")
        reason = f"no shift was created (declared by {by})"
        locked.state, locked.error, locked.completed_at = "FAILED", reason, utcnow()
        locked.save()
        set_effect(locked, "FAILED", error=reason)
        step = step_row(locked)
        execution = lock_execution_of(locked)
        if execution is not None:
            log(locked, execution, f"SideShift order {locked.id} failed: {reason}", level="warn")
            if step is not None and step.status not in TERMINAL:
                definition = runs.load_definition(execution.workflow_id, execution.workflow_version)
                clear_reconcile_error(execution)
                was_running = execution.status not in TERMINAL
                outgoing = runs.record_step(
                    execution,
                    definition,
                    step,
                    "FAILED",
                    output=summary(locked),
                    error=f"SideShift order {locked.id}: {reason}; re-run the step to place a new order",
                    from_status=("WAITING", "PENDING", "RUNNING"),
                )
                order_status.after_outcome(execution, locked, was_running=was_running)
    return locked, outgoing


__all__ = [
    "LISTABLE_STATES",
    "after_delivery",
    "list_orders",
    "poll_due",
    "poll_for_step",
    "reconcile",
    "run_swap_step",
]
