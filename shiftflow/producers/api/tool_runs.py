"""The management API's tool-execution and queue-job paths.

``GET /executions/{id}/tool-executions``, ``GET /tool-executions/{id}``,
``GET /queue-jobs`` (keyset pages, newest first) and ``GET /queue-jobs/{id}``: their part
of the OpenAPI document and their handlers, kept apart from ``api.spec``/``api.handlers``,
which merge them in. Each handler calls a reader of ``models.manage.tool_runs`` (the CLI's
``shiftflow tools executions`` and ``shiftflow tools jobs`` call the same ones), which masks
every secret on the way out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shiftflow.models.manage import tool_runs
from shiftflow.models.manage.paging import MAX_LIMIT
from shiftflow.producers.api.schemas import ANY, ID, NULL_ID, NULL_TEXT, NULL_TIME, TIME, obj, page, ref

_NULL_INT = {"type": ["integer", "null"], "minimum": 0}
_COUNT = {"type": "integer", "minimum": 0}

SCHEMAS: dict[str, Any] = {
    "ToolExecution": obj(
        ["id", "execution_id", "step_execution_id", "step_id", "iteration", "tool", "connection", "queue",
         "attempt", "status", "input", "output", "error", "duration_ms", "created_at", "started_at",
         "completed_at"],
        id=ID,
        execution_id=NULL_ID,
        step_execution_id=NULL_ID,
        step_id={**NULL_TEXT, "description": "the workflow step that called the tool"},
        iteration=_NULL_INT,
        tool={"type": "string"},
        connection={**NULL_TEXT, "description": "the name of the workspace connection the step used"},
        queue=NULL_TEXT,
        attempt={"type": "integer", "minimum": 1},
        status={"type": "string", "enum": list(tool_runs.TOOL_EXECUTION_STATUSES)},
        input={**ANY, "description": "the parameters sent, secrets masked (`***`)"},
        output={**ANY, "description": "the tool's result, secrets masked; null until it finished"},
        error={**NULL_TEXT, "description": "why it failed, secrets masked"},
        duration_ms=_NULL_INT,
        created_at=TIME,
        started_at=NULL_TIME,
        completed_at=NULL_TIME,
    ),
    "ToolExecutionList": obj(["items"], items={"type": "array", "items": ref("ToolExecution")}),
    "QueueJob": obj(
        ["id", "message_id", "queue", "actor", "status", "progress", "attempts", "max_attempts", "error",
         "execution_id", "step_id", "iteration", "tool", "created_at", "started_at", "completed_at", "failed_at"],
        id=ID,
        message_id={"type": "string", "description": "the broker message's id"},
        queue={"type": "string"},
        actor={"type": "string"},
        status={"type": "string", "enum": list(tool_runs.QUEUE_JOB_STATUSES)},
        progress={"type": "integer", "minimum": 0, "maximum": 100},
        attempts={**_COUNT, "description": "deliveries of this message"},
        max_attempts=_COUNT,
        error=NULL_TEXT,
        execution_id=NULL_ID,
        step_id=NULL_TEXT,
        iteration=_NULL_INT,
        tool=NULL_TEXT,
        created_at=TIME,
        started_at=NULL_TIME,
        completed_at=NULL_TIME,
        failed_at=NULL_TIME,
        tool_execution_id={**NULL_ID, "description": "the last tool execution this job made (detail only)"},
        tool_execution_ids={"type": "array", "items": ID,
                            "description": "every tool execution this job's deliveries made (detail only)"},
    ),
    "QueueJobPage": page("QueueJob"),
}


def paths(op: Callable[..., dict[str, Any]], query: Callable[..., dict[str, Any]],
          path: Callable[..., dict[str, Any]], ok: Callable[..., dict[str, Any]],
          errors: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    """The paths, built with ``api.spec``'s helpers (passed in: no import cycle)."""
    perm, tags = tool_runs.PERMISSION, ("tool executions",)
    return {
        "/executions/{execution_id}/tool-executions": {
            "get": op("listToolExecutions", "The tool calls of an execution (one per attempt), oldest first",
                      perm, {**ok(200, "ToolExecutionList", "tool executions"), **errors(404)},
                      tags=tags, params=[path("execution_id")]),
        },
        "/tool-executions/{tool_execution_id}": {
            "get": op("getToolExecution", "One tool call: masked input, output, error, status, duration",
                      perm, {**ok(200, "ToolExecution", "the tool execution"), **errors(404)},
                      tags=tags, params=[path("tool_execution_id")]),
        },
        "/queue-jobs": {
            "get": op("listQueueJobs", "Queue jobs (one per broker message of a tool step), newest first",
                      perm, {**ok(200, "QueueJobPage", "a page of queue jobs"), **errors(422)},
                      tags=tags, params=[
                          query("queue", {"type": "string", "maxLength": 50}, "only this queue"),
                          query("status", {"type": "string", "enum": list(tool_runs.QUEUE_JOB_STATUSES)},
                                "only this status"),
                          query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 50},
                                "page size"),
                          query("cursor", {"type": "string"}, "the `next_cursor` of the previous page"),
                      ]),
        },
        "/queue-jobs/{queue_job_id}": {
            "get": op("getQueueJob", "One queue job, with the tool executions its deliveries made",
                      perm, {**ok(200, "QueueJob", "the queue job"), **errors(404)},
                      tags=tags, params=[path("queue_job_id")]),
        },
    }


#: operationId -> a function of the ``api.handlers.Call`` returning the 200 body.
HANDLERS: dict[str, Callable[[Any], Any]] = {
    "listToolExecutions": lambda call: {"items": tool_runs.list_tool_executions(
        call.actor, call.path["execution_id"], settings=call.settings)},
    "getToolExecution": lambda call: tool_runs.get_tool_execution(
        call.actor, call.path["tool_execution_id"], settings=call.settings),
    "listQueueJobs": lambda call: tool_runs.list_queue_jobs(
        call.actor, queue=call.params.get("queue"), status=call.params.get("status"),
        limit=call.params.get("limit"), cursor=call.params.get("cursor"), settings=call.settings).as_dict(),
    "getQueueJob": lambda call: tool_runs.get_queue_job(
        call.actor, call.path["queue_job_id"], settings=call.settings),
}
