"""SideShift orders placed by ``sideshift_swap`` steps: the shared vocabulary.

The one rule: **one order per swap, whatever crashes and whatever the operators do.**
SideShift has no idempotency key and no way to list or search shifts (docs/sideshift.md
section 10), so the order row is the intent, committed BEFORE the create call, and its
state says what a redelivery may do:

=====================================  =========================================
``SideShiftOrder`` row                  meaning (ledger ``SideEffect`` state)
=====================================  =========================================
PENDING_CREATE, ``create_sent_at`` NULL  intent only; nothing sent (PLANNED)
PENDING_CREATE, ``create_sent_at`` set   "CREATING": sent, outcome not recorded (SENDING)
OPEN with ``shift_id``                   created; polled to a final status (DONE)
SETTLED / REFUNDED / EXPIRED             final SideShift status (DONE)
FAILED                                   provably not created: refused, never sent, or
                                         declared so by an operator (FAILED)
NEEDS_RECONCILIATION                     may exist; never re-posted (UNKNOWN)
=====================================  =========================================

A delivery that finds "CREATING" cannot know whether the POST reached SideShift: it marks
the order NEEDS_RECONCILIATION and parks the step for an operator
(``shiftflow sideshift reconcile``).

An order belongs to its swap's identity across the whole re-run lineage (``SideShiftSwap``:
root execution, step id, iteration; ``swap_lineage``): a re-run, a second re-run, a
replayed dead letter or a repeated manual trigger of the same swap adopts the order that
is open, settled or unknown instead of placing another, and places a new one only after
every earlier order is provably final with no funds delivered. Each order has a stable
``external_id`` ``<root execution>:<step>:<iteration>`` (``/r<n>`` for the n-th order of
the swap), sent as SideShift's ``externalId`` so an operator can match a shift found on
SideShift's side; it is unique, so two orders of one swap can never share it.

Lock order everywhere: the swap row, then the order row, then the execution row
(``runs.lock_execution``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
import threading
from decimal import Decimal
from typing import Any

from shiftflow.kernel import failpoints
from shiftflow.kernel.db import is_postgres
from shiftflow.kernel.errors import NotFound, PermanentError
from shiftflow.kernel.redis_handle import get_redis
from shiftflow.kernel.settings import Settings
from shiftflow.kernel.sideshift import (
    QUOTES,
    SHIFTS,
    InProcessBackend,
    Rate,
    RateLimiter,
    RedisBackend,
    Shift,
    SideShiftClient,
    Timeouts,
    decimal_text,
)
from shiftflow.models.engine import mongo_log, runs
from shiftflow.models.tables.base import fk, utcnow
from shiftflow.models.tables.executions import Execution, StepExecution
from shiftflow.models.tables.notifications import Notification
from shiftflow.models.tables.side_effects import SideEffect
from shiftflow.models.tables.sideshift_orders import SideShiftOrder, SideShiftSwap
from shiftflow.models.tables.workflows import Workflow

#: ``SideEffect.kind`` of a shift creation.
KIND = "sideshift.shift"
#: ``StepExecution.wait_key`` prefix of a swap step waiting for an operator's reconciliation.
RECONCILE_WAIT = "sideshift:reconcile:"
#: Our final order states, by SideShift's final status.
FINAL_STATES = {"settled": "SETTLED", "refunded": "REFUNDED", "expired": "EXPIRED"}


class ReconcileError(PermanentError):
    """Raised when an operator's reconciliation does not apply (wrong state, unknown or foreign shift)."""


# -- identity and lookups ---------------------------------------------------------------


def lock_execution_of(order: SideShiftOrder) -> Execution | None:
    """The order's execution, row-locked (after the order: the lock order), or None if gone."""
    execution_id = fk(order, "execution")
    return None if execution_id is None else runs.lock_execution(execution_id)


