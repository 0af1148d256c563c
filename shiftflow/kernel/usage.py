"""Integration usage: one ``integration_usage`` document per outside call.

The collection of docs/seed-mapping.md (``timestamp, integrationId, connectionId, action,
workspaceId, success, duration, rateLimit``), plus ``workflowId`` and ``executionId``, and
for a model call ``model``, ``tokensIn``, ``tokensOut`` and ``costUsd``: the analytics
readers (``models.manage.analytics``) sum usage per integration and cost per model from it.

Written through the process's batching sink (``kernel.mongo``) like every log document:
never blocking, nothing written when MongoDB logging is off.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any, TypeVar

from shiftflow.kernel import tracing
from shiftflow.kernel.errors import RateLimited
from shiftflow.kernel.mongo import INTEGRATION_USAGE, get_sink

T = TypeVar("T")


def record(*, workspace_id: Any, integration: str, action: str, success: bool, duration_ms: float,
           workflow_id: Any = None, execution_id: Any = None, connection_id: Any = None,
           rate_limited: bool = False, model: str | None = None, tokens_in: int | None = None,
           tokens_out: int | None = None, cost_usd: Decimal | float | None = None,
           at: dt.datetime | None = None) -> None:
    """Queue one usage document (nothing when MongoDB logging is off).

    Parameters:
        integration: the integration (or tool step type) called, e.g. ``http``, ``openai``.
        action: what was asked of it (bounded: an HTTP method, an action name, never a URL).
        model, tokens_in, tokens_out, cost_usd: a model call's usage and its cost in USD.
        at: naive UTC time of the call (default now).
    """
    sink = get_sink()
    if sink is None:
        return
    document: dict[str, Any] = {
        "timestamp": at or dt.datetime.now(dt.UTC).replace(tzinfo=None),
        "integrationId": integration,
        "connectionId": str(connection_id) if connection_id else None,
        "action": action,
        "workspaceId": str(workspace_id),
        "workflowId": str(workflow_id) if workflow_id else None,
        "executionId": str(execution_id) if execution_id else None,
        "success": bool(success),
        "duration": round(float(duration_ms), 3),
        "rateLimit": bool(rate_limited),
    }
    if model is not None:
        document.update(model=model, tokensIn=int(tokens_in or 0), tokensOut=int(tokens_out or 0),
                        costUsd=float(cost_usd) if cost_usd is not None else None)
    sink.write(INTEGRATION_USAGE, document)


def _action(step_type: str, inputs: Mapping[str, Any]) -> str:
    if step_type == "http":
        method = str(inputs.get("method") or "GET").upper()
        return method if method.isalpha() and len(method) <= 10 else "OTHER"
    return step_type


def observed_call(step_type: str, step_id: str, inputs: Mapping[str, Any], execution: Any,
                  call: Callable[[], T], *, integration: str | None = None, connection_id: Any = None) -> T:
    """Run one outside call of a step: inside its ``tool`` span, and recorded as usage.

    Parameters:
        step_type: the step type, or the tool a ``tool`` step calls (``email.send``).
        execution: the execution row (``id``, ``workspace_id``, ``workflow_id``).
        call: the call itself; its result is returned and its error re-raised.
        integration / connection_id: the catalogue integration and the connection the call
            used (a tool step's ``connection``); without them the usage is counted under
            ``step_type``.
    """
    started = time.perf_counter()
    success, limited = False, False
    try:
        with tracing.tool_span(step_type, step_id, execution.id):
            result = call()
        success = True
        return result
    except RateLimited:
        limited = True
        raise
    finally:
        record(workspace_id=execution.workspace_id, integration=integration or step_type,
               action=_action(step_type, inputs), success=success,
               duration_ms=(time.perf_counter() - started) * 1000.0, workflow_id=execution.workflow_id,
               execution_id=execution.id, connection_id=connection_id, rate_limited=limited)
