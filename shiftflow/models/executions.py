"""Executions and step executions: the state machine, made safe to run twice by unique keys.

(workflow, dedup_key) makes an execution unique per delivery; (execution, step_id,
iteration) makes a step unique, so a redelivered message finds its row and skips work
that already succeeded.
"""

from __future__ import annotations

import peewee

from shiftflow.kernel.db import JSONField
from shiftflow.models.base import BaseModel, utcnow
from shiftflow.models.tenancy import Workspace
from shiftflow.models.workflows import Workflow


class Execution(BaseModel):
    """One run of one workflow version.

    ``status``: PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED, TIMED_OUT.
    The multi-phase fields of seed 001 (``phase``, ``progress``, ``phases``,
    ``checkpoints``, ``parent`` for the retry chain) live here too.
    """

    workflow = peewee.ForeignKeyField(Workflow, backref="executions", on_delete="CASCADE")
    workflow_version = peewee.IntegerField()
    workspace = peewee.ForeignKeyField(Workspace, backref="executions", on_delete="CASCADE")
    dedup_key = peewee.CharField(max_length=255)
    source = peewee.CharField(max_length=20, default="manual")
    status = peewee.CharField(max_length=12, default="PENDING")
    priority = peewee.CharField(max_length=10, default="NORMAL")
    trigger_data = JSONField(default=dict)
    context = JSONField(default=dict)
    result = JSONField(null=True)
    error = peewee.TextField(null=True)
    # Multi-phase executions (seed 001).
    phase = peewee.CharField(max_length=20, null=True)
    progress = peewee.IntegerField(default=0)
    phases = JSONField(null=True)
    checkpoints = JSONField(null=True)
    retry_count = peewee.IntegerField(default=0)
    max_retries = peewee.IntegerField(default=3)
    retry_reason = peewee.TextField(null=True)
    parent = peewee.ForeignKeyField("self", null=True, backref="children", on_delete="SET NULL")
    received_at = peewee.DateTimeField(null=True)
    created_at = peewee.DateTimeField(default=utcnow)
    started_at = peewee.DateTimeField(null=True)
    completed_at = peewee.DateTimeField(null=True)
    duration_ms = peewee.IntegerField(null=True)

    class Meta:
        indexes = (
            (("workflow", "dedup_key"), True),
            (("workflow", "created_at"), False),
            (("workspace", "created_at"), False),
            (("status", "created_at"), False),
        )


class StepExecution(BaseModel):
    """One step of one execution (one iteration of a ``for_each``).

    ``status``: PENDING, RUNNING, SUCCEEDED, FAILED, SKIPPED, CANCELLED.
    ``attempts`` counts deliveries and is incremented before work starts, so a message
    that kills its process is quarantined after the delivery limit.
    """

    execution = peewee.ForeignKeyField(Execution, backref="steps", on_delete="CASCADE")
    step_id = peewee.CharField(max_length=100)
    iteration = peewee.IntegerField(default=0)
    step_type = peewee.CharField(max_length=30)
    status = peewee.CharField(max_length=12, default="PENDING")
    input = JSONField(null=True)
    output = JSONField(null=True)
    error = peewee.TextField(null=True)
    attempts = peewee.IntegerField(default=0)
    retry_count = peewee.IntegerField(default=0)
    created_at = peewee.DateTimeField(default=utcnow)
    started_at = peewee.DateTimeField(null=True)
    completed_at = peewee.DateTimeField(null=True)
    duration_ms = peewee.IntegerField(null=True)

    class Meta:
        indexes = (
            (("execution", "step_id", "iteration"), True),
            (("status", "created_at"), False),
        )
