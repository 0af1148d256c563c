"""Queue jobs: what happened to one broker message, for people."""

from __future__ import annotations

import peewee

from shiftflow.kernel.db import JSONField
from shiftflow.models.tables.base import BaseModel, utcnow
from shiftflow.models.tables.executions import Execution
from shiftflow.models.tables.tenancy import Workspace


class QueueJob(BaseModel):
    """One Dramatiq message as a job a user can watch.

    ``message_id`` is the Dramatiq message id, so a redelivery
    updates the same row. Optional bookkeeping written by the job-tracking middleware;
    the execution's truth stays in ``Execution``/``StepExecution``, and the delivery
    counter that quarantines poison messages is ``StepExecution.attempts``.
    ``workspace`` is NULL for system jobs (price refreshes, reconcilers).
    """

    workspace = peewee.ForeignKeyField(Workspace, null=True, backref="queue_jobs", on_delete="CASCADE")
    message_id = peewee.CharField(max_length=64, unique=True)
    queue = peewee.CharField(max_length=50)
    actor = peewee.CharField(max_length=100)
    execution = peewee.ForeignKeyField(Execution, null=True, backref="queue_jobs", on_delete="CASCADE")
    data = JSONField(default=dict)
    status = peewee.CharField(max_length=10, default="QUEUED")
    progress = peewee.IntegerField(default=0)
    attempts = peewee.IntegerField(default=0)
    max_attempts = peewee.IntegerField(default=1)
    error = peewee.TextField(null=True)
    result = JSONField(null=True)
    created_at = peewee.DateTimeField(default=utcnow)
    started_at = peewee.DateTimeField(null=True)
    completed_at = peewee.DateTimeField(null=True)
    failed_at = peewee.DateTimeField(null=True)

    class Meta:
        indexes = (
            (("queue", "status"), False),
            (("status", "created_at"), False),
        )
        constraints = [
            peewee.Check(
                "status IN ('QUEUED', 'RUNNING', 'RETRYING', 'SUCCEEDED', 'FAILED', 'DEAD')",
                name="chk_queue_job_status",
            ),
            peewee.Check("progress BETWEEN 0 AND 100", name="chk_queue_job_progress"),
            peewee.Check("attempts >= 0 AND max_attempts >= 0", name="chk_queue_job_attempts"),
        ]
