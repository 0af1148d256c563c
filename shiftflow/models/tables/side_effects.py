"""The side-effect ledger: an intent row before an outside call, its result after it.

docs/architecture.md#call-once-effects: a step whose effect must not repeat (a SideShift shift, an email, a
payment-like call) commits PLANNED, then SENDING just before the call, then DONE or
FAILED with the result. A redelivery that finds SENDING cannot know whether the call
landed: it marks the row UNKNOWN and reconciles (looks the effect up by
``external_ref``); it never repeats the call blindly.
"""

from __future__ import annotations

import peewee

from shiftflow.kernel.db import JSONField
from shiftflow.models.tables.base import TimestampedModel
from shiftflow.models.tables.executions import Execution
from shiftflow.models.tables.tenancy import Workspace

#: The ledger states, in order of a normal life; FAILED and UNKNOWN end it early.
EFFECT_STATES = ("PLANNED", "SENDING", "DONE", "FAILED", "UNKNOWN")


class SideEffect(TimestampedModel):
    """The intent and result of one outside effect of one step iteration.

    Unique on (execution, step_id, iteration): one effect per step run, as steps are
    unique on the same key, so a ``for_each`` of swaps gets one row per item.
    ``request_hash`` is the SHA-256 of the canonical request: a redelivery that would
    send something different is a bug to stop, not a retry. ``external_ref`` is the
    id the other side knows the effect by (shift id, message id) once known.
    """

    workspace = peewee.ForeignKeyField(Workspace, backref="side_effects", on_delete="CASCADE")
    execution = peewee.ForeignKeyField(Execution, backref="side_effects", on_delete="CASCADE", index=False)
    step_id = peewee.CharField(max_length=100)
    iteration = peewee.IntegerField(default=0)
    kind = peewee.CharField(max_length=50)
    state = peewee.CharField(max_length=8, default="PLANNED")
    request_hash = peewee.CharField(max_length=64)
    external_ref = peewee.CharField(max_length=200, null=True)
    result = JSONField(null=True)
    error = peewee.TextField(null=True)
    attempts = peewee.IntegerField(default=0)
    sent_at = peewee.DateTimeField(null=True)
    completed_at = peewee.DateTimeField(null=True)

    class Meta:
        indexes = ((("execution", "step_id", "iteration"), True),)
        constraints = [
            peewee.Check(
                "state IN ('PLANNED', 'SENDING', 'DONE', 'FAILED', 'UNKNOWN')", name="chk_side_effect_state"
            ),
            peewee.Check(
                "state NOT IN ('DONE', 'FAILED') OR completed_at IS NOT NULL", name="chk_side_effect_done"
            ),
            peewee.Check("attempts >= 0 AND iteration >= 0", name="chk_side_effect_counts"),
        ]


# The reconciler's query: effects whose outcome nobody recorded, oldest first.
SideEffect.add_index(
    SideEffect.index(
        SideEffect.updated_at,
        where=peewee.SQL("state IN ('SENDING', 'UNKNOWN')"),
        name="idx_side_effect_unsettled",
    )
)