def external_base(root_execution_id: Any, step_id: str, iteration: int) -> str:
    """``<root execution>:<step>:<iteration>`` (the step id hashed if it would not fit 100 chars)."""
    base = f"{root_execution_id}:{step_id}:{iteration}"
    if len(base) > 90:
        base = f"{root_execution_id}:{hashlib.sha256(step_id.encode()).hexdigest()[:16]}:{iteration}"
    return base


def external_id(root_execution_id: Any, step_id: str, iteration: int, generation: int = 1) -> str:
    """The stable ``externalId`` of a swap's ``generation``-th order (> 1 only after earlier
    orders of the swap ended with no funds delivered)."""
    base = external_base(root_execution_id, step_id, iteration)
    return base if generation == 1 else f"{base}/r{generation}"


def orders_of_step(execution_id: Any, step_id: str, iteration: int) -> list[SideShiftOrder]:
    """The orders one step iteration of one execution placed itself, newest first (the
    orders it adopted from its lineage are its swap's: ``swap_lineage.orders_of_swap``)."""
    query = (
        SideShiftOrder.select()
        .join(SideShiftSwap)
        .where(
            (SideShiftOrder.execution == execution_id)
            & (SideShiftSwap.step_id == step_id)
            & (SideShiftSwap.iteration == iteration)
        )
    )
    return sorted(query, key=lambda o: (o.created_at, str(o.id)), reverse=True)


def get_order(order_id: Any) -> SideShiftOrder:
    """One order by id (or by a unique prefix of its id, for the CLI).

    Raises:
        NotFound: no such order, or the prefix is ambiguous.
    """
    text = str(order_id).strip().lower()
    if re.fullmatch(r"[0-9a-f-]{36}", text):
        row = SideShiftOrder.get_or_none(SideShiftOrder.id == text)
        if row is not None:
            return row
    elif re.fullmatch(r"[0-9a-f-]{4,35}", text):
        # PostgreSQL prints a uuid with dashes; SQLite (dev mode) stores its 32 hex digits.
        prefix = text if is_postgres() else text.replace("-", "")
        rows = list(SideShiftOrder.select().where(SideShiftOrder.id.cast("text").startswith(prefix)).limit(2))
        if len(rows) == 1:
            return rows[0]
        if rows:
            raise NotFound(f"order id prefix {text!r} is ambiguous")
    raise NotFound(f"SideShift order {order_id} does not exist")


def lock_order(order_id: Any) -> SideShiftOrder:
    """The order row, locked (PostgreSQL) for the rest of the transaction."""
    query = SideShiftOrder.select().where(SideShiftOrder.id == order_id)
    if is_postgres():
        query = query.for_update()
    return query.get()


def step_row(order: SideShiftOrder) -> StepExecution | None:
    """The step iteration that placed ``order`` (None if its execution is gone)."""
    if fk(order, "execution") is None or not order.step_id:
        return None
    iteration = int(order.external_id.split("/")[0].rsplit(":", 1)[1])
    return StepExecution.get_or_none(
        (StepExecution.execution == fk(order, "execution"))
        & (StepExecution.step_id == order.step_id)
        & (StepExecution.iteration == iteration)
    )


# -- the SideShift client -----------------------------------------------------------------

_clients: dict[tuple[Any, ...], SideShiftClient] = {}
_clients_lock = threading.Lock()


