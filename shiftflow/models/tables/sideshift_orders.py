"""SideShift orders: swaps placed for a step, tracked to a final status.

The row is written BEFORE ``POST /shifts/*`` with state PENDING_CREATE and a fresh
``external_id``; ``shift_id`` is filled from the 201 response. SideShift has no
idempotency key and no way to list or search shifts (docs/sideshift.md section 10), so a
create call with an unknown outcome (timeout, reset after send, 5xx) moves the order to
NEEDS_RECONCILIATION and it is never re-posted automatically.

Every order belongs to a ``SideShiftSwap``: the swap's identity across a whole re-run
lineage (root execution, step id, iteration), whose row is the lock every order decision
of that swap takes (``swap_lineage``).
"""

from __future__ import annotations

import peewee

from shiftflow.kernel.db import JSONField
from shiftflow.models.tables.base import BaseModel, TimestampedModel, utcnow
from shiftflow.models.tables.executions import Execution
from shiftflow.models.tables.side_effects import SideEffect
from shiftflow.models.tables.tenancy import User, Workspace

#: Our states. OPEN follows SideShift's own status until it is final.
ORDER_STATES = ("PENDING_CREATE", "OPEN", "SETTLED", "REFUNDED", "EXPIRED", "FAILED", "NEEDS_RECONCILIATION")

#: SideShift statuses after which nothing changes any more.
FINAL_SIDESHIFT_STATUSES = ("settled", "refunded", "expired")

# Amounts, rates and fees are decimal strings exactly as the API sends them
# ("0.14364577"): no float rounding, and SQLite dev mode keeps them exact too.
_AMOUNT = 64


def _amount() -> peewee.CharField:
    return peewee.CharField(max_length=_AMOUNT, null=True)


class SideShiftSwap(BaseModel):
    """One swap of a re-run lineage: the identity its orders share, and their lock.

    ``root_execution`` is the lineage's first execution (``Execution.lineage_root``, or
    the execution itself); every re-run of it, and re-run of a re-run, runs the same swap
    (``step_id``, ``iteration``). A plain id, not a foreign key: the identity outlives a
    deleted execution. The row is locked (``FOR UPDATE``) before any order of the swap is
    planned, sent, adopted or reconciled, so at most one order of a swap is ever live.
    """

    workspace = peewee.ForeignKeyField(Workspace, backref="sideshift_swaps", on_delete="CASCADE")
    root_execution = peewee.UUIDField()
    step_id = peewee.CharField(max_length=100)
    iteration = peewee.IntegerField(default=0)
    created_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "sideshift_swap"
        indexes = ((("root_execution", "step_id", "iteration"), True),)
        constraints = [peewee.Check("iteration >= 0", name="chk_sideshift_swap_iteration")]


class SideShiftOrder(TimestampedModel):
    """One SideShift shift (fixed or variable) and its lifecycle.

    ``state`` is ours (see ``ORDER_STATES``); ``sideshift_status`` is SideShift's
    (waiting, pending, processing, review, settling, settled, refund, refunding,
    refunded, expired, multiple), stored as received. ``raw`` keeps the last shift
    object for support. Money rows are never removed by a cascade: deleting the
    execution only unlinks the order, and a workspace with orders cannot be deleted.
    """

    workspace = peewee.ForeignKeyField(Workspace, backref="sideshift_orders", index=False)
    user = peewee.ForeignKeyField(User, null=True, backref="sideshift_orders", on_delete="SET NULL")
    execution = peewee.ForeignKeyField(Execution, null=True, backref="sideshift_orders", on_delete="SET NULL")
    step_id = peewee.CharField(max_length=100, null=True)
    side_effect = peewee.ForeignKeyField(
        SideEffect, null=True, backref="sideshift_orders", on_delete="SET NULL"
    )
    # The swap (lineage identity) the order belongs to; NULL only for an order whose
    # execution was deleted before migration 0007 could place it in its lineage.
    swap = peewee.ForeignKeyField(SideShiftSwap, null=True, backref="orders")
    # Sent as SideShift's externalId; ours, so it exists before the create call.
    external_id = peewee.CharField(max_length=100, unique=True)
    state = peewee.CharField(max_length=24, default="PENDING_CREATE")
    shift_type = peewee.CharField(max_length=8)
    quote_id = peewee.CharField(max_length=64, null=True)
    # NULL until the create call answered; unique once known (NULLs do not collide).
    shift_id = peewee.CharField(max_length=64, null=True, unique=True)
    sideshift_status = peewee.CharField(max_length=16, null=True, index=True)
    deposit_coin = peewee.CharField(max_length=20)
    deposit_network = peewee.CharField(max_length=40, null=True)
    deposit_amount = _amount()
    deposit_min = _amount()
    deposit_max = _amount()
    deposit_address = peewee.CharField(max_length=200, null=True)
    deposit_memo = peewee.CharField(max_length=200, null=True)
    settle_coin = peewee.CharField(max_length=20)
    settle_network = peewee.CharField(max_length=40, null=True)
    settle_amount = _amount()
    settle_address = peewee.CharField(max_length=200)
    settle_memo = peewee.CharField(max_length=200, null=True)
    refund_address = peewee.CharField(max_length=200, null=True)
    refund_memo = peewee.CharField(max_length=200, null=True)
    rate = _amount()
    network_fee_usd = _amount()
    deposit_hash = peewee.CharField(max_length=200, null=True)
    settle_hash = peewee.CharField(max_length=200, null=True)
    raw = JSONField(null=True)
    error = peewee.TextField(null=True)
    # When the create request left; set before sending, it dates an unknown outcome.
    create_sent_at = peewee.DateTimeField(null=True)
    expires_at = peewee.DateTimeField(null=True)
    completed_at = peewee.DateTimeField(null=True)
    next_poll_at = peewee.DateTimeField(null=True)
    last_polled_at = peewee.DateTimeField(null=True)

    class Meta:
        table_name = "sideshift_order"
        indexes = ((("workspace", "created_at"), False),)
        constraints = [
            peewee.Check(
                "state IN ('PENDING_CREATE', 'OPEN', 'SETTLED', 'REFUNDED', 'EXPIRED', 'FAILED',"
                " 'NEEDS_RECONCILIATION')",
                name="chk_sideshift_order_state",
            ),
            peewee.Check("shift_type IN ('fixed', 'variable')", name="chk_sideshift_order_type"),
            # An order SideShift acknowledged always has its id.
            peewee.Check(
                "state NOT IN ('OPEN', 'SETTLED', 'REFUNDED', 'EXPIRED') OR shift_id IS NOT NULL",
                name="chk_sideshift_order_shift_id",
            ),
        ]


# The status poller's query: open orders due for a look.
SideShiftOrder.add_index(
    SideShiftOrder.index(
        SideShiftOrder.next_poll_at, where=peewee.SQL("state = 'OPEN'"), name="idx_sideshift_order_poll"
    )
)
# Orders a person must look at; small, and it must never be missed.
SideShiftOrder.add_index(
    SideShiftOrder.index(
        SideShiftOrder.created_at,
        where=peewee.SQL("state = 'NEEDS_RECONCILIATION'"),
        name="idx_sideshift_order_reconcile",
    )
)
