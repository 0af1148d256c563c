"""Schedules: when the scheduler fires a workflow (cron, fixed interval, or once).

The scheduler claims due rows with ``SELECT ... FOR UPDATE SKIP LOCKED`` ordered by
``next_fire_at``, publishes a trigger whose dedup key is ``schedule id + fire time``, and
moves ``next_fire_at`` on in the same transaction: two schedulers never fire one slot
twice, and a crash between publish and commit re-publishes a duplicate the trigger
actor drops.
"""

from __future__ import annotations

from typing import Any

import peewee

from shiftflow.models.tables.base import TimestampedModel
from shiftflow.models.tables.tenancy import Workspace
from shiftflow.models.tables.workflows import Workflow


class Schedule(TimestampedModel):
    """A time-based trigger of one workflow, synced from its definition.

    ``kind``: CRON (``cron_expression`` evaluated in ``timezone``, so 09:00 stays 09:00
    across daylight-saving changes), INTERVAL (every ``interval_seconds``), ONCE (at
    ``run_at``). All instants are naive UTC; ``next_fire_at`` NULL means nothing is left
    to fire.

    ``catch_up`` after downtime: NONE skips missed slots, LATEST fires once for the most
    recent one, ALL fires each missed slot (at most ``max_catch_up``).
    ``overlap`` while the previous run is still going: ALLOW starts another, SKIP drops
    the slot, BUFFER_ONE keeps one slot waiting.
    """

    # Peewee's foreign-key id accessors, declared for the type checker.
    workspace_id: Any
    workflow_id: Any

    workspace = peewee.ForeignKeyField(Workspace, backref="schedules", on_delete="CASCADE")
    workflow = peewee.ForeignKeyField(Workflow, backref="schedules", on_delete="CASCADE", index=False)
    # Which schedule of the definition this row is; the sync upserts on (workflow, key).
    key = peewee.CharField(max_length=100, default="default")
    kind = peewee.CharField(max_length=8)
    cron_expression = peewee.CharField(max_length=120, null=True)
    interval_seconds = peewee.IntegerField(null=True)
    run_at = peewee.DateTimeField(null=True)
    timezone = peewee.CharField(max_length=64, default="UTC")
    start_at = peewee.DateTimeField(null=True)
    end_at = peewee.DateTimeField(null=True)
    next_fire_at = peewee.DateTimeField(null=True)
    last_fired_at = peewee.DateTimeField(null=True)
    fire_count = peewee.IntegerField(default=0)
    catch_up = peewee.CharField(max_length=8, default="LATEST")
    max_catch_up = peewee.IntegerField(default=100)
    overlap = peewee.CharField(max_length=12, default="ALLOW")
    # Spreads fires of many schedules on the same minute (thundering herd on ":00").
    jitter_seconds = peewee.IntegerField(default=0)
    is_active = peewee.BooleanField(default=True)
    # Overlap BUFFER_ONE: the one slot held back while the previous run was still going;
    # it fires as soon as that run ends (migration 0004).
    pending_fire_at = peewee.DateTimeField(null=True)

    class Meta:
        indexes = ((("workflow", "key"), True),)
        constraints = [
            peewee.Check(
                "(kind = 'CRON' AND cron_expression IS NOT NULL)"
                " OR (kind = 'INTERVAL' AND interval_seconds IS NOT NULL AND interval_seconds > 0)"
                " OR (kind = 'ONCE' AND run_at IS NOT NULL)",
                name="chk_schedule_kind",
            ),
            peewee.Check("catch_up IN ('NONE', 'LATEST', 'ALL')", name="chk_schedule_catch_up"),
            peewee.Check("overlap IN ('ALLOW', 'SKIP', 'BUFFER_ONE')", name="chk_schedule_overlap"),
            peewee.Check(
                "max_catch_up >= 0 AND jitter_seconds >= 0 AND fire_count >= 0", name="chk_schedule_counts"
            ),
            peewee.Check(
                "end_at IS NULL OR start_at IS NULL OR end_at > start_at", name="chk_schedule_window"
            ),
        ]


# The scheduler's only hot query: active schedules due now, oldest first.
Schedule.add_index(
    Schedule.index(Schedule.next_fire_at, where=peewee.SQL("is_active"), name="idx_schedule_due")
)
# Schedules holding a buffered slot (overlap BUFFER_ONE): re-checked every tick, few rows.
Schedule.add_index(
    Schedule.index(
        Schedule.pending_fire_at,
        where=peewee.SQL("is_active AND pending_fire_at IS NOT NULL"),
        name="idx_schedule_pending",
    )
)
