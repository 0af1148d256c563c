"""Per-workflow totals. Not Prometheus: these are business numbers
a user sees, kept in PostgreSQL; process metrics are exported by ``shiftflow.kernel.metrics``."""

from __future__ import annotations

import peewee

from shiftflow.models.tables.base import BaseModel, utcnow
from shiftflow.models.tables.tenancy import Workspace
from shiftflow.models.tables.workflows import Workflow


class WorkflowMetrics(BaseModel):
    """Totals of finished executions of one workflow, updated when an execution finishes.

    Averages are derived (``total_duration_ms / completed_executions``), so concurrent
    updates are plain increments and never drift. Money totals are NUMERIC, not float.
    ``Workflow.execution_count`` is a different number: executions admitted so far,
    checked against ``max_executions``.
    """

    workspace = peewee.ForeignKeyField(Workspace, backref="workflow_metrics", on_delete="CASCADE")
    workflow = peewee.ForeignKeyField(Workflow, backref="metrics", on_delete="CASCADE", unique=True)
    completed_executions = peewee.IntegerField(default=0)
    successful_executions = peewee.IntegerField(default=0)
    failed_executions = peewee.IntegerField(default=0)
    total_duration_ms = peewee.BigIntegerField(default=0)
    last_duration_ms = peewee.IntegerField(null=True)
    total_volume_usd = peewee.DecimalField(max_digits=20, decimal_places=6, default=0)
    total_fees_usd = peewee.DecimalField(max_digits=20, decimal_places=6, default=0)
    updated_at = peewee.DateTimeField(default=utcnow, index=True)

    class Meta:
        constraints = [
            peewee.Check(
                "completed_executions >= 0 AND successful_executions >= 0 AND failed_executions >= 0"
                " AND successful_executions + failed_executions <= completed_executions",
                name="chk_workflow_metrics_counts",
            ),
            peewee.Check(
                "total_duration_ms >= 0 AND total_volume_usd >= 0 AND total_fees_usd >= 0",
                name="chk_workflow_metrics_totals",
            ),
        ]

    @property
    def avg_duration_ms(self) -> float | None:
        """Mean duration of finished executions, or None before the first one."""
        if not self.completed_executions:
            return None
        return float(self.total_duration_ms) / float(self.completed_executions)
