"""The management API's analytics paths: ``GET /analytics/{workflows,steps,integrations,costs}``.

Their part of the OpenAPI document (paths and response schemas) and their handlers, kept
apart from ``api_spec``/``api_handlers``, which merge them in. Each handler calls a reader
of ``models.manage.analytics`` (the CLI's ``shiftflow analytics`` calls the same ones).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shiftflow.models.manage import analytics
from shiftflow.producers.api.schemas import ID, NULL_TEXT, TIME, obj, ref

_NUMBER_OR_NULL = {"type": ["number", "null"]}
_COUNT = {"type": "integer", "minimum": 0}
_RATE = {"type": ["number", "null"], "minimum": 0, "maximum": 1,
         "description": "succeeded / total; null when there is nothing to count"}
_WINDOW = {"since": {**TIME, "description": "start of the window (inclusive)"},
           "until": {**TIME, "description": "end of the window (exclusive)"}}
_SAMPLED = {"type": "boolean", "description": "true when the percentiles come from a bounded sample "
                                              "(a MongoDB server without $percentile)"}

SCHEMAS: dict[str, Any] = {
    "Durations": obj(["p50", "p95"], p50={**_NUMBER_OR_NULL, "description": "median, milliseconds (nearest rank)"},
                     p95={**_NUMBER_OR_NULL, "description": "95th percentile, milliseconds (nearest rank)"}),
    "WorkflowStats": obj(
        ["workflow_id", "workflow_name", "executions", "succeeded", "failed", "success_rate", "duration_ms"],
        workflow_id=ID, workflow_name=NULL_TEXT, executions=_COUNT, succeeded=_COUNT, failed=_COUNT,
        success_rate=_RATE, duration_ms=ref("Durations")),
    "StepStats": obj(
        ["workflow_id", "workflow_name", "step_id", "step_type", "runs", "succeeded", "failed", "success_rate",
         "duration_ms"],
        workflow_id=ID, workflow_name=NULL_TEXT, step_id={"type": "string"}, step_type={"type": "string"},
        runs=_COUNT, succeeded=_COUNT, failed=_COUNT, success_rate=_RATE, duration_ms=ref("Durations")),
    "IntegrationUsage": obj(
        ["integration", "action", "calls", "succeeded", "failed", "rate_limited", "success_rate", "duration_ms"],
        integration={"type": "string"}, action={"type": "string"}, calls=_COUNT, succeeded=_COUNT,
        failed=_COUNT, rate_limited=_COUNT, success_rate=_RATE, duration_ms=ref("Durations")),
    "ModelCost": obj(
        ["workspace_id", "model", "calls", "tokens_in", "tokens_out", "cost_usd", "unpriced_calls"],
        workspace_id=ID, model={"type": "string"}, calls=_COUNT, tokens_in=_COUNT, tokens_out=_COUNT,
        cost_usd={"type": "number", "minimum": 0}, unpriced_calls=_COUNT),
}
for _name, _item in (("WorkflowStats", "WorkflowStats"), ("StepStats", "StepStats"),
                     ("IntegrationUsage", "IntegrationUsage")):
    SCHEMAS[f"{_name}Report"] = obj(["since", "until", "items", "sampled"], **_WINDOW,
                                    items={"type": "array", "items": ref(_item)}, sampled=_SAMPLED)
SCHEMAS["CostReport"] = obj(["since", "until", "items", "total_cost_usd"], **_WINDOW,
                            items={"type": "array", "items": ref("ModelCost")},
                            total_cost_usd={"type": "number", "minimum": 0})

#: Report name -> (operationId, response schema, summary).
_REPORTS = {
    "workflows": ("getWorkflowAnalytics", "WorkflowStatsReport",
                  "Success rate and p50/p95 duration per workflow over a time range"),
    "steps": ("getStepAnalytics", "StepStatsReport",
              "Success rate and p50/p95 duration per workflow step over a time range"),
    "integrations": ("getIntegrationUsage", "IntegrationUsageReport",
                     "Calls, failures, rate limits and p50/p95 duration per integration and action"),
    "costs": ("getModelCosts", "CostReport", "Model calls, tokens and cost in USD per workspace and model"),
}


def paths(op: Callable[..., dict[str, Any]], query: Callable[..., dict[str, Any]],
          ok: Callable[..., dict[str, Any]], errors: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    """The analytics paths, built with ``api_spec``'s helpers (passed in: no import cycle)."""
    params = [
        query("since", TIME, "start of the window, with a UTC offset (default: seven days before `until`)"),
        query("until", TIME, "end of the window, with a UTC offset (default: now); at most "
                             f"{analytics.MAX_WINDOW_DAYS} days after `since`"),
        query("workflow_id", ID, "only this workflow (422 if the workspace has no such workflow)"),
    ]
    return {
        f"/analytics/{report}": {
            "get": op(op_id, summary, analytics.PERMISSION, {**ok(200, schema, "the report"), **errors(422)},
                      tags=("analytics",), params=params)
        }
        for report, (op_id, schema, summary) in _REPORTS.items()
    }


def _handler(report: str) -> Callable[[Any], Any]:
    reader = analytics.READERS[report]

    def handle(call: Any) -> Any:
        p = call.params
        return reader(call.actor, call.mongo(), since=p.get("since"), until=p.get("until"),
                      workflow_id=p.get("workflow_id"))

    return handle


#: operationId -> a function of the ``api_handlers.Call`` returning the 200 body.
HANDLERS: dict[str, Callable[[Any], Any]] = {op_id: _handler(report) for report, (op_id, _s, _m) in _REPORTS.items()}


def answer(read: Callable[[Any], Any], result: Callable[[int, Any], Any]) -> Callable[[Any], Any]:
    """``read`` as an operation handler: its body answered 200 (``result``: ``api_handlers.Result``)."""
    return lambda call: result(200, read(call))
