"""The management API's agent-task paths: ``/tasks`` (create, list), ``/tasks/{id}`` (the
whole story), its logs, and ``approve``/``pause``/``resume``/``cancel``.

Their part of the OpenAPI document and their handlers, kept apart from
``api.spec``/``api.handlers``, which merge them in. Each handler calls
``models.manage.tasks`` (the CLI's ``shiftflow tasks`` calls the same functions).
Creating a task stores it and publishes its planner step: the model is asked by a worker
on the ``llm`` queue, never inside the request.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shiftflow.models.manage import tasks
from shiftflow.models.manage.paging import MAX_LIMIT
from shiftflow.producers.api.schemas import ANY, ID, NULL_TEXT, NULL_TIME, PRIORITY, closed, obj, ref

_STATUS = {"type": "string", "enum": list(tasks.TASK_STATUSES)}
_STAGE = {"type": "string", "enum": ["planning", "awaiting_approval", "running", "paused", "succeeded", "failed",
                                     "cancelled", "timed_out"]}
_COUNT = {"type": "integer", "minimum": 0}
_NULL_COUNT = {"type": ["integer", "null"], "minimum": 0}
_NULL_NUMBER = {"type": ["number", "null"]}

SCHEMAS: dict[str, Any] = {
    "Task": obj(
        ["id", "title", "intent", "status", "stage", "connection", "model", "approve_required", "current_step",
         "total_steps", "progress", "cost_usd", "error", "created_at", "started_at", "completed_at"],
        id=ID, title=NULL_TEXT, intent=NULL_TEXT, status=_STATUS, stage=_STAGE, connection=NULL_TEXT,
        model=NULL_TEXT, approve_required={"type": "boolean"}, current_step=_COUNT, total_steps=_COUNT,
        progress={"type": "integer", "minimum": 0, "maximum": 100},
        cost_usd={"type": "number", "minimum": 0, "description": "the planner's model calls, USD"},
        error=NULL_TEXT, created_at=NULL_TIME, started_at=NULL_TIME, completed_at=NULL_TIME),
    "TaskPlanCall": obj(["tool", "params"], tool={"type": "string"}, params={"type": "object"},
                        connection={"type": "string"}, why={"type": "string"}),
    "TaskLlmCall": obj(
        ["attempt", "round", "provider", "model", "status", "tokens_in", "tokens_out", "cost_usd", "latency_ms",
         "error", "created_at"],
        attempt=_COUNT, round=_NULL_COUNT, provider=NULL_TEXT, model=NULL_TEXT, status={"type": "string"},
        tokens_in=_NULL_COUNT, tokens_out=_NULL_COUNT, cost_usd=_NULL_NUMBER, latency_ms=_NULL_COUNT,
        error=NULL_TEXT, created_at=NULL_TIME),
    "TaskToolExecution": obj(
        ["id", "step_id", "step_number", "tool", "attempt", "queue", "status", "input", "output", "error",
         "duration_ms", "started_at", "completed_at"],
        id=ID, step_id=NULL_TEXT, step_number=_NULL_COUNT, tool={"type": "string"}, attempt=_COUNT,
        queue=NULL_TEXT, status={"type": "string"}, input=ANY, output=ANY, error=NULL_TEXT,
        duration_ms=_NULL_COUNT, started_at=NULL_TIME, completed_at=NULL_TIME),
    "TaskList": obj(["items"], items={"type": "array", "items": ref("Task")}),
}
SCHEMAS["TaskStory"] = {
    **SCHEMAS["Task"],
    "required": [*SCHEMAS["Task"]["required"], "plan", "llm_calls", "tool_executions", "artifacts", "steps"],
    "properties": {
        **SCHEMAS["Task"]["properties"],
        "plan": {"type": ["array", "null"], "items": ref("TaskPlanCall")},
        "llm_calls": {"type": "array", "items": ref("TaskLlmCall")},
        "tool_executions": {"type": "array", "items": ref("TaskToolExecution")},
        "artifacts": {"type": "array", "items": ref("Artifact")},
        "steps": {"type": "array", "items": ref("Step")},
    },
}

_TASK_ID = {"name": "task_id", "in": "path", "required": True, "schema": ID}


def paths(op: Callable[..., dict[str, Any]], query: Callable[..., dict[str, Any]],
          ok: Callable[..., dict[str, Any]], errors: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    """The task paths, built with ``api.spec``'s helpers (passed in: no import cycle)."""
    body_errors = (400, 413, 422)
    return {
        "/tasks": {
            "post": op(
                "createTask",
                "Create an agent task: its intent is planned into tool calls by a worker (llm queue), "
                "then run on the per-kind queues; 202 with the task",
                "executions:write",
                {**ok(202, "Task", "stored; its planner step is queued"), **errors(409, 429, *body_errors)},
                tags=("tasks",),
                example={"intent": "Screenshot http://example.test and mail a thumbnail to ops@example.test",
                         "connection": "planner", "approve_required": True},
                body=closed(
                    ["intent"],
                    intent={"type": "string", "minLength": 1, "maxLength": tasks.MAX_INTENT_CHARS},
                    connection={"type": "string", "minLength": 1, "maxLength": 200,
                                "description": "the LLM connection (openai or anthropic) that plans; "
                                               "default: the workspace's only one"},
                    approve_required={"type": "boolean", "default": False},
                    model={"type": "string", "minLength": 1, "maxLength": tasks.MAX_MODEL_CHARS},
                    priority=PRIORITY,
                ),
            ),
            "get": op(
                "listTasks",
                "Agent tasks, newest first",
                "executions:read",
                {**ok(200, "TaskList", "tasks"), **errors(422)},
                tags=("tasks",),
                params=[query("status", _STATUS, "only this status"),
                        query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 50},
                              "how many")],
            ),
        },
        "/tasks/{task_id}": {
            "get": op("getTask", "A task's whole story: plan, model calls, tool executions, artifacts, cost",
                      "executions:read", {**ok(200, "TaskStory", "the task"), **errors(404)},
                      tags=("tasks",), params=[_TASK_ID]),
        },
        "/tasks/{task_id}/logs": {
            "get": op("getTaskLogs", "A task's log lines, oldest first; follow `next_cursor`", "executions:read",
                      {**ok(200, "LogPage", "a page of log lines"), **errors(404, 422)}, tags=("tasks",),
                      params=[_TASK_ID,
                              query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 50},
                                    "page size"),
                              query("cursor", {"type": "string"}, "the `next_cursor` of the previous page")]),
        },
        "/tasks/{task_id}/approve": {
            "post": op("approveTask", "Approve (or reject, failing the task) a plan awaiting approval; "
                       "409 when the task is not awaiting approval", "executions:write",
                       {**ok(200, "Task", "decided"), **errors(404, 409, *body_errors)}, tags=("tasks",),
                       params=[_TASK_ID], body_required=False, example={"approved": True},
                       body=closed([], approved={"type": "boolean", "default": True},
                                   comment={"type": "string", "maxLength": 2000})),
        },
        **{
            f"/tasks/{{task_id}}/{verb}": {
                "post": op(op_id, summary, "executions:write", {**ok(200, "Task", "done"), **errors(404, 409)},
                           tags=("tasks",), params=[_TASK_ID]),
            }
            for verb, op_id, summary in (
                ("pause", "pauseTask", "Pause a running task: no further step starts"),
                ("resume", "resumeTask", "Resume a paused task"),
                ("cancel", "cancelTask", "Cancel a task that has not finished"),
            )
        },
    }


