"""Read side of the management API and CLI: executions, workflows, the audit log, templates.

Every query is scoped by the caller's workspace (``Principal.workspace_id``; only the
CLI operator reads across workspaces): an object of another workspace is simply not
found, so the API answers 404 and never tells "exists, not yours" from "does not exist".
Lists are keyset pages (``models.manage.paging``).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import uuid
from typing import Any

from shiftflow.kernel.db import is_postgres
from shiftflow.kernel.errors import NotFound
from shiftflow.models.engine.runs import progress_of
from shiftflow.models.manage.access import Principal
from shiftflow.models.manage.audit import entry_dict
from shiftflow.models.manage.paging import Page, choice, keyset, parse_limit, scoped, window
from shiftflow.models.manage.plain import id_condition, parse_id, stamp
from shiftflow.models.manage.problems import InvalidInput
from shiftflow.models.tables.audit_log import AuditLog
from shiftflow.models.tables.base import fk
from shiftflow.models.tables.executions import Execution, StepExecution
from shiftflow.models.tables.templates import WorkflowTemplate
from shiftflow.models.tables.workflows import Workflow, WorkflowVersion

EXECUTION_STATUSES = ("PENDING", "RUNNING", "PAUSED", "SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT")
WORKFLOW_STATUSES = ("DRAFT", "ACTIVE", "PAUSED", "ARCHIVED", "COMPLETED", "FAILED")
STEP_STATUSES = (
    "PENDING", "QUEUED", "RUNNING", "WAITING", "SUCCEEDED", "SKIPPED", "FAILED", "CANCELLED", "TIMED_OUT"
)


# --------------------------------------------------------------------------- executions


def execution_dict(row: Execution) -> dict[str, Any]:
    """An execution's summary as plain data."""
    return {
        "id": str(row.id),
        "workflow_id": str(row.workflow_id),
        "workflow_version": row.workflow_version,
        "status": row.status,
        "source": row.source,
        "dedup_key": row.dedup_key,
        "priority": row.priority,
        "parent_id": str(row.parent_id) if row.parent_id else None,
        "error": row.error,
        "progress": progress_of(row),
        "created_at": stamp(row.created_at),
        "started_at": stamp(row.started_at),
        "completed_at": stamp(row.completed_at),
        "duration_ms": row.duration_ms,
    }


def step_dict(row: StepExecution) -> dict[str, Any]:
    """One row of an execution's step timeline."""
    return {
        "step_id": row.step_id,
        "iteration": row.iteration,
        "type": row.step_type,
        "status": row.status,
        "attempts": row.attempts,
        "retry_count": row.retry_count,
        "input": row.input,
        "output": row.output,
        "error": row.error,
        "created_at": stamp(row.created_at),
        "started_at": stamp(row.started_at),
        "completed_at": stamp(row.completed_at),
        "duration_ms": row.duration_ms,
    }


def get_execution(actor: Principal, execution_id: Any) -> Execution:
    """One execution of the caller's workspace.

    ``execution_id`` may be the first hex digits of an id (the CLI's short form).

    Raises:
        NotFound: no such execution in the workspace.
        InvalidInput: not an id or a prefix of one, or a prefix of several.
    """
    actor.require("executions:read")
    condition = id_condition(Execution.id, execution_id, "execution", postgres=is_postgres())
    rows = list(scoped(Execution.select().where(condition), Execution.workspace, actor).limit(2))
    if not rows:
        raise NotFound(f"execution {str(execution_id)[:60]} does not exist")
    if len(rows) > 1:
        raise InvalidInput("execution", f"{str(execution_id)[:60]!r} is the start of several ids: give more of it")
    return rows[0]


def list_executions(
    actor: Principal,
    *,
    status: Any = None,
    workflow_id: Any = None,
    key: Any = None,
    since: Any = None,
    until: Any = None,
    limit: Any = None,
    cursor: str | None = None,
) -> Page:
    """Executions of the caller's workspace, newest first, filtered and paged.

    Parameters:
        status: one of ``EXECUTION_STATUSES``.
        workflow_id: only this workflow's executions.
        key: only the execution with this dedup key (e.g. the ``execution_key`` of a trigger).
        since, until: ``created_at`` window, ISO timestamps (``since`` inclusive).
        limit: page size (default 50, at most 200).
        cursor: ``next_cursor`` of the previous page.

    Raises:
        InvalidInput: a malformed filter (the message names it).
    """
    actor.require("executions:read")
    query = scoped(Execution.select(), Execution.workspace, actor)
    if status not in (None, ""):
        query = query.where(Execution.status == choice(status, "status", EXECUTION_STATUSES))
    if workflow_id not in (None, ""):
        try:
            query = query.where(Execution.workflow == uuid.UUID(str(workflow_id)))
        except ValueError:
            raise InvalidInput("workflow_id", f"{workflow_id!r} is not a workflow id") from None
    if key not in (None, ""):
        query = query.where(Execution.dedup_key == str(key))
    query = window(query, Execution.created_at, since, until)
    rows, nxt = keyset(query, Execution, parse_limit(limit), cursor)
    return Page([execution_dict(r) for r in rows], nxt)


