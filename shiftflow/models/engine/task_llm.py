"""The model calls of an agent task's planner step, each recorded as an ``llm_call`` row.

A small local interface (``client_for``, ``complete``): the engine's general LLM-call
function (budget, connection, the recorded row) can take its place without changing the
planner. What it guarantees:

* one row per call attempt, keyed within the step by the planning round
  (``inputs.round``): the row is written RUNNING before the call and settled after it;
* a redelivered planner step (its worker died after a call was recorded) reuses the
  recorded answer of that round instead of calling again, so the plan is made once and
  its cost counted once;
* a row left RUNNING by a worker that died mid-call is settled FAILED (its cost unknown)
  and the round is asked again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from shiftflow.kernel.errors import PermanentError
from shiftflow.kernel.llm import LlmRequest, make_client
from shiftflow.kernel.llm.base import ProviderClient
from shiftflow.kernel.llm.prices import price_table
from shiftflow.kernel.secretbox import vault_for
from shiftflow.kernel.settings import Settings
from shiftflow.models.engine import runs
from shiftflow.models.tables.base import utcnow
from shiftflow.models.tables.integrations import Connection
from shiftflow.models.tables.llm_calls import LlmCall

#: Integrations whose connections hold a model provider's key.
LLM_PROVIDERS = ("openai", "anthropic")
#: Integration credential fields renamed for the LLM client (the catalogue's anthropic
#: connection calls its API version ``version``).
_RENAMED = {"anthropic": {"version": "anthropic_version"}}
ABANDONED = "abandoned: the worker died during the call (its cost is unknown)"


class MissingLlmConnection(PermanentError):
    """The task names no usable LLM connection (missing, inactive, or not a model provider)."""


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


def client_for(workspace_id: Any, name: str, settings: Settings) -> tuple[ProviderClient, str]:
    """A client for the workspace's LLM connection ``name``, and its provider.

    Raises:
        MissingLlmConnection: no active connection of that name, or not a model provider's.
        InvalidCredentials: its credentials do not fit the provider (the field named).
    """
    row = Connection.get_or_none((Connection.workspace == workspace_id) & (Connection.name == name)
                                 & (Connection.is_active == True))  # noqa: E712 - peewee expression
    if row is None:
        raise MissingLlmConnection(f"connection {name!r}: no active connection of that name in this workspace")
    provider = row.integration.key
    if provider not in LLM_PROVIDERS:
        raise MissingLlmConnection(f"connection {name!r} is a {provider} connection, not a model provider's "
                                   f"({', '.join(LLM_PROVIDERS)})")
    stored: Mapping[str, Any] = vault_for(settings.secret_keys).decrypt(row.credentials)
    renamed = _RENAMED.get(provider, {})
    credentials = {renamed.get(k, k): v for k, v in stored.items()}
    client = make_client(provider, credentials, timeout=settings.llm_timeout_seconds,
                         allow_private=settings.http_allow_private)
    return client, provider


def complete(claim: runs.Claim, round_no: int, request: LlmRequest, client: ProviderClient, provider: str,
             settings: Settings) -> Answer:
    """Ask the model once for planning round ``round_no`` of the claimed step (or read back
    the answer an earlier delivery recorded), recording the call.

    Raises:
        LlmError (permanent or transient): the call failed; its row says why.
    """
    step = claim.step
    assert step is not None
    with runs.transaction():
        rows = list(LlmCall.select().where(LlmCall.step_execution == step.id).order_by(LlmCall.attempt))
        for row in rows:
            if row.status == "SUCCEEDED" and (row.inputs or {}).get("round") == round_no:
                return Answer(row.output or "", row.validated_output, (row.validation_errors or {}).get("error"),
                              row.cost_usd, reused=True)
        LlmCall.update(status="FAILED", error=ABANDONED, completed_at=utcnow()).where(
            (LlmCall.step_execution == step.id) & (LlmCall.status == "RUNNING")).execute()
        now = utcnow()
        record = LlmCall.create(workspace=claim.execution.workspace_id, execution=claim.execution.id,
                                step_execution=step.id, attempt=len(rows) + 1, provider=provider,
                                model=request.model, status="RUNNING", inputs={"round": round_no},
                                validation_status="PENDING", created_at=now, started_at=now)
    try:
        answer = client.complete(request)
    except Exception as exc:
        LlmCall.update(status="FAILED", error=str(exc)[:2000], completed_at=utcnow()).where(
            LlmCall.id == record.id).execute()
        raise
    table = price_table(settings)
    cost = (table.cost(answer.model, answer.tokens_in, answer.tokens_out, asked=request.model)
            if answer.usage_reported and (table.knows(answer.model) or table.knows(request.model)) else None)
    LlmCall.update(status="SUCCEEDED", model=answer.model, provider_call_id=answer.response_id,
                   output=answer.text, validated_output=answer.parsed,
                   validation_status="PASSED" if answer.json_error is None else "FAILED",
                   validation_errors={"error": answer.json_error} if answer.json_error else None,
                   token_usage=answer.token_usage(), latency_ms=answer.latency_ms, cost_usd=cost,
                   completed_at=utcnow()).where(LlmCall.id == record.id).execute()
    return Answer(answer.text, answer.parsed, answer.json_error, cost)
