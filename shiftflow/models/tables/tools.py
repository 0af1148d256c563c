"""Tools: the catalogue of callable operations and the record of each call.

One catalogue serves the tool registry and the integrations' actions: both are "an
operation with a name and a JSON Schema for its input". An action is a tool whose
``integration`` is set.
"""

from __future__ import annotations

import peewee

from shiftflow.kernel.db import JSONField
from shiftflow.models.tables.base import BaseModel, TimestampedModel, utcnow
from shiftflow.models.tables.executions import Execution, StepExecution
from shiftflow.models.tables.integrations import Integration
from shiftflow.models.tables.tenancy import Workspace


class Tool(TimestampedModel):
    """A callable operation (``search_google``, ``gmail.send_email``, ``take_screenshot``).

    ``parameters_schema`` (JSON Schema) validates a call's input before it is queued;
    ``queue`` names the queue whose pool runs it (``tools``, ``tools.browser``,
    ``tools.media``, ``tools.email``: one queue per kind). Global catalogue.
    """

    name = peewee.CharField(max_length=150, unique=True)
    display_name = peewee.CharField(max_length=200)
    description = peewee.TextField(default="")
    # Categories (BROWSER, API, FILE, EMAIL, SOCIAL, TRAVEL, JOB, GENERAL); not a
    # CHECK, so adding a category is a code change, not a migration.
    category = peewee.CharField(max_length=20, default="GENERAL")
    integration = peewee.ForeignKeyField(Integration, null=True, backref="tools", on_delete="SET NULL")
    parameters_schema = JSONField(default=dict)
    output_schema = JSONField(null=True)
    queue = peewee.CharField(max_length=30, default="tools")
    timeout_seconds = peewee.IntegerField(null=True)
    enabled = peewee.BooleanField(default=True)
    usage_count = peewee.IntegerField(default=0)

    class Meta:
        indexes = ((("category", "enabled"), False),)
        constraints = [
            peewee.Check("timeout_seconds IS NULL OR timeout_seconds > 0", name="chk_tool_timeout"),
            peewee.Check("usage_count >= 0", name="chk_tool_usage"),
        ]


class ToolExecution(BaseModel):
    """One attempt of one tool call.

    Inside a workflow a call belongs to a step; ``execution``/``step_execution`` stay
    NULL for a call made outside one (a "test this tool" button). One row per attempt, so
    a retried call keeps the record of the failed one. ``input`` holds what was sent
    after the caller removed secrets: credentials travel as a connection id, not here.
    """

    workspace = peewee.ForeignKeyField(Workspace, backref="tool_executions", on_delete="CASCADE", index=False)
    tool = peewee.ForeignKeyField(Tool, backref="executions", index=False)
    execution = peewee.ForeignKeyField(Execution, null=True, backref="tool_executions", on_delete="CASCADE")
    step_execution = peewee.ForeignKeyField(
        StepExecution, null=True, backref="tool_executions", on_delete="CASCADE", index=False
    )
    attempt = peewee.IntegerField(default=1)
    queue = peewee.CharField(max_length=30, null=True)
    status = peewee.CharField(max_length=10, default="PENDING")
    input = JSONField(default=dict)
    output = JSONField(null=True)
    error = peewee.TextField(null=True)
    duration_ms = peewee.IntegerField(null=True)
    created_at = peewee.DateTimeField(default=utcnow)
    started_at = peewee.DateTimeField(null=True)
    completed_at = peewee.DateTimeField(null=True)

    class Meta:
        indexes = (
            (("step_execution", "attempt"), True),
            (("tool", "created_at"), False),
            (("workspace", "created_at"), False),
            (("status", "created_at"), False),
        )
        constraints = [
            peewee.Check(
                "status IN ('PENDING', 'RUNNING', 'SUCCEEDED', 'FAILED')", name="chk_tool_execution_status"
            ),
            peewee.Check("attempt >= 1", name="chk_tool_execution_attempt"),
            peewee.Check("duration_ms IS NULL OR duration_ms >= 0", name="chk_tool_execution_duration"),
        ]


class WorkspaceTool(BaseModel):
    """A workspace's choice about one tool of the registry: enabled or not.

    Tools come from the code (``kernel.tools.registry``), so this row holds only the
    choice, keyed by the tool's name; no row means enabled. ``PUT /tools/{name}`` writes
    it; a tool step of a disabled tool is refused.
    """

    workspace = peewee.ForeignKeyField(Workspace, backref="tool_settings", on_delete="CASCADE", index=False)
    tool_name = peewee.CharField(max_length=150)
    enabled = peewee.BooleanField(default=True)
    updated_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("workspace", "tool_name"), True),)

    @classmethod
    def disabled(cls, workspace_id: object, tool_name: str) -> bool:
        """True when the workspace has disabled the tool ``tool_name``."""
        row = cls.get_or_none((cls.workspace == workspace_id) & (cls.tool_name == tool_name))
        return row is not None and not row.enabled
