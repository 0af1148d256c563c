"""The planner step of an agent task (step type ``agent_plan``, on the ``llm`` queue).

It asks the task's model for a plan of tool calls, given the workspace's enabled tools
with their JSON Schemas and its connections (``kernel.agent_plan``). A plan that names an
unknown tool, parameters a tool's schema refuses, a reference to no earlier call or a
connection that does not fit is sent back with its problems, up to
``SHIFTFLOW_TASK_MAX_REPLANS`` times; then the step (and the task) fails naming them.

An accepted plan becomes the task's own version of the task workflow, in one transaction
with the planner step's success: the new version (planner, approval when asked, one
``tool`` step per call), the execution pinned to it, the plan in ``execution.context``.
So a task is planned once: a redelivered planner message finds its step finished, and a
delivery that died before that commit reuses the answers already recorded
(``task_llm``) instead of paying for them again.
"""

from __future__ import annotations

from typing import Any

from shiftflow.kernel import failpoints
from shiftflow.kernel.agent_plan import (
    PLAN_SCHEMA,
    PLAN_STEP,
    PlannedCall,
    catalogue_text,
    check,
    parse_answer,
    refusal_text,
    to_definition,
)
from shiftflow.kernel.db import is_postgres
from shiftflow.kernel.enqueue import Outgoing
from shiftflow.kernel.errors import PermanentError
from shiftflow.kernel.llm import LlmRequest, Message, ResponseFormat
from shiftflow.kernel.settings import get_settings
from shiftflow.kernel.steps import TERMINAL
from shiftflow.kernel.tools.base import Tool
from shiftflow.kernel.tools.registry import default_registry
from shiftflow.models.engine import mongo_log, runs, task_llm
from shiftflow.models.tables.base import utcnow
from shiftflow.models.tables.executions import Execution
from shiftflow.models.tables.integrations import Connection
from shiftflow.models.tables.tools import Tool as ToolRow
from shiftflow.models.tables.tools import WorkspaceTool
from shiftflow.models.tables.workflows import Workflow, WorkflowVersion

#: The most output tokens one plan answer may take.
PLAN_MAX_TOKENS = 4096


class PlanRefused(PermanentError):
    """No acceptable plan within the allowed re-plans; the message lists the last problems."""


def enabled_tools(workspace_id: Any) -> dict[str, Tool]:
    """The registry's tools the workspace may use: not disabled in the catalogue or by it."""
    registry = default_registry()
    off = {row.name for row in ToolRow.select(ToolRow.name).where(ToolRow.enabled == False)}  # noqa: E712
    off |= {row.tool_name for row in WorkspaceTool.select(WorkspaceTool.tool_name).where(
        (WorkspaceTool.workspace == workspace_id) & (WorkspaceTool.enabled == False))}  # noqa: E712
    return {tool.name: tool for tool in registry if tool.name not in off}


def workspace_connections(workspace_id: Any) -> dict[str, str]:
    """The workspace's active connections: name -> integration key."""
    rows = Connection.select(Connection.name, Connection.integration).where(
        (Connection.workspace == workspace_id) & (Connection.is_active == True))  # noqa: E712 - peewee
    return {row.name: row.integration.key for row in rows}


def run_plan_step(claim: runs.Claim, inputs: Any, stored: Any) -> list[Outgoing]:
    """Plan the claimed task (re-planning refused plans), store the plan, start what follows.

    Raises:
        PlanRefused: still no acceptable plan after the re-plans (the step fails with it).
        LlmConnectionError, BudgetExceeded, LlmError: the model could not be asked.
    """
    settings = get_settings()
    execution = claim.execution
    data = execution.trigger_data or {}
    intent = str(data.get("intent") or "").strip()
    if not intent:
        raise PermanentError("intent: the task has no intent to plan")
    model = str(data.get("model") or settings.task_model)
    connection = str(data.get("connection") or "")
    tools = enabled_tools(execution.workspace_id)
    connections = workspace_connections(execution.workspace_id)
    messages: list[Message] = [Message.user(f"Intent: {intent}")]
    system = catalogue_text(tools.values(), connections)
    rounds = settings.task_max_replans + 1
    problems: list[str] = []
    for round_no in range(1, rounds + 1):
        request = LlmRequest(model=model, system=system, messages=tuple(messages), max_tokens=PLAN_MAX_TOKENS,
                             response_format=ResponseFormat.json_schema(PLAN_SCHEMA, name="plan"))
        answer = task_llm.complete(claim, connection, round_no, request, settings)
        # The answer is recorded, the plan not yet stored: a crash here must not pay twice.
        failpoints.hit("task.after_plan_call", str(round_no))
        plan, problems = parse_answer(answer.text, answer.parsed if answer.json_error is None else None)
        if not problems:
            checked = check(plan, tools, connections)
            problems = checked.problems
            if not problems:
                return _accept(claim, checked.calls, bool(data.get("approve_required")), round_no)
        if not answer.reused:
            mongo_log.execution_log(execution, f"plan {round_no} refused: {'; '.join(problems)}"[:2000],
                                    level="warn", step_id=PLAN_STEP, metadata={"round": round_no})
        messages += [Message.assistant(answer.text or "{}"), Message.user(refusal_text(problems))]
    raise PlanRefused(f"no acceptable plan after {rounds} attempt(s): {'; '.join(problems)}")


def _accept(claim: runs.Claim, calls: list[PlannedCall], approval: bool, round_no: int) -> list[Outgoing]:
    """Store the plan as the task's own workflow version and record the planner's success."""
    assert claim.step is not None
    plan = [call.as_dict() for call in calls]
    definition = to_definition(calls, approval=approval)
    with runs.transaction():
        execution = runs.lock_execution(claim.execution.id)
        if execution.status in TERMINAL:
            # Cancelled (or timed out) while the model answered: the plan is not kept.
            return []
        if execution.workflow_version != claim.execution.workflow_version:
            # Another delivery planned it already (this one was a stale copy): keep that plan.
            return runs.pending_messages(execution, runs.load_definition(execution.workflow_id,
                                                                         execution.workflow_version))
        # The workflow row is locked to number the version: tasks of one workspace plan at once.
        if is_postgres():  # SQLite (dev mode) has no row locks: its writers take turns anyway
            Workflow.select(Workflow.id).where(Workflow.id == execution.workflow_id).for_update().get()
        latest = (WorkflowVersion.select(WorkflowVersion.version).where(
            WorkflowVersion.workflow == execution.workflow_id).order_by(WorkflowVersion.version.desc()).first())
        version = (latest.version if latest else 0) + 1
        WorkflowVersion.create(workflow=execution.workflow_id, version=version, definition=definition,
                               change_description=f"plan of task {execution.id}")
        execution.workflow_version = version
        execution.context = {**(execution.context or {}), "plan": plan, "planned_at": utcnow().isoformat(),
                             "plan_rounds": round_no}
        execution.save(only=[Execution.workflow_version, Execution.context])
        mongo_log.execution_log(execution, f"plan accepted: {len(plan)} tool call(s)"
                                + (", waiting for approval" if approval else ""),
                                step_id=PLAN_STEP, metadata={"plan": plan, "round": round_no})
        new = runs.load_definition(execution.workflow_id, version)
        return runs.record_step(execution, new, claim.step, "SUCCEEDED",
                                output={"plan": plan, "rounds": round_no}, stored_input={})

