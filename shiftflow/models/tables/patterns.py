"""Pattern workspaces: a trading pattern's hub, its test sessions, feedback, and
the agent runs that implement it.

An agent run is an ``Execution`` (status, phase, progress, phases,
checkpoints, retries with parent links) plus a ``PatternRun`` holding what only this
product needs: which pattern, which feedback went in, what commit and deploy came out.
Its timeline is ``TimelineEvent``.
"""

from __future__ import annotations

from typing import Any

import peewee

from shiftflow.kernel.db import JSONField
from shiftflow.models.tables.base import BaseModel, TimestampedModel, utcnow
from shiftflow.models.tables.executions import Execution
from shiftflow.models.tables.tenancy import User, Workspace


class PatternWorkspace(TimestampedModel):
    """One pattern or indicator being built (``swings``, ``bos``, ``choch``...).

    It is not a tenant: it belongs to a ``Workspace`` and is unique
    per (workspace, pattern_type). ``status``: soon, implementing, beta, in_review,
    verified. ``version`` is the pattern's semantic version string.
    """

    # Peewee's foreign-key id accessor, declared for the type checker.
    workspace_id: Any

    workspace = peewee.ForeignKeyField(Workspace, backref="patterns", on_delete="CASCADE", index=False)
    pattern_type = peewee.CharField(max_length=50)
    name = peewee.CharField(max_length=200)
    category = peewee.CharField(max_length=50)
    status = peewee.CharField(max_length=12, default="soon", index=True)
    version = peewee.CharField(max_length=32, default="0.0.0")
    implemented_at = peewee.DateTimeField(null=True)
    approved_at = peewee.DateTimeField(null=True)
    verified_at = peewee.DateTimeField(null=True)
    description = peewee.TextField(null=True)
    user_reasoning = peewee.TextField(null=True)
    identification_steps = JSONField(null=True)
    attachments = JSONField(default=list)
    session_count = peewee.IntegerField(default=0)
    feedback_count = peewee.IntegerField(default=0)
    success_rate = peewee.DoubleField(null=True)
    last_tested_at = peewee.DateTimeField(null=True)
    # Nullable like Workflow.created_by: removing a person must not remove their patterns.
    created_by = peewee.ForeignKeyField(User, null=True, backref="created_patterns", on_delete="SET NULL")
    approved_by = peewee.ForeignKeyField(User, null=True, backref="approved_patterns", on_delete="SET NULL")
    verified_by = peewee.ForeignKeyField(User, null=True, backref="verified_patterns", on_delete="SET NULL")

    class Meta:
        indexes = ((("workspace", "pattern_type"), True),)
        constraints = [
            peewee.Check(
                "status IN ('soon', 'implementing', 'beta', 'in_review', 'verified')",
                name="chk_pattern_workspace_status",
            ),
            peewee.Check(
                "success_rate IS NULL OR (success_rate >= 0 AND success_rate <= 1)",
                name="chk_pattern_workspace_success_rate",
            ),
        ]


class PatternSession(TimestampedModel):
    """A test session of a pattern, linked to its workspace.

    The product's own attributes go to ``data``.
    """

    workspace = peewee.ForeignKeyField(Workspace, backref="pattern_sessions", on_delete="CASCADE")
    pattern = peewee.ForeignKeyField(PatternWorkspace, backref="sessions", on_delete="CASCADE")
    user = peewee.ForeignKeyField(User, null=True, backref="pattern_sessions", on_delete="SET NULL")
    status = peewee.CharField(max_length=20, default="active")
    data = JSONField(default=dict)
    completed_at = peewee.DateTimeField(null=True)


class FeedbackItem(TimestampedModel):
    """One correction a user made in a session, later sent to an agent run.

    ``sent_at``/``execution`` record which run processed it, so a batch is never sent
    twice.
    """

    workspace = peewee.ForeignKeyField(Workspace, backref="feedback_items", on_delete="CASCADE")
    pattern = peewee.ForeignKeyField(PatternWorkspace, backref="feedback_items", on_delete="CASCADE")
    session = peewee.ForeignKeyField(
        PatternSession, null=True, backref="feedback_items", on_delete="SET NULL"
    )
    user = peewee.ForeignKeyField(User, null=True, backref="feedback_items", on_delete="SET NULL")
    content = peewee.TextField(null=True)
    data = JSONField(default=dict)
    sent_at = peewee.DateTimeField(null=True)
    execution = peewee.ForeignKeyField(Execution, null=True, backref="feedback_items", on_delete="SET NULL")


class PatternRun(BaseModel):
    """The pattern-specific part of an agent run; 1:1 with its ``Execution``.

    ``deploy_status`` follows Vercel: queued, building, ready, error, canceled. Deploy
    logs go to MongoDB ``execution_logs`` like every other step's logs.
    """

    # Peewee's foreign-key id accessors, declared for the type checker.
    workspace_id: Any
    pattern_id: Any

    workspace = peewee.ForeignKeyField(Workspace, backref="pattern_runs", on_delete="CASCADE")
    pattern = peewee.ForeignKeyField(PatternWorkspace, backref="runs", on_delete="CASCADE", index=False)
    execution = peewee.ForeignKeyField(Execution, backref="pattern_run", on_delete="CASCADE", unique=True)
    feedback_ids = JSONField(default=list)
    prompt_file = peewee.CharField(max_length=1024, null=True)
    files_changed = JSONField(default=list)
    commit_hash = peewee.CharField(max_length=64, null=True)
    commit_message = peewee.TextField(null=True)
    deploy_started_at = peewee.DateTimeField(null=True)
    deploy_completed_at = peewee.DateTimeField(null=True)
    deploy_url = peewee.CharField(max_length=2048, null=True)
    deploy_status = peewee.CharField(max_length=10, null=True)
    created_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        # A pattern's runs, newest first.
        indexes = ((("pattern", "created_at"), False),)
        constraints = [
            peewee.Check(
                "deploy_status IS NULL OR deploy_status IN ('queued', 'building', 'ready', 'error', 'canceled')",
                name="chk_pattern_run_deploy_status",
            ),
        ]
