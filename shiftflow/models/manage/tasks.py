"""Agent tasks: create, approve, pause, resume, cancel, and read a task's whole story.

A task is an execution of the workspace's task workflow (``kernel.agent_plan``): its
trigger data holds the intent, the LLM connection, the model and whether a person must
approve the plan; its first step (``plan``, on the ``llm`` queue) plans it; the accepted
plan is in ``execution.context["plan"]`` and runs as ``tool`` steps on the per-kind
queues. Commands decide in one transaction (with their audit entry) and return the
messages to publish after the commit, like the other control commands.

Every reader is scoped to the caller's workspace; an execution that is not a task is not
found, like another workspace's.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from shiftflow.kernel.agent_plan import APPROVAL_STEP, PLANNING_DEFINITION, TASK_WORKFLOW, step_number
from shiftflow.kernel.contracts import Priority, TriggerPayload
from shiftflow.kernel.db import is_postgres
from shiftflow.kernel.enqueue import Outgoing
from shiftflow.kernel.errors import NotFound
from shiftflow.kernel.steps import TERMINAL
from shiftflow.kernel.storable import unstorable
from shiftflow.models.engine import mongo_log, runs, task_llm
from shiftflow.models.engine.start import start_execution
from shiftflow.models.manage import audit, control, queries, signals
from shiftflow.models.manage.access import Principal
from shiftflow.models.manage.artifacts import artifact_dict
from shiftflow.models.manage.paging import Page, parse_limit, scoped
from shiftflow.models.manage.plain import stamp
from shiftflow.models.manage.problems import Conflict, InvalidInput
from shiftflow.models.tables.artifacts import Artifact
from shiftflow.models.tables.base import fk, utcnow
from shiftflow.models.tables.executions import Execution, StepExecution
from shiftflow.models.tables.llm_calls import LlmCall
from shiftflow.models.tables.tenancy import Workspace
from shiftflow.models.tables.tools import Tool as ToolRow
from shiftflow.models.tables.tools import ToolExecution
from shiftflow.models.tables.workflows import Workflow, WorkflowVersion

MAX_INTENT_CHARS = 4_000
MAX_MODEL_CHARS = 100
TASK_STATUSES = queries.EXECUTION_STATUSES


# --------------------------------------------------------------------------- create


def _task_workflow(workspace_id: Any) -> Workflow:
    """The workspace's task workflow, created on first use (the workspace row is locked so
    two first tasks at once make one)."""
    if is_postgres():  # SQLite (dev mode) has no row locks: its writers take turns anyway
        Workspace.select(Workspace.id).where(Workspace.id == workspace_id).for_update().get()
    found: Workflow | None = Workflow.get_or_none((Workflow.workspace == workspace_id)
                                                  & (Workflow.name == TASK_WORKFLOW))
    if found is not None:
        if found.status != "ACTIVE":
            raise Conflict(f"the task workflow {TASK_WORKFLOW!r} of this workspace is {found.status}: "
                           "activate it to create tasks")
        return found
    workflow: Workflow = Workflow.create(workspace=workspace_id, name=TASK_WORKFLOW,
                                         description=PLANNING_DEFINITION["description"], trigger_type="MANUAL",
                                         current_version=1, status="ACTIVE", folder="tasks", tags=["agent-task"])
    WorkflowVersion.create(workflow=workflow.id, version=1, definition=PLANNING_DEFINITION,
                           change_description="the planner step every agent task starts with")
    return workflow


def _connection(workspace_id: Any, name: Any) -> str:
    """The LLM connection a new task plans with: the one named, else the workspace's only one.

    Raises:
        InvalidInput: (``connection``) none named and none or several exist; the named one
            is missing, inactive, or not a model provider's.
    """
    available = task_llm.llm_connections(workspace_id)
    if name is None or name == "":
        if len(available) == 1:
            return next(iter(available))
        if not available:
            raise InvalidInput("connection", "this workspace has no LLM connection (integration openai or "
                                             "anthropic): create one, then name it")
        raise InvalidInput("connection", f"several LLM connections exist ({', '.join(sorted(available))}): "
                                         "name one")
    if not isinstance(name, str) or len(name) > 200:
        raise InvalidInput("connection", "expected a connection name")
    if name not in available:
        raise InvalidInput("connection", f"no active LLM connection {name!r} in this workspace "
                                         f"(LLM connections: {', '.join(sorted(available)) or 'none'})")
    return name


def create_task(actor: Principal, intent: Any, *, connection: Any = None, approve_required: Any = False,
                model: Any = None, priority: Any = None,
                admit: Callable[[], None] | None = None) -> tuple[dict[str, Any], list[Outgoing]]:
    """Check and store a new task; its planner step is the message to publish. ``admit``
    (the API's run quota) is called once the input passed its checks, before anything is written.

    Returns:
        The task (``task_dict``) and the messages to publish after the commit.

    Raises:
        InvalidInput: a bad intent, connection, model, flag or priority (nothing written).
        Conflict: the workspace's task workflow was deactivated.
    """
    actor.require("executions:write")
    if actor.workspace_id is None:
        raise InvalidInput("workspace", "a task belongs to a workspace: name one")
    if not isinstance(intent, str) or not intent.strip():
        raise InvalidInput("intent", "expected a non-empty text saying what to do")
    if len(intent) > MAX_INTENT_CHARS or unstorable(intent):
        raise InvalidInput("intent", f"at most {MAX_INTENT_CHARS} characters, without \\u0000")
    if not isinstance(approve_required, bool):
        raise InvalidInput("approve_required", "expected true or false")
    if model is not None and (not isinstance(model, str) or not 0 < len(model) <= MAX_MODEL_CHARS
                              or unstorable(model)):
        raise InvalidInput("model", f"expected a model name of 1-{MAX_MODEL_CHARS} characters")
    try:
        level = Priority.parse(priority if isinstance(priority, str) or priority is None else "?")
    except ValueError as exc:
        raise InvalidInput("priority", str(exc)) from None
    chosen = _connection(actor.workspace_id, connection)
    if admit is not None:
        admit()
    data = {"intent": intent.strip(), "connection": chosen, "approve_required": approve_required}
    if model:
        data["model"] = model
    with runs.transaction():
        workflow = _task_workflow(actor.workspace_id)
        payload = TriggerPayload(workflow_id=str(workflow.id), dedup_key=f"task:{uuid.uuid4().hex}",
                                 source="manual", data=data, priority=level.name,
                                 triggered_by=str(actor.user_id) if actor.user_id else "")
        started = start_execution(payload)
        execution = started.execution
        assert execution is not None
        Execution.update(title=intent.strip()[:300]).where(Execution.id == execution.id).execute()
        execution.title = intent.strip()[:300]
        audit.record(actor, "task.created", "execution", execution.id,
                     after={"connection": chosen, "approve_required": approve_required, "model": model},
                     workspace_id=actor.workspace_id)
    return task_dict(execution), started.outgoing


# --------------------------------------------------------------------------- commands


def get_task(actor: Principal, task_id: Any, *, lock: bool = False) -> Execution:
    """One task of the caller's workspace (``lock``: its row locked, inside a transaction).

    Raises:
        NotFound: no such task in the workspace (another workspace's, or an execution
            that is not a task).
    """
    execution = queries.get_execution(actor, task_id)
    workflow = Workflow.get_or_none(Workflow.id == execution.workflow_id)
    if workflow is None or workflow.name != TASK_WORKFLOW:
        raise NotFound(f"task {str(task_id)[:60]} does not exist")
    return runs.lock_execution(execution.id) if lock else execution


def approve_task(actor: Principal, task_id: Any, *, approved: Any = True,
                 comment: Any = "") -> tuple[dict[str, Any], list[Outgoing]]:
    """Approve (or reject: the task fails) a task's plan that waits for a person.

    Raises:
        NotFound: no such task in the workspace.
        Conflict: the task is not waiting for approval (still planning, approved already,
            never asked, or finished).
    """
    actor.require("executions:write")
    with runs.transaction():
        execution = get_task(actor, task_id, lock=True)
        waiting = StepExecution.get_or_none((StepExecution.execution == execution.id)
                                            & (StepExecution.step_id == APPROVAL_STEP)
                                            & (StepExecution.status == "WAITING"))
        if waiting is None:
            raise Conflict(f"task {execution.id} is not awaiting approval ({_stage(execution)})")
        _decision, outgoing = signals.decide_approval(actor, execution.id, APPROVAL_STEP,
                                                      approved=approved, comment=comment)
    return task_dict(Execution.get_by_id(execution.id)), outgoing


def pause_task(actor: Principal, task_id: Any) -> dict[str, Any]:
    """Pause a task: no further step starts (one already running finishes its call).

    Raises:
        NotFound: no such task. Conflict: it is not RUNNING or PENDING.
    """
    actor.require("executions:write")
    with runs.transaction():
        execution = get_task(actor, task_id, lock=True)
        if execution.status not in ("RUNNING", "PENDING"):
            raise Conflict(f"task {execution.id} is {execution.status}: only a running task can be paused")
        before = execution.status
        execution.status = "PAUSED"
        execution.started_at = execution.started_at or utcnow()
        execution.save(only=[Execution.status, Execution.started_at])
        audit.record(actor, "task.paused", "execution", execution.id, before={"status": before},
                     after={"status": "PAUSED"}, workspace_id=execution.workspace_id)
        mongo_log.execution_log(execution, f"task paused by {actor.who}")
    return task_dict(execution)


def resume_task(actor: Principal, task_id: Any) -> tuple[dict[str, Any], list[Outgoing]]:
    """Resume a paused task: the steps it held are published again.

    Raises:
        NotFound: no such task. Conflict: it is not PAUSED.
    """
    actor.require("executions:write")
    with runs.transaction():
        execution = get_task(actor, task_id, lock=True)
        if execution.status != "PAUSED":
            raise Conflict(f"task {execution.id} is {execution.status}: only a paused task can be resumed")
        execution.status = "RUNNING"
        execution.save(only=[Execution.status])
        definition = runs.load_definition(execution.workflow_id, execution.workflow_version)
        outgoing = runs.pending_messages(execution, definition)
        audit.record(actor, "task.resumed", "execution", execution.id, before={"status": "PAUSED"},
                     after={"status": "RUNNING"}, workspace_id=execution.workspace_id)
        mongo_log.execution_log(execution, f"task resumed by {actor.who}")
    return task_dict(execution), outgoing


def cancel_task(actor: Principal, task_id: Any) -> tuple[dict[str, Any], list[Outgoing]]:
    """Cancel a task that has not finished (``control.cancel``).

    Raises:
        NotFound: no such task. Conflict: it has finished.
    """
    execution = get_task(actor, task_id)
    cancelled, outgoing = control.cancel(actor, execution.id)
    return task_dict(cancelled), outgoing


# --------------------------------------------------------------------------- readers


def _stage(execution: Execution) -> str:
    """Where a task is, in words: planning, awaiting_approval, running, paused, or its end."""
    if execution.status in TERMINAL:
        return execution.status.lower()
    if execution.status == "PAUSED":
        return "paused"
    if not (execution.context or {}).get("plan"):
        return "planning"
    waiting = StepExecution.select().where((StepExecution.execution == execution.id)
                                           & (StepExecution.step_id == APPROVAL_STEP)
                                           & (StepExecution.status == "WAITING")).exists()
    return "awaiting_approval" if waiting else "running"


def _cost(execution_id: Any) -> Decimal:
    rows = LlmCall.select(LlmCall.cost_usd).where((LlmCall.execution == execution_id)
                                                 & (LlmCall.status == "SUCCEEDED"))
    return sum((r.cost_usd for r in rows if r.cost_usd is not None), Decimal("0"))


def task_dict(execution: Execution) -> dict[str, Any]:
    """A task's summary: intent, status and stage, step counters, cost."""
    data = execution.trigger_data or {}
    plan = (execution.context or {}).get("plan")
    total = len(plan) if isinstance(plan, list) else 0
    done = 0
    running = False
    if total:
        for row in StepExecution.select(StepExecution.step_id, StepExecution.status).where(
                (StepExecution.execution == execution.id) & (StepExecution.iteration == 0)):
            if step_number(row.step_id) is not None:
                done += row.status == "SUCCEEDED"
                running = running or row.status in ("RUNNING", "PENDING")
    current = min(total, done + 1) if running else done
    return {
        "id": str(execution.id),
        "title": execution.title,
        "intent": data.get("intent"),
        "status": execution.status,
        "stage": _stage(execution),
        "connection": data.get("connection"),
        "model": data.get("model"),
        "approve_required": bool(data.get("approve_required")),
        "current_step": current,
        "total_steps": total,
        "progress": execution.progress,
        "cost_usd": float(_cost(execution.id)),
        "error": execution.error,
        "created_at": stamp(execution.created_at),
        "started_at": stamp(execution.started_at),
        "completed_at": stamp(execution.completed_at),
    }


def task_story(actor: Principal, task_id: Any) -> dict[str, Any]:
    """A task with its whole story: the plan, the planner's model calls, every tool
    execution (attempts included), the artifacts, the step timeline, the cost."""
    execution = get_task(actor, task_id)
    calls = LlmCall.select().where(LlmCall.execution == execution.id).order_by(LlmCall.attempt, LlmCall.created_at)
    tools = (ToolExecution.select(ToolExecution, ToolRow.name).join(ToolRow, on=(ToolExecution.tool == ToolRow.id))
             .where(ToolExecution.execution == execution.id)
             .order_by(ToolExecution.created_at, ToolExecution.attempt))
    artifacts = (Artifact.select().where(Artifact.execution == execution.id)
                 .order_by(Artifact.created_at, Artifact.id))
    steps = list(StepExecution.select().where(StepExecution.execution == execution.id)
                 .order_by(StepExecution.created_at, StepExecution.step_id, StepExecution.iteration))
    step_ids = {str(s.id): s.step_id for s in steps}
    return {
        **task_dict(execution),
        "plan": (execution.context or {}).get("plan"),
        "llm_calls": [_llm_call_dict(c) for c in calls],
        "tool_executions": [_tool_execution_dict(t, step_ids) for t in tools],
        "artifacts": [artifact_dict(a) for a in artifacts],
        "steps": [queries.step_dict(s) for s in steps],
    }


def _llm_call_dict(row: LlmCall) -> dict[str, Any]:
    usage = row.token_usage or {}
    return {
        "attempt": row.attempt,
        "round": (row.inputs or {}).get("round"),
        "provider": row.provider,
        "model": row.model,
        "status": row.status,
        "tokens_in": usage.get("input"),
        "tokens_out": usage.get("output"),
        "cost_usd": float(row.cost_usd) if row.cost_usd is not None else None,
        "latency_ms": row.latency_ms,
        "error": row.error,
        "created_at": stamp(row.created_at),
    }


def _tool_execution_dict(row: ToolExecution, step_ids: dict[str, str]) -> dict[str, Any]:
    step_row = fk(row, "step_execution")
    step_id = step_ids.get(str(step_row)) if step_row else None
    return {
        "id": str(row.id),
        "step_id": step_id,
        "step_number": step_number(step_id) if step_id else None,
        "tool": row.tool.name,
        "attempt": row.attempt,
        "queue": row.queue,
        "status": row.status,
        "input": row.input,
        "output": row.output,
        "error": row.error,
        "duration_ms": row.duration_ms,
        "started_at": stamp(row.started_at),
        "completed_at": stamp(row.completed_at),
    }


def list_tasks(actor: Principal, *, status: Any = None, limit: Any = None) -> list[dict[str, Any]]:
    """The caller's tasks, newest first (at most ``limit``, default 50).

    Raises:
        InvalidInput: an unknown status or a bad limit.
    """
    actor.require("executions:read")
    size = parse_limit(limit)
    if status is not None and status not in TASK_STATUSES:
        raise InvalidInput("status", f"expected one of {', '.join(TASK_STATUSES)}")
    workflows = scoped(Workflow.select(Workflow.id).where(Workflow.name == TASK_WORKFLOW), Workflow.workspace, actor)
    query = scoped(Execution.select().where(Execution.workflow.in_(workflows)), Execution.workspace, actor)
    if status:
        query = query.where(Execution.status == status)
    rows = query.order_by(Execution.created_at.desc(), Execution.id.desc()).limit(size)
    return [task_dict(r) for r in rows]


def task_logs(actor: Principal, task_id: Any, mongo_db: Any, limit: Any = None, cursor: str | None = None) -> Page:
    """One page of a task's log lines (the execution's MongoDB log), oldest first."""
    execution = get_task(actor, task_id)
    return queries.execution_logs(actor, execution.id, mongo_db, limit, cursor)

