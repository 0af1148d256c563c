"""Following a created shift to its final status, and what its outcome changes.

**Timer.** An open order is followed by its swap step's own durable timer: the step is
parked PENDING with ``resume_at`` (``orders.park_polling``), the engine's timer loop
re-publishes it when due, and the step's handler polls ``GET /shifts/{id}`` once, then
parks again or finishes. Nothing is held unacknowledged in RabbitMQ, and a poll schedule
survives any restart. The interval starts at ``SHIFTFLOW_SIDESHIFT_POLL_SECONDS``, doubles
while the status does not change (``next_poll_at - last_polled_at`` is the previous
interval) up to ``SHIFTFLOW_SIDESHIFT_POLL_MAX_SECONDS``, and resets when it changes.

An order whose step is no longer active (the execution timed out or was cancelled while
the shift was open; a reconciled order of a failed step) is an *orphan*: it is followed
by ``sideshift.poll`` messages carrying their own bounded delay (at most 10 minutes, far
below RabbitMQ's consumer timeout), and ``shiftflow sideshift poll --due`` re-arms any
whose message was lost.

**Outcome.** settled: the order is SETTLED and the step SUCCEEDS with the order as its
output; refunded or expired: REFUNDED/EXPIRED and the step FAILS with the reason. In the
same transaction: ``WorkflowMetrics`` (volume and fees in USD, as NUMERIC; execution
counts and durations when the swap finished the execution) and a ``Notification``
(WORKFLOW_EXECUTED or WORKFLOW_FAILED) for the execution's user.
"""

from __future__ import annotations

import datetime as dt
import random
from decimal import Decimal
from typing import Any

from shiftflow.kernel import observe
from shiftflow.kernel.contracts import StepPayload
from shiftflow.kernel.enqueue import Outgoing
from shiftflow.kernel.settings import get_settings
from shiftflow.kernel.sideshift import (
    Shift,
    ShiftNotFound,
    SideShiftError,
)
from shiftflow.kernel.steps import TERMINAL
from shiftflow.models.engine import runs
from shiftflow.models.swaps.orders import (
    FINAL_STATES,
    apply_shift,
    client_for,
    lock_execution_of,
    lock_order,
    log,
    notify,
    operator_hint,
    park_for_operator,
    park_polling,
    set_effect,
    step_row,
    summary,
)
from shiftflow.models.swaps.pricing import usd_price
from shiftflow.models.tables.base import fk, utcnow
from shiftflow.models.tables.executions import Execution, StepExecution
from shiftflow.models.tables.sideshift_orders import SideShiftOrder
from shiftflow.models.tables.workflow_metrics import WorkflowMetrics
from shiftflow.models.tables.workflows import Workflow

#: The longest delay an orphan's ``sideshift.poll`` message carries (held unacked until due).
MAX_ORPHAN_DELAY_SECONDS = 600.0
_CENT = Decimal("0.000001")
#: A 404 for a shift created this recently is retried (a replica may not know it yet).
NOT_FOUND_GRACE_SECONDS = 600.0


def first_interval() -> dt.timedelta:
    """The first poll interval after a shift was created or changed status."""
    return dt.timedelta(seconds=get_settings().sideshift_poll_seconds)


def next_interval(order: SideShiftOrder, changed: bool) -> dt.timedelta:
    """Double the previous interval while nothing changes; back to the first on a change.
    A little jitter spreads the polls of orders created together."""
    settings = get_settings()
    low, high = (
        settings.sideshift_poll_seconds,
        max(settings.sideshift_poll_seconds, settings.sideshift_poll_max_seconds),
    )
    seconds = low
    if not changed and order.next_poll_at is not None and order.last_polled_at is not None:
        seconds = min(high, max(low, 2 * (order.next_poll_at - order.last_polled_at).total_seconds()))
    return dt.timedelta(seconds=seconds * random.uniform(0.9, 1.1))


def final_state(shift: Shift) -> str:
    """Our final order state for a final shift (``multiple``: settled if any deposit settled)."""
    if shift.status in FINAL_STATES:
        return FINAL_STATES[shift.status]
    statuses = {d.status for d in shift.deposits}
    return "SETTLED" if "settled" in statuses else "REFUNDED" if "refunded" in statuses else "EXPIRED"


def _fetch(order: SideShiftOrder) -> Shift | SideShiftError:
    try:
        return client_for(get_settings()).get_shift(str(order.shift_id))
    except SideShiftError as exc:  # a failed poll is retried later; only "not found" is news
        return exc


def poll_claimed(claim: runs.Claim, order: SideShiftOrder) -> list[Outgoing]:
    """The swap step's timer fired (``claim`` holds it RUNNING): poll once, then park or finish."""
    assert claim.step is not None
    result = _fetch(order) if order.state == "OPEN" else None
    with runs.transaction():
        locked = lock_order(order.id)
        return _apply(locked, result, claim.step, claimed=True)


