"""Timelines: typed events shown as a chat-style history."""

from __future__ import annotations

import peewee

from shiftflow.kernel.db import JSONField
from shiftflow.models.tables.base import BaseModel, utcnow
from shiftflow.models.tables.executions import Execution
from shiftflow.models.tables.patterns import FeedbackItem, PatternSession, PatternWorkspace
from shiftflow.models.tables.tenancy import User, Workspace


class TimelineEvent(BaseModel):
    """One typed event in a timeline: a pattern's history, an execution's progress, or both.

    ``type`` is the event's type (``pattern_created``, ``claude_phase_update``,
    ``deploy_success``, ``status_changed``...); ``data`` its type-specific payload.
    ``author_type`` is user, system or agent. ``status`` and
    ``progress`` are set on progress events. Unlike MongoDB execution logs, these rows
    are product data users read and link to, so they live in PostgreSQL.
    """

    workspace = peewee.ForeignKeyField(Workspace, backref="timeline_events", on_delete="CASCADE")
    pattern = peewee.ForeignKeyField(
        PatternWorkspace, null=True, backref="timeline", on_delete="CASCADE", index=False
    )
    execution = peewee.ForeignKeyField(
        Execution, null=True, backref="timeline", on_delete="CASCADE", index=False
    )
    session = peewee.ForeignKeyField(PatternSession, null=True, backref="timeline", on_delete="SET NULL")
    feedback = peewee.ForeignKeyField(FeedbackItem, null=True, backref="timeline", on_delete="SET NULL")
    type = peewee.CharField(max_length=50, index=True)
    author = peewee.ForeignKeyField(User, null=True, backref="timeline_events", on_delete="SET NULL")
    author_type = peewee.CharField(max_length=10, default="user")
    title = peewee.CharField(max_length=300, null=True)
    content = peewee.TextField(null=True)
    data = JSONField(null=True)
    attachments = JSONField(default=list)
    status = peewee.CharField(max_length=12, null=True)
    progress = peewee.IntegerField(null=True)
    created_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        indexes = (
            (("pattern", "created_at"), False),
            (("execution", "created_at"), False),
        )
        constraints = [
            peewee.Check("author_type IN ('user', 'system', 'agent')", name="chk_timeline_event_author_type"),
            peewee.Check(
                "status IS NULL OR status IN ('pending', 'in_progress', 'completed', 'failed')",
                name="chk_timeline_event_status",
            ),
            peewee.Check(
                "progress IS NULL OR progress BETWEEN 0 AND 100", name="chk_timeline_event_progress"
            ),
            peewee.Check(
                "pattern_id IS NOT NULL OR execution_id IS NOT NULL", name="chk_timeline_event_subject"
            ),
        ]