def execution_detail(actor: Principal, execution_id: Any) -> dict[str, Any]:
    """An execution of the caller's workspace with its trigger data, result, step timeline
    and child executions (``detail_dict``)."""
    return detail_dict(get_execution(actor, execution_id))


def detail_dict(row: Execution) -> dict[str, Any]:
    """An execution with its trigger data, result, step timeline and child executions, as
    plain data: what the API and ``shiftflow executions show`` print."""
    steps = (
        StepExecution.select()
        .where(StepExecution.execution == row.id)
        .order_by(StepExecution.created_at, StepExecution.step_id, StepExecution.iteration)
    )
    children = Execution.select(Execution.id).where(Execution.parent == row.id).order_by(Execution.created_at)
    return {
        **execution_dict(row),
        "trigger": row.trigger_data,
        "result": row.result,
        "steps": [step_dict(s) for s in steps],
        "children": [str(c.id) for c in children],
    }


def execution_logs(
    actor: Principal, execution_id: Any, mongo_db: Any, limit: Any = None, cursor: str | None = None
) -> Page:
    """One page of an execution's log documents from MongoDB, oldest first.

    Pages are keyed on ``(timestamp, _id)``: the cursor is the last document's pair, and
    documents written while a client pages (a running execution) come after it, so the
    client reads to the last line (the outcome) by following ``next_cursor`` until it is
    null, without gaps or repeats.

    Parameters:
        mongo_db: a pymongo database holding ``execution_logs`` (or None: no log store).
        limit: page size, 1-200 (default 50).
        cursor: the ``next_cursor`` of the previous page.

    Raises:
        NotFound: no such execution in the workspace.
        InvalidInput: a malformed limit or cursor.
        pymongo.errors.PyMongoError: MongoDB could not be read.
    """
    from shiftflow.kernel.mongo import EXECUTION_LOGS

    row = get_execution(actor, execution_id)
    size = parse_limit(limit)
    if mongo_db is None:
        return Page([], None)
    query: dict[str, Any] = {"executionId": str(row.id), "workspaceId": str(row.workspace_id)}
    if cursor:
        at, last_id = _decode_log_cursor(cursor)
        query["$or"] = [{"timestamp": {"$gt": at}}, {"timestamp": at, "_id": {"$gt": last_id}}]
    docs = list(
        mongo_db[EXECUTION_LOGS].find(query).sort([("timestamp", 1), ("_id", 1)]).limit(size + 1)
    )
    more = len(docs) > size
    docs = docs[:size]
    nxt = _encode_log_cursor(docs[-1]) if more else None
    items = [
        {
            "timestamp": stamp(d.get("timestamp")),
            "level": d.get("level"),
            "message": d.get("message"),
            "step_id": d.get("stepId"),
            "metadata": d.get("metadata") or {},
        }
        for d in docs
    ]
    return Page(items, nxt)