def poll_order(order: SideShiftOrder, *, due_only: bool = False) -> list[Outgoing]:
    """Poll one open order outside its step (``sideshift.poll``, ``shiftflow sideshift poll``).

    Parameters:
        due_only: skip (return nothing) when the order is not due yet: an early
            duplicate of an orphan's poll message.
    """
    if order.state != "OPEN" or (
        due_only and order.next_poll_at and order.next_poll_at > utcnow() + dt.timedelta(seconds=1)
    ):
        return []
    result = _fetch(order)
    with runs.transaction():
        locked = lock_order(order.id)
        return _apply(locked, result, step_row(locked), claimed=False)


def _apply(
    order: SideShiftOrder, result: Shift | SideShiftError | None, step: StepExecution | None, *, claimed: bool
) -> list[Outgoing]:
    """Apply one poll result to the locked order (inside a transaction)."""
    active = step is not None and step.status not in TERMINAL
    if order.state in FINAL_STATES.values():
        return finish(order, step if active else None)
    if order.state == "NEEDS_RECONCILIATION" and claimed and step is not None:
        park_for_operator(step, order, f"SideShift order {order.id} needs reconciliation: {order.error}")
    if order.state != "OPEN" or result is None:
        return []
    now = utcnow()
    known_since = order.create_sent_at or order.created_at
    if isinstance(result, ShiftNotFound) and (now - known_since).total_seconds() > NOT_FOUND_GRACE_SECONDS:
        return _unknown_shift(
            order, step if active else None, f"SideShift does not know shift {order.shift_id} ({result})"
        )
    changed = isinstance(result, Shift) and result.status != order.sideshift_status
    if isinstance(result, Shift):
        apply_shift(order, result)
        if result.is_final:
            order.last_polled_at = now
            return finish(order, step if active else None, result)
        order.error = None
    else:
        order.error = f"poll failed: {result}"
    interval = next_interval(order, changed)
    order.last_polled_at, order.next_poll_at = now, now + interval
    order.save()
    if changed:
        execution = Execution.get_or_none(Execution.id == fk(order, "execution"))
        log(order, execution, f"SideShift shift {order.shift_id} is {order.sideshift_status}")
    if claimed and step is not None and park_polling(step, order.next_poll_at, summary(order)):
        return []
    if active:
        return []  # the step's own timer follows it
    return orphan_poll(order)


def _unknown_shift(order: SideShiftOrder, step: StepExecution | None, reason: str) -> list[Outgoing]:
    order.state, order.error = "NEEDS_RECONCILIATION", reason
    order.save()
    set_effect(order, "UNKNOWN", error=reason)
    execution = Execution.get_or_none(Execution.id == fk(order, "execution"))
    text = f"SideShift order {order.id} needs reconciliation: {reason}; {operator_hint(order)}"
    log(order, execution, text, level="error")
    if step is not None:
        park_for_operator(step, order, text)
    return []


def orphan_poll(order: SideShiftOrder) -> list[Outgoing]:
    """A delayed ``sideshift.poll`` for an open order that no active step follows."""
    if fk(order, "execution") is None or not order.step_id:
        return []  # only ``shiftflow sideshift poll --due`` reaches an order without an execution
    delay = 0.0 if order.next_poll_at is None else (order.next_poll_at - utcnow()).total_seconds()
    delay = min(MAX_ORPHAN_DELAY_SECONDS, max(0.0, delay))
    iteration = int(order.external_id.split("/")[0].rsplit(":", 1)[1])
    return [
        Outgoing(
            "sideshift.poll",
            StepPayload(str(fk(order, "execution")), order.step_id, iteration),
            delay_ms=int(delay * 1000),
        )
    ]


def finish(order: SideShiftOrder, step: StepExecution | None, shift: Shift | None = None) -> list[Outgoing]:
    """Record a final shift: the order, its step's outcome, metrics and notifications.

    Call inside a transaction with the order locked. ``shift``: the final shift just
    polled (the order becomes final now); None when the order already was final and only
    its step catches up. ``step``: None when no active step waits on the order; else the
    step that follows it, the one that placed it or one that adopted it (``swap_lineage``).
    """
    newly = shift is not None
    if shift is not None:
        order.state = final_state(shift)
        order.completed_at, order.next_poll_at, order.error = utcnow(), None, None
        order.save()
        set_effect(order, "DONE", external_ref=order.shift_id, result=summary(order))
        observe.order_finished(order.state, *(money(order) if order.state == "SETTLED" else ()))
    # The step may be another execution's of the same lineage, which adopted the order.
    execution = lock_execution_of(order) if step is None else runs.lock_execution(step.execution_id)
    if execution is None:
        return []
    settled = order.state == "SETTLED"
    if newly:
        log(
            order,
            execution,
            f"SideShift order {order.id} {order.state.lower()} (shift {order.shift_id})",
            level="info" if settled else "error",
        )
    outgoing: list[Outgoing] = []
    was_running = False
    if step is not None:
        definition = runs.load_definition(execution.workflow_id, execution.workflow_version)
        was_running = execution.status not in TERMINAL
        outgoing = runs.record_step(
            execution,
            definition,
            step,
            "SUCCEEDED" if settled else "FAILED",
            output=summary(order),
            error=None if settled else _failure_text(order),
            from_status=("RUNNING", "PENDING", "WAITING"),
        )
    after_outcome(execution, order, was_running=was_running, volume=newly and settled)
    return outgoing


