"""A swap's identity across its re-run lineage, its lock, and which orders it may adopt.

The rule every path obeys (re-runs, concurrent re-runs, dead-letter replay, cancel,
reconcile, a manual run repeated with its idempotency key): **an order belongs to its
swap's identity across the whole re-run tree**, (root execution, step id, iteration).
``control.rerun`` gives every re-run the ``lineage_root`` of the execution it repeats, so
the failed execution, each re-run of it and each re-run of a re-run run the same swap; a
sub-workflow that a parent's re-run starts again gets the first such child as its root
(``start.child_lineage_root``); a repeated manual trigger with the same key is the same
execution, and a replayed dead letter the same step.

Before any order of a swap is planned, sent, adopted or reconciled, its ``SideShiftSwap``
row is locked (``FOR UPDATE``; SQLite serialises writers anyway) and every order of the
identity is read. What the newest order that still matters says decides:

==================================================  ======================================
order of the swap                                    what a swap step does
==================================================  ======================================
none, or only orders that ``allow_new_order``        plans (and sends) a new order
OPEN, SETTLED (or EXPIRED after a deposit was seen)  adopts it: follows it to its final
                                                     status, its result becomes the step's
NEEDS_RECONCILIATION, or sent ("CREATING") by a      waits (WAITING) until an operator runs
step that ended                                      ``shiftflow sideshift reconcile``
an intent, or "CREATING", of a step still active     waits for that step (a timer re-checks)
==================================================  ======================================

Only orders that are **provably final with no funds delivered** let a new order be
placed: FAILED (refused, never sent, or declared "no shift" by an operator), REFUNDED
(the deposit went back to the refund address; nothing settled) and EXPIRED with no
deposit seen (nobody paid before the deadline; a late deposit is refunded by SideShift,
docs/sideshift.md sections 3 and 13). An EXPIRED order that saw a deposit is adopted as a failure: a
person decides whether to swap again (in a new execution). Money safety never depends on
SideShift refusing anything: the create call is sent only by the step whose intent passed
this check, re-checked under the same lock just before sending (``order_create``).

Lock order everywhere: the swap row, then order rows, then execution rows.
"""

from __future__ import annotations

from typing import Any

from shiftflow.kernel.db import is_postgres
from shiftflow.kernel.steps import TERMINAL
from shiftflow.models.tables.base import utcnow
from shiftflow.models.tables.executions import Execution, StepExecution
from shiftflow.models.tables.sideshift_orders import SideShiftOrder, SideShiftSwap

#: Order states in which the order may still become (or is) a shift with money behind it.
LIVE_STATES = ("PENDING_CREATE", "OPEN", "NEEDS_RECONCILIATION")


def root_of(execution: Execution) -> Any:
    """The id of the first execution of ``execution``'s re-run lineage (itself if none)."""
    return execution.lineage_root or execution.id


def lock_swap(execution: Execution, step_id: str, iteration: int) -> SideShiftSwap:
    """The swap of ``(root of execution, step_id, iteration)``, created if new, row-locked."""
    root = root_of(execution)
    SideShiftSwap.insert(
        workspace=execution.workspace_id,
        root_execution=root,
        step_id=step_id,
        iteration=iteration,
        created_at=utcnow(),
    ).on_conflict_ignore().execute()
    query = SideShiftSwap.select().where(
        (SideShiftSwap.root_execution == root)
        & (SideShiftSwap.step_id == step_id)
        & (SideShiftSwap.iteration == iteration)
    )
    if is_postgres():
        query = query.for_update()
    return query.get()


def lock_swap_of(order: SideShiftOrder) -> SideShiftSwap | None:
    """The swap ``order`` belongs to, row-locked (None for an order outside any lineage)."""
    swap_id = order.__data__.get("swap")
    if swap_id is None:
        return None
    query = SideShiftSwap.select().where(SideShiftSwap.id == swap_id)
    if is_postgres():
        query = query.for_update()
    return query.get_or_none()


def orders_of_swap(swap: SideShiftSwap) -> list[SideShiftOrder]:
    """Every order of the swap, newest first."""
    query = SideShiftOrder.select().where(SideShiftOrder.swap == swap.id)
    return sorted(query, key=lambda o: (o.created_at, str(o.id)), reverse=True)


def deposit_seen(order: SideShiftOrder) -> bool:
    """True when SideShift reported a deposit for the order's shift (any, even refunded)."""
    raw = order.raw or {}
    return bool(
        order.deposit_hash
        or raw.get("depositHash")
        or raw.get("depositReceivedAt")
        or raw.get("deposits")
    )


def allows_new_order(order: SideShiftOrder) -> bool:
    """True when the order is provably final with no funds delivered (module docstring)."""
    if order.state in ("FAILED", "REFUNDED"):
        return True
    return order.state == "EXPIRED" and not deposit_seen(order)


def current(orders: list[SideShiftOrder]) -> SideShiftOrder | None:
    """The order a swap step must follow: the newest one that does not allow a new order."""
    return next((o for o in orders if not allows_new_order(o)), None)


def blocking(swap: SideShiftSwap, besides: Any) -> SideShiftOrder | None:
    """An order of the swap, other than ``besides`` (an order id), that forbids a new order."""
    return current([o for o in orders_of_swap(swap) if o.id != besides])


def is_active(step: StepExecution | None) -> bool:
    """True when ``step`` exists, has not ended, and neither has its execution."""
    if step is None or step.status in TERMINAL:
        return False
    status = Execution.select(Execution.status).where(Execution.id == step.execution_id).scalar()
    return status is not None and status not in TERMINAL


__all__ = [
    "LIVE_STATES",
    "allows_new_order",
    "blocking",
    "current",
    "deposit_seen",
    "is_active",
    "lock_swap",
    "lock_swap_of",
    "orders_of_swap",
    "root_of",
]
