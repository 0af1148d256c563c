"""Tool executions and queue jobs as a workspace sees them (the API and the CLI read these).

The engine writes one ``tool_execution`` row per attempt of a tool call and one
``queue_job`` row per broker message of a tool step (``models.engine.tool_calls``). Here
they are read back, scoped to the caller's workspace (another workspace's row is a 404),
with everything secret taken out once more on the way out, whatever the writer kept:

* keys that look secret (``password``, ``token``, ``authorization`` ...) are ``***``;
* parameters the tool's schema marks ``"x-secret": true`` are ``***``;
* every secret value of the step's connection (its credentials, decrypted here only to
  know what to hide) is replaced by ``***`` wherever it appears: in the input, the
  output and the error, including the percent- and JSON-encoded forms an echo takes.

The writer already masks the input and scrubs ``{{ secrets.* }}`` values; a service may
still echo a credential in its answer, so the reader does not rely on it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import peewee

from shiftflow.kernel.errors import NotFound, ShiftFlowError
from shiftflow.kernel.integrations.catalogue import default_catalogue
from shiftflow.kernel.integrations.secrets import SECRET, secret_values
from shiftflow.kernel.redaction import MASK, scrubber
from shiftflow.kernel.secretbox import DecryptionError, vault_for
from shiftflow.kernel.settings import Settings, get_settings
from shiftflow.models.engine.mongo_log import redact
from shiftflow.models.manage.access import Principal
from shiftflow.models.manage.paging import Page, choice, keyset, parse_limit, scoped
from shiftflow.models.manage.plain import parse_id, stamp
from shiftflow.models.manage.queries import get_execution
from shiftflow.models.tables.base import fk
from shiftflow.models.tables.executions import Execution, StepExecution
from shiftflow.models.tables.integrations import Connection
from shiftflow.models.tables.queue_jobs import QueueJob
from shiftflow.models.tables.tools import Tool as ToolRow
from shiftflow.models.tables.tools import ToolExecution
from shiftflow.models.tables.workflows import WorkflowVersion

#: The permission every reader here needs (tool calls are part of an execution's story).
PERMISSION = "executions:read"

TOOL_EXECUTION_STATUSES = ("PENDING", "RUNNING", "SUCCEEDED", "FAILED")
QUEUE_JOB_STATUSES = ("QUEUED", "RUNNING", "RETRYING", "SUCCEEDED", "FAILED", "DEAD")

Mask = Callable[[Any], Any]


def hide_marked(value: Any, schema: Mapping[str, Any] | None) -> Any:
    """``value`` with every field ``schema`` marks secret (``x-secret``, or ``writeOnly``)
    replaced by ``***`` (nested objects and array items walked)."""
    if not isinstance(schema, Mapping):
        return value
    if schema.get(SECRET) or schema.get("writeOnly"):
        return MASK if value not in (None, "") else value
    if isinstance(value, Mapping):
        known = schema.get("properties") or {}
        return {k: hide_marked(v, known.get(k)) for k, v in value.items()}
    if isinstance(value, list):
        items = schema.get("items")
        return [hide_marked(v, items if isinstance(items, Mapping) else None) for v in value]
    return value


class _Context:
    """What masking one execution's rows needs, looked up once per execution: the
    connection each step names (from the pinned definition) and its secret values."""

    def __init__(self, settings: Settings | None) -> None:
        self.settings = settings
        self._steps: dict[Any, dict[str, str | None]] = {}
        self._scrub: dict[tuple[Any, str], Mask] = {}
        self._tools: dict[Any, ToolRow] = {}

    def connection_name(self, execution_id: Any, step_id: str | None) -> str | None:
        """The ``connection`` the step ``step_id`` names in the execution's pinned definition."""
        if execution_id is None or not step_id:
            return None
        if execution_id not in self._steps:
            version = (WorkflowVersion.select(WorkflowVersion.definition)
                       .join(Execution, on=((Execution.workflow == WorkflowVersion.workflow)
                                            & (Execution.workflow_version == WorkflowVersion.version)))
                       .where(Execution.id == execution_id).first())
            steps = (version.definition or {}).get("steps", []) if version is not None else []
            self._steps[execution_id] = {str(s.get("id")): s.get("connection") for s in steps if isinstance(s, dict)}
        return self._steps[execution_id].get(step_id)

    def scrub(self, workspace_id: Any, name: str | None) -> Mask:
        """A function hiding the secret values of the workspace's connection ``name``."""
        if not name:
            return lambda value: value
        key = (workspace_id, name)
        if key not in self._scrub:
            self._scrub[key] = scrubber(self._secret_values(workspace_id, name))
        return self._scrub[key]

    def _secret_values(self, workspace_id: Any, name: str) -> list[str]:
        row = Connection.get_or_none((Connection.workspace == workspace_id) & (Connection.name == name))
        if row is None:
            return []
        try:
            credentials = vault_for((self.settings or get_settings()).secret_keys).decrypt(row.credentials)
        except (DecryptionError, ShiftFlowError):
            return []  # unreadable here (a key not configured): the writer's masking stands alone
        catalogue = default_catalogue()
        key = row.integration.key
        schema = catalogue.get(key).credentials_schema if key in catalogue else None
        return secret_values(credentials, schema)

    def tool(self, tool_id: Any) -> ToolRow:
        """The catalogue row of a tool (read once per reader call)."""
        if tool_id not in self._tools:
            self._tools[tool_id] = ToolRow.get_by_id(tool_id)
        return self._tools[tool_id]


