"""Delivery counts of redelivered trigger messages, kept in PostgreSQL.

Step messages count their deliveries on their ``StepExecution`` row; a trigger message
has no row until it has created its execution, so a trigger that kills its process
before that (a poison payload, a crash in a fast-start step) would be redelivered
forever. RabbitMQ's classic queues keep no delivery count, so ShiftFlow keeps one here.

Only redeliveries are written (the first delivery of every trigger costs nothing), and
only when the redelivered message starts work: a message that sat unstarted in a dead
process's prefetch buffer is not charged for that death. The count therefore includes
the first delivery (``deliveries`` starts at 2), which may itself have been one that
never started: a trigger is charged at most one delivery it did not run.
"""

from __future__ import annotations

import datetime as dt

import peewee

from shiftflow.kernel.db import database
from shiftflow.models.tables.base import BaseModel, utcnow


class TriggerDelivery(BaseModel):
    """How many times one trigger message (by Dramatiq message id) was delivered and started."""

    message_id = peewee.CharField(max_length=64, unique=True)
    workflow_id = peewee.CharField(max_length=64)
    dedup_key = peewee.CharField(max_length=255)
    deliveries = peewee.IntegerField()
    first_at = peewee.DateTimeField(default=utcnow)
    last_at = peewee.DateTimeField(default=utcnow)


def count_redelivery(message_id: str, workflow_id: str, dedup_key: str) -> int:
    """Count one redelivery of a trigger message that is about to start work, and commit.

    Committed before the work, so a delivery that kills its process still counts.

    Returns:
        Deliveries of this message so far, this one and the first included.
    """
    now = utcnow()
    with database.atomic():
        TriggerDelivery.insert(
            message_id=message_id, workflow_id=workflow_id[:64], dedup_key=dedup_key[:255],
            deliveries=2, first_at=now, last_at=now,
        ).on_conflict(
            conflict_target=[TriggerDelivery.message_id],
            update={TriggerDelivery.deliveries: TriggerDelivery.deliveries + 1, TriggerDelivery.last_at: now},
        ).execute()
        return int(
            TriggerDelivery.select(TriggerDelivery.deliveries)
            .where(TriggerDelivery.message_id == message_id)
            .scalar()
        )


def purge(older_than: dt.timedelta = dt.timedelta(days=7)) -> int:
    """Forget counts not touched for ``older_than`` (RabbitMQ has long dropped those messages).

    Returns:
        Rows deleted.
    """
    cutoff = utcnow() - older_than
    return int(TriggerDelivery.delete().where(TriggerDelivery.last_at < cutoff).execute())