def client_for(settings: Settings) -> SideShiftClient:
    """This process's SideShift client for ``settings`` (re-created after a fork).

    Creations share SideShift's per-IP limits across workers through Redis when
    ``SHIFTFLOW_REDIS_URL`` is set, else in this process only.

    Raises:
        PermanentError: ``SHIFTFLOW_SIDESHIFT_AFFILIATE_ID`` is not set.
    """
    if not settings.sideshift_affiliate_id:
        raise PermanentError(
            "SHIFTFLOW_SIDESHIFT_AFFILIATE_ID is not set: the worker cannot place SideShift orders"
        )
    redis = get_redis()
    key = (
        os.getpid(),
        settings.sideshift_base_url,
        settings.sideshift_affiliate_id,
        settings.sideshift_secret,
        settings.sideshift_timeout_seconds,
        settings.sideshift_shifts_per_minute,
        settings.sideshift_quotes_per_minute,
        settings.sideshift_commission_rate,
        id(redis),
    )
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            rates = {
                SHIFTS: Rate(settings.sideshift_shifts_per_minute, 60.0),
                QUOTES: Rate(settings.sideshift_quotes_per_minute, 60.0),
            }
            backend = RedisBackend(redis) if redis is not None else InProcessBackend()
            client = _clients[key] = SideShiftClient(
                settings.sideshift_affiliate_id,
                secret=settings.sideshift_secret or None,
                base_url=settings.sideshift_base_url,
                timeouts=Timeouts(read=settings.sideshift_timeout_seconds),
                limiter=RateLimiter(backend, rates),
                commission_rate=settings.sideshift_commission_rate or None,
            )
        return client


# -- the order row --------------------------------------------------------------------------


def _text_or_none(value: Decimal | None) -> str | None:
    return None if value is None else decimal_text(value)


def apply_shift(order: SideShiftOrder, shift: Shift) -> None:
    """Copy a shift's fields onto ``order`` (not saved). Amounts stay decimal strings."""
    order.shift_id = shift.id
    order.sideshift_status = shift.status
    order.quote_id = shift.quote_id or order.quote_id
    order.deposit_network = shift.deposit_network
    order.settle_network = shift.settle_network
    order.deposit_address = shift.deposit_address
    order.deposit_memo = shift.deposit_memo
    for name in ("deposit_amount", "settle_amount", "deposit_min", "deposit_max", "rate", "network_fee_usd"):
        value = getattr(shift, name)
        if value is not None:
            setattr(order, name, _text_or_none(value))
    order.deposit_hash = shift.deposit_hash or order.deposit_hash
    order.settle_hash = shift.settle_hash or order.settle_hash
    order.expires_at = shift.expires_at.astimezone(dt.UTC).replace(tzinfo=None)
    order.raw = dict(shift.raw)


def summary(order: SideShiftOrder) -> dict[str, Any]:
    """The swap step's output: the order as plain data (amounts as decimal strings)."""
    return {
        "order_id": str(order.id),
        "external_id": order.external_id,
        "state": order.state,
        "type": order.shift_type,
        "shift_id": order.shift_id,
        "status": order.sideshift_status,
        "quote_id": order.quote_id,
        "deposit_coin": order.deposit_coin,
        "deposit_network": order.deposit_network,
        "deposit_amount": order.deposit_amount,
        "deposit_address": order.deposit_address,
        "deposit_memo": order.deposit_memo,
        "deposit_min": order.deposit_min,
        "deposit_max": order.deposit_max,
        "settle_coin": order.settle_coin,
        "settle_network": order.settle_network,
        "settle_amount": order.settle_amount,
        "settle_address": order.settle_address,
        "rate": order.rate,
        "network_fee_usd": order.network_fee_usd,
        "deposit_hash": order.deposit_hash,
        "settle_hash": order.settle_hash,
        "expires_at": order.expires_at.isoformat() + "Z" if order.expires_at else None,
    }


def set_effect(order: SideShiftOrder, state: str, **fields: Any) -> None:
    """Move the order's ledger row (``SideEffect``) to ``state``."""
    if fk(order, "side_effect") is None:
        return
    now = utcnow()
    values: dict[str, Any] = {"state": state, "updated_at": now, **fields}
    if state in ("DONE", "FAILED"):
        values.setdefault("completed_at", now)
    SideEffect.update(values).where(SideEffect.id == fk(order, "side_effect")).execute()


# -- step parking -----------------------------------------------------------------------------