def _masker(ctx: _Context, workspace_id: Any, connection: str | None, schema: Mapping[str, Any] | None) -> Mask:
    scrub = ctx.scrub(workspace_id, connection)
    return lambda value: None if value is None else scrub(redact(hide_marked(value, schema)))


def tool_execution_dict(row: ToolExecution, *, settings: Settings | None = None,
                        ctx: _Context | None = None) -> dict[str, Any]:
    """A tool execution as the API and the CLI show it (secrets masked, see the module)."""
    ctx = ctx or _Context(settings)
    tool = ctx.tool(fk(row, "tool"))
    step: StepExecution | None = row.step_execution if fk(row, "step_execution") else None
    step_id = step.step_id if step is not None else None
    connection = ctx.connection_name(fk(row, "execution"), step_id)
    mask = _masker(ctx, fk(row, "workspace"), connection, tool.parameters_schema or {})
    return {
        "id": str(row.id),
        "execution_id": str(fk(row, "execution")) if fk(row, "execution") else None,
        "step_execution_id": str(fk(row, "step_execution")) if fk(row, "step_execution") else None,
        "step_id": step_id,
        "iteration": step.iteration if step is not None else None,
        "tool": tool.name,
        "connection": connection,
        "queue": row.queue,
        "attempt": row.attempt,
        "status": row.status,
        "input": mask(row.input if row.input is not None else {}),
        "output": mask(row.output),
        "error": mask(row.error),
        "duration_ms": row.duration_ms,
        "created_at": stamp(row.created_at),
        "started_at": stamp(row.started_at),
        "completed_at": stamp(row.completed_at),
    }


def list_tool_executions(actor: Principal, execution_id: Any, *,
                         settings: Settings | None = None) -> list[dict[str, Any]]:
    """Every tool call of one execution of the caller's workspace, oldest first (each
    attempt is its own row).

    Raises:
        NotFound: no such execution in the workspace.
    """
    execution = get_execution(actor, execution_id)
    rows = (ToolExecution.select(ToolExecution, StepExecution)
            .join(StepExecution, peewee.JOIN.LEFT_OUTER, on=(ToolExecution.step_execution == StepExecution.id))
            .where(ToolExecution.execution == execution.id)
            .order_by(ToolExecution.created_at, ToolExecution.id))
    ctx = _Context(settings)
    return [tool_execution_dict(r, ctx=ctx) for r in rows]