def _failure_text(order: SideShiftOrder) -> str:
    issue = (order.raw or {}).get("issue")
    return (
        f"SideShift shift {order.shift_id} ended {order.sideshift_status}"
        + (f" ({issue})" if issue else "")
        + f"; order {order.id}"
    )


def after_outcome(
    execution: Execution, order: SideShiftOrder, *, was_running: bool, volume: bool = False
) -> None:
    """Metrics and notifications for a swap outcome, inside the recording transaction.

    Parameters:
        was_running: the execution was not final before this outcome was recorded; if it
            is final now, the swap finished it (counted once, notified once).
        volume: add the order's USD volume and fees (once, when it settled).
    """
    finished = was_running and execution.status in TERMINAL
    _add_metrics(execution, order, finished=finished, volume=volume)
    if not finished:
        return
    name = Workflow.select(Workflow.name).where(Workflow.id == execution.workflow_id).scalar() or "workflow"
    if execution.status == "SUCCEEDED":
        amounts = (
            f"{order.deposit_amount or '?'} {order.deposit_coin.upper()} -> "
            f"{order.settle_amount or '?'} {order.settle_coin.upper()}"
        )
        notify(
            execution,
            "WORKFLOW_EXECUTED",
            f"Workflow {name} executed",
            f"Swap {amounts} settled (shift {order.shift_id}).",
            _data(execution, order),
        )
    else:
        notify(
            execution,
            "WORKFLOW_FAILED",
            f"Workflow {name} failed",
            execution.error or f"SideShift order {order.id} {order.state.lower()}",
            _data(execution, order),
        )


def _data(execution: Execution, order: SideShiftOrder) -> dict[str, Any]:
    return {
        "executionId": str(execution.id),
        "orderId": str(order.id),
        "shiftId": order.shift_id,
        "state": order.state,
        "status": order.sideshift_status,
    }


def money(order: SideShiftOrder) -> tuple[Decimal, Decimal]:
    """(volume, fees) in USD of a settled order, from the last cached USD prices.

    Volume is the deposit's value (or the settlement's, when only that price is known).
    Fees are SideShift's ``networkFeeUsd`` when it reports one (variable shifts), else the
    deposit's value minus the settlement's when both prices are known, else 0.
    """

    def value(amount: str | None, coin: str) -> Decimal | None:
        price = usd_price(coin) if amount else None
        return None if price is None or amount is None else Decimal(amount) * price

    deposit, settle = (
        value(order.deposit_amount, order.deposit_coin),
        value(order.settle_amount, order.settle_coin),
    )
    volume = deposit if deposit is not None else settle if settle is not None else Decimal(0)
    if order.network_fee_usd:
        fees = Decimal(order.network_fee_usd)
    elif deposit is not None and settle is not None:
        fees = max(Decimal(0), deposit - settle)
    else:
        fees = Decimal(0)
    return volume.quantize(_CENT), fees.quantize(_CENT)


def _add_metrics(execution: Execution, order: SideShiftOrder, *, finished: bool, volume: bool) -> None:
    if not (finished or volume):
        return
    now = utcnow()
    WorkflowMetrics.insert(
        workspace=execution.workspace_id, workflow=execution.workflow_id, updated_at=now
    ).on_conflict_ignore().execute()
    fields: dict[Any, Any] = {WorkflowMetrics.updated_at: now}
    if volume:
        usd, fees = money(order)
        fields[WorkflowMetrics.total_volume_usd] = WorkflowMetrics.total_volume_usd + usd
        fields[WorkflowMetrics.total_fees_usd] = WorkflowMetrics.total_fees_usd + fees
    if finished:
        duration = int(execution.duration_ms or 0)
        ok = execution.status == "SUCCEEDED"
        fields[WorkflowMetrics.completed_executions] = WorkflowMetrics.completed_executions + 1
        fields[WorkflowMetrics.successful_executions] = WorkflowMetrics.successful_executions + int(ok)
        fields[WorkflowMetrics.failed_executions] = WorkflowMetrics.failed_executions + int(not ok)
        fields[WorkflowMetrics.total_duration_ms] = WorkflowMetrics.total_duration_ms + duration
        fields[WorkflowMetrics.last_duration_ms] = duration
    WorkflowMetrics.update(fields).where(WorkflowMetrics.workflow == execution.workflow_id).execute()


__all__ = ["after_outcome", "finish", "first_interval", "money", "orphan_poll", "poll_claimed", "poll_order"]
