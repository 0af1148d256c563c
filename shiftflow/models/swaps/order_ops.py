"""The swap step handler, and what operators do with orders (list, reconcile, poll).

``run_swap_step`` owns every run of a claimed ``sideshift_swap`` step. Under its swap's
lock it reads every order of the swap's re-run lineage (``swap_lineage``) and decides:
plan and create a new order, follow one (its own, or one it adopts from another execution
of the lineage: open, settled, or expired after a deposit), mark its own for
reconciliation, or wait for an operator's reconciliation or for another step's create.
It never creates twice, and never creates while another order of the swap may hold money.

``reconcile`` is the operator's answer for an order in NEEDS_RECONCILIATION: the shift id
they found on SideShift (the order is verified against SideShift, becomes OPEN, and its
step goes back to polling), or "none was created" (the order FAILS and so does its step,
which a re-run may retry with a new order ``<external id>/r2``). Steps of other
executions that waited for it run again and adopt the shift, or order anew.
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
from shiftflow.models.engine import runs
from shiftflow.models.swaps import lineage, order_create, order_status
from shiftflow.models.swaps.orders import (
    RECONCILE_WAIT,
    ReconcileError,
    apply_shift,
    clear_reconcile_error,
    client_for,
    get_order,
    lock_execution_of,
    lock_order,
    log,
    notify,
    operator_hint,
    orders_of_step,
    park_for_operator,
    park_polling,
    set_effect,
    step_row,
    summary,
)
from shiftflow.models.tables.base import fk, utcnow
from shiftflow.models.tables.executions import Execution, StepExecution
from shiftflow.models.tables.side_effects import SideEffect
from shiftflow.models.tables.sideshift_orders import ORDER_STATES, SideShiftOrder, SideShiftSwap
from shiftflow.models.tables.tenancy import Workspace

#: ``--state`` values of ``shiftflow sideshift orders``: ours, plus CREATING (sent, unrecorded).
LISTABLE_STATES = (*ORDER_STATES, "CREATING")


def run_swap_step(claim: runs.Claim, inputs: Any, stored: Any) -> list[Outgoing]:
    """The ``sideshift_swap`` handler (``run_step.register_handler``).

    Decides under the swap's lock (``swap_lineage``) what this run does with the orders
    of its swap, then does it outside the lock: create a new order, follow an order (its
    own, or one it adopts from its re-run lineage), or wait for an operator.

    Raises:
        SwapInputError: bad inputs (before any order exists); the engine fails the step.
        PermanentError: SideShift is not configured, or the inputs differ from the order's.
    """
    assert claim.step is not None
    spec = SwapSpec.parse(inputs)
    client = client_for(get_settings())
    with runs.transaction():
        swap = lineage.lock_swap(claim.execution, claim.step.step_id, claim.step.iteration)
        found = lineage.orders_of_swap(swap)
        order = lineage.current(found)
        if order is None:
            order = order_create.plan(claim, spec, swap, generation=len(found) + 1)
        elif fk(order, "execution") != claim.execution.id:
            adopted = _adopt(claim, spec, swap, order, len(found))
            if adopted is None:
                return []  # parked: waiting for another step or for an operator
            order = adopted
    if order.state == "PENDING_CREATE" and order.create_sent_at is None:
        recorded = SideEffect.get_or_none(SideEffect.id == fk(order, "side_effect"))
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


def _adopt(
    claim: runs.Claim, spec: SwapSpec, swap: SideShiftSwap, order: SideShiftOrder, count: int
) -> SideShiftOrder | None:
    """Inside the swap's lock: the swap's current order was placed by another execution of
    the lineage. Returns the order to follow (adopted, or a new intent when the other one
    can never be sent), or None when the step was parked to wait.

    Raises:
        PermanentError: the order was placed for a different swap request.
    """
    assert claim.step is not None
    step_id = claim.step.step_id
    placed_by = fk(order, "execution")
    recorded = SideEffect.get_or_none(SideEffect.id == fk(order, "side_effect"))
    if recorded is not None and recorded.request_hash != request_hash(spec):
        raise PermanentError(
            f"step {step_id}: execution {placed_by} of this re-run lineage placed SideShift order "
            f"{order.id} ({order.state}) for a different swap request; refusing to place a second "
            f"order for this swap (start a new execution to swap again)"
        )
    placer = step_row(order)
    if order.state == "PENDING_CREATE" and not lineage.is_active(placer):
        # Never sent, it never will be (its step's last check before sending needs the step
        # running) and a new order may be placed; maybe sent, an operator must look.
        order = lock_order(order.id)
        _settle_left_behind(order, placer)
        if order.state == "FAILED":
            return order_create.plan(claim, spec, swap, generation=count + 1)
    if order.state == "PENDING_CREATE":
        # The placing step is still running (its intent, or its create call in flight):
        # look again after a poll interval, then adopt what it recorded.
        park_polling(claim.step, utcnow() + order_status.first_interval(), summary(order))
        return None
    if order.state == "NEEDS_RECONCILIATION":
        execution = runs.lock_execution(claim.execution.id)
        text = (
            f"step {step_id}: SideShift order {order.id} of this swap (placed by execution {placed_by}) "
            f"needs reconciliation before this step may go on: {order.error}; {operator_hint(order)}"
        )
        if claim.step.wait_key != RECONCILE_WAIT + str(order.id):
            log(order, execution, text, level="error")
            notify(
                execution,
                "SYSTEM_ALERT",
                f"SideShift order {order.id} needs reconciliation",
                text,
                {"orderId": str(order.id), "externalId": order.external_id},
            )
        if execution.status == "RUNNING":
            execution.error = text[:4000]
            execution.save(only=[Execution.error])
        park_for_operator(claim.step, order, text)
        return None
    if (claim.step.output or {}).get("order_id") != str(order.id):
        log(
            order,
            claim.execution,
            f"step {step_id} adopts SideShift order {order.id} ({order.state}, shift {order.shift_id}) "
            f"placed by execution {placed_by} of this re-run lineage; no second order",
        )
    return order


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
        if locked.state == "PENDING_CREATE":
            _settle_left_behind(locked, step)
    return []


def _settle_left_behind(order: SideShiftOrder, step: StepExecution | None) -> None:
    """An order left PENDING_CREATE by a step that ended without its handler (call with the
    order locked): never sent, it FAILS; maybe sent, it needs reconciliation (an alert)."""
    why = f"its step ended ({step.status.lower() if step else 'gone'}: {step.error if step else ''})"
    execution = Execution.get_or_none(Execution.id == fk(order, "execution"))
    if order.create_sent_at is None:
        order.state, order.error, order.completed_at = "FAILED", f"never sent: {why}", utcnow()
        order.save()
        set_effect(order, "FAILED", error=order.error)
        log(order, execution, f"SideShift order {order.id} failed: {order.error}", level="error")
        return
    order.state, order.error = "NEEDS_RECONCILIATION", f"the create call may have been sent; {why}"
    order.save()
    set_effect(order, "UNKNOWN", error=order.error)
    text = f"SideShift order {order.id} needs reconciliation: {order.error}; {operator_hint(order)}"
    log(order, execution, text, level="error")
    if execution is not None:
        notify(
            execution,
            "SYSTEM_ALERT",
            f"SideShift order {order.id} needs reconciliation",
            text,
            {"orderId": str(order.id), "externalId": order.external_id},
        )


def settle_left_behind(limit: int = 100) -> list[SideShiftOrder]:
    """Settle every order still PENDING_CREATE whose step ended and that no delivery of that
    step came back to (a cancel or timeout while it backed off, a dead letter): part of
    ``shiftflow sideshift poll --due``. Returns the orders it settled."""
    settled = []
    pending = (
        SideShiftOrder.select()
        .where(SideShiftOrder.state == "PENDING_CREATE")
        .order_by(SideShiftOrder.created_at)
        .limit(limit)
    )
    for order in pending:
        step = step_row(order)
        if lineage.is_active(step):
            continue
        with runs.transaction():
            locked = lock_order(order.id)
            if locked.state == "PENDING_CREATE":
                _settle_left_behind(locked, step)
                settled.append(locked)
    return settled


def poll_for_step(payload: StepPayload) -> list[Outgoing]:
    """``sideshift.poll``: poll the newest order of one step once (an orphan's poll)."""
    found = orders_of_step(payload.execution_id, payload.step_id, payload.iteration)
    return order_status.poll_order(found[0], due_only=True) if found else []


def poll_due(limit: int = 100) -> list[tuple[SideShiftOrder, list[Outgoing]]]:
    """Poll every open order whose next poll is due, after settling the orders their step
    left behind (``settle_left_behind``): ``shiftflow sideshift poll --due``."""
    results: list[tuple[SideShiftOrder, list[Outgoing]]] = [(o, []) for o in settle_left_behind(limit)]
    due = (
        SideShiftOrder.select()
        .where((SideShiftOrder.state == "OPEN") & (SideShiftOrder.next_poll_at <= utcnow()))
        .order_by(SideShiftOrder.next_poll_at)
        .limit(limit)
    )
    return results + [(order, order_status.poll_order(order)) for order in due]


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
        lineage.lock_swap_of(order)
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
        _wake_adopters(locked, now)
    return locked, outgoing


def _wake_adopters(order: SideShiftOrder, now: Any) -> int:
    """Steps of other executions of the lineage that waited for this order's reconciliation
    run again at once (the timer loop re-publishes them): they adopt the shift the operator
    found, or place a new order when none was created."""
    waiting = StepExecution.select().where(
        (StepExecution.wait_key == RECONCILE_WAIT + str(order.id))
        & (StepExecution.status == "WAITING")
        & (StepExecution.execution != fk(order, "execution"))
    )
    woken = 0
    for step in waiting:
        woken += park_polling(step, now, summary(order))
        execution = runs.lock_execution(step.execution_id)
        clear_reconcile_error(execution)
    return woken


def _declare_none(order: SideShiftOrder, by: str) -> tuple[SideShiftOrder, list[Outgoing]]:
    outgoing: list[Outgoing] = []
    with runs.transaction():
        lineage.lock_swap_of(order)
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
        _wake_adopters(locked, utcnow())
    return locked, outgoing


__all__ = [
    "LISTABLE_STATES",
    "after_delivery",
    "list_orders",
    "poll_due",
    "poll_for_step",
    "reconcile",
    "run_swap_step",
    "settle_left_behind",
]