def park_polling(step: StepExecution, resume_at: dt.datetime, output: dict[str, Any]) -> bool:
    """Park the swap step PENDING with a durable timer: the timer loop re-publishes it at
    ``resume_at`` and its handler polls the shift (the engine's retry-backoff mechanism).

    ``retry_count`` grows with ``attempts`` so that a parked step never counts towards the
    delivery limit. Returns False when the step is no longer active (cancelled, timed out).
    """
    updated = (
        StepExecution.update(
            status="PENDING",
            claimed_by=None,
            resume_at=resume_at,
            timeout_at=None,
            wait_key=None,
            error=None,
            output=output,
            retry_count=StepExecution.retry_count + 1,
        )
        .where((StepExecution.id == step.id) & StepExecution.status.in_(("RUNNING", "WAITING", "PENDING")))
        .execute()
    )
    return bool(updated)


def park_for_operator(step: StepExecution, order: SideShiftOrder, reason: str) -> bool:
    """Park the swap step WAITING for ``shiftflow sideshift reconcile`` (no timer: a person decides)."""
    updated = (
        StepExecution.update(
            status="WAITING",
            claimed_by=None,
            resume_at=None,
            timeout_at=None,
            wait_key=RECONCILE_WAIT + str(order.id),
            error=reason,
            output=summary(order),
            retry_count=StepExecution.retry_count + 1,
        )
        .where((StepExecution.id == step.id) & StepExecution.status.in_(("RUNNING", "WAITING", "PENDING")))
        .execute()
    )
    return bool(updated)


def operator_hint(order: SideShiftOrder) -> str:
    """What an operator runs to settle an order in NEEDS_RECONCILIATION."""
    return (
        f"find the shift with externalId {order.external_id} on SideShift, then run "
        f"`shiftflow sideshift reconcile {order.id} --shift-id ID` or `... --none`"
    )


# -- notifications -------------------------------------------------------------------------------


def notify(execution: Execution, kind: str, title: str, message: str, data: dict[str, Any]) -> bool:
    """Write an inbox row for the execution's user (its trigger's user, else the workflow's
    creator). Returns False when nobody can be told (no user on either)."""
    user_id = fk(execution, "triggered_by")
    if user_id is None:
        user_id = Workflow.select(Workflow.created_by).where(Workflow.id == execution.workflow_id).scalar()
    if user_id is None:
        return False
    Notification.create(
        workspace=execution.workspace_id,
        user=user_id,
        execution=execution.id,
        type=kind,
        title=title[:300],
        message=message,
        data=data,
    )
    return True


# -- failpoints -----------------------------------------------------------------------------------


def crash_window(point: str, execution_id: Any) -> None:
    """Failpoints around the create call, keyed by execution: ``<point>.pause`` (a ``sleep``
    lets concurrent deliveries reach the same window, so one crash covers several),
    then ``<point>:<execution id>`` (``exit-once``). See tests/reliability."""
    failpoints.hit(point + ".pause")
    failpoints.hit(point, str(execution_id))


def log(order: SideShiftOrder, execution: Execution | None, message: str, *, level: str = "info") -> None:
    """An execution log document about ``order`` (written when the transaction commits)."""
    if execution is not None:
        mongo_log.execution_log(
            execution,
            message,
            level=level,
            step_id=order.step_id,
            metadata={
                "orderId": str(order.id),
                "externalId": order.external_id,
                "shiftId": order.shift_id,
                "state": order.state,
            },
        )


def clear_reconcile_error(execution: Execution) -> None:
    """Drop the "needs reconciliation" text from a running execution once it no longer applies."""
    if execution.status == "RUNNING" and execution.error and "needs reconciliation" in execution.error:
        execution.error = None
        execution.save(only=[Execution.error])


__all__ = [
    "FINAL_STATES",
    "lock_execution_of",
    "KIND",
    "RECONCILE_WAIT",
    "ReconcileError",
    "apply_shift",
    "client_for",
    "crash_window",
    "external_id",
    "get_order",
    "lock_order",
    "notify",
    "orders_of_step",
    "park_for_operator",
    "park_polling",
    "step_row",
    "summary",
]