def _encode_log_cursor(doc: dict[str, Any]) -> str:
    at = doc.get("timestamp")
    text = at.isoformat(timespec="milliseconds") if at is not None else ""
    raw = json.dumps([text, str(doc["_id"])]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_log_cursor(cursor: str) -> tuple[Any, Any]:
    from bson import ObjectId
    from bson.errors import InvalidId

    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at_text, last_id = json.loads(raw)
        at = dt.datetime.fromisoformat(at_text).replace(tzinfo=None) if at_text else None
        return at, ObjectId(last_id)
    except (ValueError, TypeError, InvalidId, binascii.Error, UnicodeDecodeError):
        raise InvalidInput("cursor", "malformed cursor: pass the next_cursor of a previous page") from None


# --------------------------------------------------------------------------- workflows


def workflow_dict(row: Workflow) -> dict[str, Any]:
    """A workflow as plain data."""
    return {
        "id": str(row.id),
        "name": row.name,
        "description": row.description,
        "status": row.status,
        # Stored upper-case (docs/seed-mapping.md); definitions and the API say ``manual``.
        "trigger_type": row.trigger_type.lower(),
        "current_version": row.current_version,
        "max_executions": row.max_executions,
        "execution_count": row.execution_count,
        "template_id": str(fk(row, "template")) if fk(row, "template") else None,
        "created_at": stamp(row.created_at),
        "updated_at": stamp(row.updated_at),
    }


def get_workflow(actor: Principal, workflow_id: Any, *, lock: bool = False) -> Workflow:
    """One workflow of the caller's workspace (row-locked with ``lock`` on PostgreSQL).

    Raises:
        NotFound: no such workflow in the workspace.
    """
    actor.require("workflows:read")
    wid = parse_id(workflow_id, "workflow")
    query = scoped(Workflow.select().where(Workflow.id == wid), Workflow.workspace, actor)
    if lock and is_postgres():
        query = query.for_update()
    row = query.get_or_none()
    if row is None:
        raise NotFound(f"workflow {wid} does not exist")
    return row


def find_workflow(actor: Principal, ref: str) -> Workflow:
    """A workflow of the caller's workspace by id or by name (the CLI's ``WORKFLOW``).

    Raises:
        NotFound: none matches.
    """
    try:
        return get_workflow(actor, uuid.UUID(ref))
    except ValueError:
        pass
    row = scoped(Workflow.select().where(Workflow.name == ref), Workflow.workspace, actor).first()
    if row is None:
        raise NotFound(f"workflow {ref!r} does not exist")
    return row


def list_workflows(
    actor: Principal, *, status: Any = None, limit: Any = None, cursor: str | None = None
) -> Page:
    """Workflows of the caller's workspace, newest first."""
    actor.require("workflows:read")
    query = scoped(Workflow.select(), Workflow.workspace, actor)
    if status not in (None, ""):
        query = query.where(Workflow.status == choice(status, "status", WORKFLOW_STATUSES))
    rows, nxt = keyset(query, Workflow, parse_limit(limit), cursor)
    return Page([workflow_dict(r) for r in rows], nxt)


def version_dict(row: WorkflowVersion, *, definition: bool = True) -> dict[str, Any]:
    """One immutable version of a workflow."""
    out = {
        "version": row.version,
        "created_at": stamp(row.created_at),
        "change_description": row.change_description,
    }
    if definition:
        out["definition"] = row.definition
    return out


def list_versions(actor: Principal, workflow_id: Any) -> list[dict[str, Any]]:
    """Every version of a workflow, newest first, without their definitions."""
    workflow = get_workflow(actor, workflow_id)
    rows = (
        WorkflowVersion.select()
        .where(WorkflowVersion.workflow == workflow.id)
        .order_by(WorkflowVersion.version.desc())
    )
    return [version_dict(r, definition=False) for r in rows]


def get_version(actor: Principal, workflow_id: Any, version: Any) -> dict[str, Any]:
    """One version of a workflow with its definition.

    Raises:
        NotFound: no such workflow or version.
    """
    workflow = get_workflow(actor, workflow_id)
    try:
        number = int(str(version))
    except ValueError:
        raise NotFound(f"workflow {workflow.id} has no version {str(version)[:20]!r}") from None
    row = (
        WorkflowVersion.get_or_none(workflow=workflow.id, version=number)
        if -(2**31) <= number < 2**31
        else None
    )
    if row is None:
        raise NotFound(f"workflow {workflow.id} has no version {number}")
    return version_dict(row)


# --------------------------------------------------------------------------- audit, templates


def list_audit(
    actor: Principal,
    *,
    action: Any = None,
    entity_type: Any = None,
    entity_id: Any = None,
    since: Any = None,
    until: Any = None,
    limit: Any = None,
    cursor: str | None = None,
) -> Page:
    """Audit-log entries of the caller's workspace, newest first."""
    actor.require("audit:read")
    query = scoped(AuditLog.select(), AuditLog.workspace_id, actor)
    for field, value in (
        (AuditLog.action, action),
        (AuditLog.entity_type, entity_type),
        (AuditLog.entity_id, entity_id),
    ):
        if value not in (None, ""):
            query = query.where(field == str(value))
    query = window(query, AuditLog.created_at, since, until)
    rows, nxt = keyset(query, AuditLog, parse_limit(limit), cursor)
    return Page([entry_dict(r) for r in rows], nxt)


def template_dict(row: WorkflowTemplate) -> dict[str, Any]:
    """A catalogue template as plain data."""
    return {
        "id": str(row.id),
        "key": row.key,
        "name": row.name,
        "description": row.description,
        "category": row.category,
        # Stored upper-case (docs/seed-mapping.md); definitions and the API say ``manual``.
        "trigger_type": row.trigger_type.lower(),
        "tags": list(row.tags or []),
        "required_integrations": list(row.required_integrations or []),
        "is_popular": row.is_popular,
        "usage_count": row.usage_count,
        "definition": row.definition,
    }


def list_templates(actor: Principal, *, category: Any = None) -> list[dict[str, Any]]:
    """The template catalogue (global, not tenant data), popular first."""
    actor.require("templates:read")
    query = WorkflowTemplate.select().order_by(WorkflowTemplate.is_popular.desc(), WorkflowTemplate.key)
    if category not in (None, ""):
        query = query.where(WorkflowTemplate.category == str(category))
    return [template_dict(r) for r in query]
