"""The model calls of an agent task's planner step: ``llm_calls.call_llm`` with one call key
per planning round.

``call_llm`` holds each call to the workspace's daily budget, makes it through the task's
LLM connection and records it as an ``llm_call`` row. Keyed by (planner step, round), a
redelivered planner step (its worker died after a round's answer was recorded) reuses that
answer instead of calling again, so a task is planned once and its cost counted once; a
call whose worker died during it is closed FAILED (cost unknown) and asked again.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from shiftflow.kernel.llm import LlmRequest
from shiftflow.kernel.settings import Settings
from shiftflow.models.engine import runs
from shiftflow.models.engine.llm_calls import LLM_PROVIDERS, call_llm
from shiftflow.models.tables.integrations import Connection


@dataclass(frozen=True)
class Answer:
    """A model answer as the planner uses it."""

    text: str
    parsed: Any
    json_error: str | None
    cost_usd: Decimal | None
    #: True when the answer was read back from an earlier delivery's recorded call.
    reused: bool = False


def llm_connections(workspace_id: Any) -> dict[str, str]:
    """The workspace's active LLM connections: name -> provider."""
    rows = Connection.select(Connection.name, Connection.integration).where(
        (Connection.workspace == workspace_id) & (Connection.is_active == True))  # noqa: E712 - peewee
    found = {row.name: row.integration.key for row in rows}
    return {name: key for name, key in found.items() if key in LLM_PROVIDERS}


def complete(claim: runs.Claim, connection: str, round_no: int, request: LlmRequest, settings: Settings) -> Answer:
    """Ask the model for planning round ``round_no`` of the claimed step (or read back the
    answer an earlier delivery recorded).

    Raises:
        LlmConnectionError: the connection is missing, inactive or not a model provider's.
        BudgetExceeded: the workspace's daily LLM budget would be passed (nothing called).
        RateLimited: the provider asked to wait (the step is parked for that long).
        LlmError: the call failed.
    """
    assert claim.step is not None
    result = call_llm(claim.execution.workspace_id, connection, request, execution_id=claim.execution.id,
                      step_execution_id=claim.step.id, call_key=f"plan-{round_no}", inputs={"round": round_no},
                      settings=settings)
    answer = result.completion
    return Answer(answer.text, answer.parsed, answer.json_error, result.cost, result.reused)