def handlers(result: Callable[..., Any], publish_fallback: Callable[[list[Any]], Any]) -> dict[str, Callable[[Any], Any]]:
    """operationId -> handler of an ``api.handlers.Call`` (``result``: ``api.handlers.Result``;
    ``publish_fallback``: what to do with messages the broker refused after the commit)."""

    def create(call: Any) -> Any:
        b = call.body
        task, outgoing = tasks.create_task(call.actor, b.get("intent"), connection=b.get("connection"),
                                           approve_required=b.get("approve_required", False),
                                           model=b.get("model"), priority=b.get("priority"), admit=call.admit_run)
        return result(202, task, publish=outgoing, fallback=publish_fallback)

    def approve(call: Any) -> Any:
        b = call.body
        task, outgoing = tasks.approve_task(call.actor, call.path["task_id"], approved=b.get("approved", True),
                                            comment=b.get("comment", ""))
        return result(200, task, publish=outgoing, fallback=publish_fallback)

    def resume(call: Any) -> Any:
        task, outgoing = tasks.resume_task(call.actor, call.path["task_id"])
        return result(200, task, publish=outgoing, fallback=publish_fallback)

    def cancel(call: Any) -> Any:
        task, outgoing = tasks.cancel_task(call.actor, call.path["task_id"])
        return result(200, task, publish=outgoing, fallback=publish_fallback)

    def logs(call: Any) -> Any:
        page = tasks.task_logs(call.actor, call.path["task_id"], call.mongo(), call.params.get("limit"),
                               call.params.get("cursor"))
        return result(200, page.as_dict())

    return {
        "createTask": create,
        "listTasks": lambda call: result(200, {"items": tasks.list_tasks(call.actor, status=call.params.get("status"),
                                                                         limit=call.params.get("limit"))}),
        "getTask": lambda call: result(200, tasks.task_story(call.actor, call.path["task_id"])),
        "getTaskLogs": logs,
        "approveTask": approve,
        "pauseTask": lambda call: result(200, tasks.pause_task(call.actor, call.path["task_id"])),
        "resumeTask": resume,
        "cancelTask": cancel,
    }
