"""Workflows, their immutable versions, and the webhooks that trigger them."""

from __future__ import annotations

from typing import Any

import peewee

from shiftflow.kernel.db import JSONField
from shiftflow.models.tables.base import BaseModel, TimestampedModel, utcnow
from shiftflow.models.tables.templates import WorkflowTemplate
from shiftflow.models.tables.tenancy import User, Workspace


class Workflow(TimestampedModel):
    """A workflow: its current definition lives in ``WorkflowVersion`` rows.

    ``status`` is DRAFT, ACTIVE, PAUSED or ARCHIVED (plus COMPLETED and FAILED
    for workflows that reached ``max_executions`` or were stopped by an error).

    ``execution_count`` is the admission counter checked against ``max_executions`` when
    an execution is created; durations and money totals live in ``WorkflowMetrics``.
    Trigger configuration is part of the versioned definition, not a column here: the
    scheduler and poller keep their own rows (``Schedule``, ``PollingCursor``).
    """

    # Peewee's foreign-key id accessors, declared for the type checker.
    workspace_id: Any

    workspace = peewee.ForeignKeyField(Workspace, backref="workflows", on_delete="CASCADE")
    created_by = peewee.ForeignKeyField(User, backref="workflows", null=True, on_delete="SET NULL")
    name = peewee.CharField(max_length=200)
    description = peewee.TextField(null=True)
    status = peewee.CharField(max_length=12, default="DRAFT", index=True)
    trigger_type = peewee.CharField(max_length=12, default="MANUAL")
    current_version = peewee.IntegerField(default=1)
    max_executions = peewee.IntegerField(null=True)
    execution_count = peewee.IntegerField(default=0)
    successful_executions = peewee.IntegerField(default=0)
    failed_executions = peewee.IntegerField(default=0)
    last_executed_at = peewee.DateTimeField(null=True)
    tags = JSONField(default=list)
    # UI folder, first publication, and the template a workflow was made from.
    folder = peewee.CharField(max_length=200, null=True)
    published_at = peewee.DateTimeField(null=True)
    template = peewee.ForeignKeyField(WorkflowTemplate, null=True, backref="workflows", on_delete="SET NULL")

    class Meta:
        indexes = ((("workspace", "status"), False),)
        constraints = [
            peewee.Check("max_executions IS NULL OR max_executions > 0", name="chk_workflow_max_executions"),
            peewee.Check("current_version >= 1", name="chk_workflow_current_version"),
        ]


class WorkflowVersion(BaseModel):
    """An immutable snapshot of a workflow definition; executions pin one."""

    workflow = peewee.ForeignKeyField(Workflow, backref="versions", on_delete="CASCADE")
    version = peewee.IntegerField()
    definition = JSONField()
    change_description = peewee.TextField(null=True)
    created_by = peewee.ForeignKeyField(User, null=True, on_delete="SET NULL")
    created_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("workflow", "version"), True),)
        constraints = [peewee.Check("version >= 1", name="chk_workflow_version_version")]


class Webhook(TimestampedModel):
    """A webhook endpoint ``POST /hooks/{token}`` that triggers one workflow.

    ``sealed_secrets`` is the ciphertext (``kernel.secretbox``, ``SHIFTFLOW_SECRET_KEYS``) of
    the list of signing secrets accepted at once (rotation), never the secrets themselves:
    ``models.tables.webhook_secrets`` seals and opens it, ``key_id`` names the key that sealed
    it (migration 0008 sealed the lists stored in clear before). ``scheme`` is
    ``standard`` (Standard Webhooks), ``stripe`` or ``github``.
    """

    workflow_id: Any

    workflow = peewee.ForeignKeyField(Workflow, backref="webhooks", on_delete="CASCADE")
    token = peewee.CharField(max_length=64, unique=True)
    scheme = peewee.CharField(max_length=12, default="standard")
    sealed_secrets = peewee.TextField(help_text="Ciphertext of the signing secrets; never plaintext.")
    key_id = peewee.CharField(max_length=64, null=True)
    is_active = peewee.BooleanField(default=True)
    total_calls = peewee.IntegerField(default=0)
    last_called_at = peewee.DateTimeField(null=True)