def get_tool_execution(actor: Principal, tool_execution_id: Any, *,
                       settings: Settings | None = None) -> dict[str, Any]:
    """One tool execution of the caller's workspace.

    Raises:
        NotFound: no such tool execution in the workspace.
    """
    actor.require(PERMISSION)
    tid = parse_id(tool_execution_id, "tool execution")
    row = scoped(ToolExecution.select().where(ToolExecution.id == tid), ToolExecution.workspace, actor).first()
    if row is None:
        raise NotFound(f"tool execution {tid} does not exist")
    return tool_execution_dict(row, settings=settings)


def _job_tool_executions(job: QueueJob) -> list[ToolExecution]:
    """The tool executions one job's deliveries made: its step's, written while it ran."""
    data = job.data or {}
    if not fk(job, "execution") or "step_id" not in data:
        return []
    query = (ToolExecution.select().join(StepExecution, on=(ToolExecution.step_execution == StepExecution.id))
             .where((ToolExecution.execution == fk(job, "execution")) & (StepExecution.step_id == data["step_id"])
                    & (StepExecution.iteration == data.get("iteration", 0))
                    & (ToolExecution.created_at >= job.created_at)))
    end = job.completed_at or job.failed_at
    if end is not None and job.status != "RETRYING":
        query = query.where(ToolExecution.created_at <= end)
    return list(query.order_by(ToolExecution.created_at, ToolExecution.id))


def queue_job_dict(row: QueueJob, *, settings: Settings | None = None, ctx: _Context | None = None,
                   detail: bool = False) -> dict[str, Any]:
    """A queue job as the API and the CLI show it; ``detail`` adds the ids of the tool
    executions its deliveries made."""
    ctx = ctx or _Context(settings)
    data = row.data or {}
    connection = ctx.connection_name(fk(row, "execution"), data.get("step_id"))
    scrub = ctx.scrub(fk(row, "workspace"), connection)
    out: dict[str, Any] = {
        "id": str(row.id),
        "message_id": row.message_id,
        "queue": row.queue,
        "actor": row.actor,
        "status": row.status,
        "progress": row.progress,
        "attempts": row.attempts,
        "max_attempts": row.max_attempts,
        "error": scrub(row.error) if row.error is not None else None,
        "execution_id": str(fk(row, "execution")) if fk(row, "execution") else None,
        "step_id": data.get("step_id"),
        "iteration": data.get("iteration"),
        "tool": data.get("tool"),
        "created_at": stamp(row.created_at),
        "started_at": stamp(row.started_at),
        "completed_at": stamp(row.completed_at),
        "failed_at": stamp(row.failed_at),
    }
    if detail:
        calls = _job_tool_executions(row)
        ids = [str(c.id) for c in calls]
        out["tool_execution_ids"], out["tool_execution_id"] = ids, (ids[-1] if ids else None)
    return out


def list_queue_jobs(actor: Principal, *, queue: Any = None, status: Any = None, limit: Any = None,
                    cursor: str | None = None, settings: Settings | None = None) -> Page:
    """Queue jobs of the caller's workspace, newest first, filtered and keyset-paged
    (system jobs, which belong to no workspace, only for the operator).

    Raises:
        InvalidInput: a malformed filter (the message names it).
    """
    actor.require(PERMISSION)
    query = scoped(QueueJob.select(), QueueJob.workspace, actor)
    if queue not in (None, ""):
        query = query.where(QueueJob.queue == str(queue))
    if status not in (None, ""):
        query = query.where(QueueJob.status == choice(status, "status", QUEUE_JOB_STATUSES))
    rows, nxt = keyset(query, QueueJob, parse_limit(limit), cursor)
    ctx = _Context(settings)
    return Page([queue_job_dict(r, ctx=ctx) for r in rows], nxt)


def get_queue_job(actor: Principal, job_id: Any, *, settings: Settings | None = None) -> dict[str, Any]:
    """One queue job of the caller's workspace, with the tool executions it made.

    Raises:
        NotFound: no such job in the workspace.
    """
    actor.require(PERMISSION)
    jid = parse_id(job_id, "queue job")
    row = scoped(QueueJob.select().where(QueueJob.id == jid), QueueJob.workspace, actor).first()
    if row is None:
        raise NotFound(f"queue job {jid} does not exist")
    return queue_job_dict(row, settings=settings, detail=True)
