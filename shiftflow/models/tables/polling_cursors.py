"""Polling cursors: how far the poller has read an outside source for one workflow."""

from __future__ import annotations

import peewee

from shiftflow.kernel.db import JSONField
from shiftflow.models.tables.base import TimestampedModel
from shiftflow.models.tables.integrations import Connection, IntegrationTrigger
from shiftflow.models.tables.tenancy import Workspace
from shiftflow.models.tables.workflows import Workflow


class PollingCursor(TimestampedModel):
    """The position of a polling trigger (e.g. ``gmail.new_email``).

    ``cursor`` is opaque to the engine (last id, timestamp, etag: whatever the source
    pages by). ``seen_keys`` keeps the ids of the most recent items, bounded by the
    poller, because many sources page by a coarse timestamp and return the boundary item
    twice; each new item becomes a trigger whose dedup key is its id. The cursor moves
    only after the triggers were confirmed by the broker, so a crash re-reads, never skips.
    """

    workspace = peewee.ForeignKeyField(Workspace, backref="polling_cursors", on_delete="CASCADE")
    workflow = peewee.ForeignKeyField(Workflow, backref="polling_cursors", on_delete="CASCADE", index=False)
    key = peewee.CharField(max_length=100, default="default")
    trigger = peewee.ForeignKeyField(IntegrationTrigger, null=True, backref="cursors", on_delete="SET NULL")
    connection = peewee.ForeignKeyField(Connection, null=True, backref="cursors", on_delete="SET NULL")
    interval_seconds = peewee.IntegerField(default=300)
    cursor = JSONField(null=True)
    seen_keys = JSONField(default=list)
    next_poll_at = peewee.DateTimeField(null=True)
    last_polled_at = peewee.DateTimeField(null=True)
    last_success_at = peewee.DateTimeField(null=True)
    # Drives back-off and, past a limit, pausing a source that keeps failing.
    consecutive_failures = peewee.IntegerField(default=0)
    last_error = peewee.TextField(null=True)
    is_active = peewee.BooleanField(default=True)

    class Meta:
        indexes = ((("workflow", "key"), True),)
        constraints = [
            peewee.Check(
                "interval_seconds > 0 AND consecutive_failures >= 0", name="chk_polling_cursor_interval"
            ),
        ]


PollingCursor.add_index(
    PollingCursor.index(
        PollingCursor.next_poll_at, where=peewee.SQL("is_active"), name="idx_polling_cursor_due"
    )
)
