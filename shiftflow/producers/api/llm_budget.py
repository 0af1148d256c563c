"""The management API's LLM budget path: ``GET`` and ``PUT /llm-budget``.

Its part of the OpenAPI document and its handlers, kept apart from ``api.spec`` and
``api.handlers``, which merge them in. The handlers call ``models.manage.llm_budget`` (the
CLI's ``shiftflow quotas`` calls the same functions).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shiftflow.kernel.settings import get_settings
from shiftflow.models.manage import llm_budget
from shiftflow.producers.api.schemas import TIME, closed, obj

_USD = {"type": ["string", "null"], "pattern": r"^\d+\.\d{6}$", "description": "USD, six decimal places"}

SCHEMAS: dict[str, Any] = {
    "LlmBudget": obj(
        ["workspace", "budget_usd", "default_usd", "effective_usd", "source", "spent_today_usd", "remaining_usd",
         "day_started_at"],
        workspace={"type": "string"},
        budget_usd={**_USD, "description": "the workspace's own budget; null: the deployment's default applies"},
        default_usd={**_USD, "description": "the deployment's default (SHIFTFLOW_LLM_DAILY_BUDGET_USD); null: none"},
        effective_usd={**_USD, "description": "the budget in force; null: no limit"},
        source={"type": "string", "enum": ["workspace", "default", "none"]},
        spent_today_usd={**_USD, "type": "string", "description": "today's (UTC) LLM call costs, with the estimates "
                                                                  "of calls whose cost is not known yet"},
        remaining_usd={**_USD, "description": "what today's calls may still cost; null: no limit"},
        day_started_at={**TIME, "description": "midnight UTC: the day the spend is counted from"},
    ),
}

_AMOUNT = {"type": ["string", "number", "null"],
           "description": "USD, at least 0, at most six decimal places (a decimal string keeps it exact); "
                          "null: the deployment's default"}


def paths(op: Callable[..., dict[str, Any]], ok: Callable[..., dict[str, Any]],
          errors: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    """The budget path, built with ``api.spec``'s helpers (passed in: no import cycle)."""
    return {
        "/llm-budget": {
            "get": op("getLlmBudget", "The workspace's daily LLM budget, today's spend and what remains",
                      "workspace:read", {**ok(200, "LlmBudget", "the budget"), **errors()}, tags=("workspace",)),
            "put": op("setLlmBudget", "Lower the workspace's daily LLM budget (raising it, or going back to the "
                      "deployment's default from a lower one, is the operator's: `shiftflow quotas set`)",
                      llm_budget.PERMISSION, {**ok(200, "LlmBudget", "the budget now"), **errors(400, 413, 422)},
                      tags=("workspace",), example={llm_budget.FIELD: "0"},
                      body=closed([llm_budget.FIELD], **{llm_budget.FIELD: _AMOUNT})),
        },
    }


def handlers(result: Callable[..., Any]) -> dict[str, Callable[[Any], Any]]:
    """operationId -> handler of an ``api.handlers.Call``; ``result`` is ``api.handlers.Result``."""

    def put(call: Any) -> Any:
        settings = call.settings or get_settings()
        llm_budget.set_budget(call.actor, call.body.get(llm_budget.FIELD), settings)
        return result(200, llm_budget.read_budget(call.actor, settings))

    return {
        "getLlmBudget": lambda call: result(200, llm_budget.read_budget(call.actor, call.settings or get_settings())),
        "setLlmBudget": put,
    }
