"""One LLM call made for a step: budget, connection, call, record, rate-limit park.

The one public function::

    call_llm(workspace_id, connection: str, request: LlmRequest, *, execution_id,
             step_execution_id=None, call_key="call", prompt_id=None, prompt_version_id=None,
             inputs=None, timeout=None, settings=None) -> LlmResult

1. **Connection**: the workspace's active connection named ``connection`` must be an
   ``openai`` or ``anthropic`` one; its credentials are decrypted here, in this worker,
   and checked (a connection without ``api_key`` is ``InvalidCredentials`` naming the
   connection and the field, never a value). Its integration's rate limits apply as for
   tool steps: a limit reached is ``RateLimited`` with the wait (nothing called).
2. **Budget and reservation**, in one short transaction holding the workspace's budget
   lock: what the workspace's calls cost today (UTC) plus what unfinished or unknown calls
   may cost (their estimates) plus this call's estimate must stay within the daily budget
   (``workspace.llm_daily_budget_usd``, else ``SHIFTFLOW_LLM_DAILY_BUDGET_USD``), else
   ``BudgetExceeded`` naming the limit and nothing is written. Then a RUNNING ``llm_call``
   row is inserted with the estimate, so concurrent calls see each other's reservations.
3. **The call**, with a per-call deadline (``timeout``, else the request's, else
   ``SHIFTFLOW_LLM_TIMEOUT_SECONDS``).
4. **The record**, committed at once: SUCCEEDED with model, provider, tokens in/out,
   latency, cost (``Decimal``, six places, from the price table) and the whole answer; or
   FAILED with the error. An error answer costs 0; a call whose answer was never read (a
   timeout, a dropped connection) keeps its cost unknown (NULL) and its estimate counted.
5. **Rate limits**: a 429, a 529 or ``overloaded_error`` is re-raised as ``RateLimited``
   with the provider's wait (and starts the connection's cool-down), which the step loop
   (``run_step``) turns into a durable park for that long: the engine's Retry-After path.

**Once per step.** A step's call is keyed by (step execution, ``call_key``). When the step
is delivered again after its worker died (between the answer and the step's own commit),
the recorded SUCCEEDED answer is returned (``LlmResult.reused``) instead of calling and
paying again. A RUNNING row under the same key is a call whose worker died during it: it
is closed FAILED (``abandoned``), its estimate stays counted against the budget (the
provider may have billed it), and the call is made again under a new attempt number.
A caller making several calls in one step (validation retries, agent turns) gives each its
own ``call_key``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import peewee

from shiftflow.kernel.db import database
from shiftflow.kernel.errors import PermanentError, RateLimited
from shiftflow.kernel.integrations import ratelimit
from shiftflow.kernel.llm import (
    Completion,
    InvalidCredentials,
    LlmError,
    LlmRateLimited,
    LlmRequest,
    LlmTimeout,
    LlmUnavailable,
    ProviderClient,
    check_budget,
    estimate_cost,
    make_client,
    price_table,
)
from shiftflow.kernel.llm.types import ToolCall
from shiftflow.kernel.secretbox import vault_for
from shiftflow.kernel.settings import Settings, get_settings
from shiftflow.models.tables.base import utcnow
from shiftflow.models.tables.integrations import Connection, Integration
from shiftflow.models.tables.llm_calls import LlmCall
from shiftflow.models.tables.tenancy import Workspace

#: The integrations whose connections reach a model (``kernel/integrations/llm.py``).
LLM_PROVIDERS = ("openai", "anthropic")

#: The error of an LLM call whose worker died during the call.
ABANDONED = "abandoned: the worker died during the call (the step was taken over); its cost is unknown"

#: Longest error text kept on a call row.
MAX_ERROR_CHARS = 4000

#: Provider clients kept open per process (keep-alive pools), by connection and credentials.
MAX_CLIENTS = 64


class LlmConnectionError(PermanentError):
    """Raised when a step's connection is missing, inactive or not an LLM provider's."""


@dataclass(frozen=True)
class Checked:
    """What a caller's check of an answer found, recorded with the answer (``check=``)."""

    status: str  # PASSED, FAILED or SKIPPED
    validated: Any = None
    errors: tuple[str, ...] = ()


@dataclass(frozen=True)
class LlmResult:
    """What one call answered and cost.

    Attributes:
        completion: the provider's answer.
        call_id: the ``llm_call`` row.
        attempt: its attempt number within the step.
        cost: USD, six places; None when the provider reported no usage.
        reused: True when the answer was recorded by an earlier delivery of the step and
            nothing was called now (its cost is counted once, on that row).
        checked: what ``check`` found (SKIPPED without one).
    """

    completion: Completion
    call_id: Any
    attempt: int
    cost: Decimal | None
    reused: bool = False
    checked: Checked = Checked("SKIPPED")

    def output(self) -> dict[str, Any]:
        """The JSON a step outputs: text, parsed JSON, tool calls, usage, cost, model, latency."""
        c = self.completion
        return {
            "text": c.text,
            "json": c.parsed,
            "json_error": c.json_error,
            "tool_calls": [{"id": t.id, "name": t.name, "arguments": t.arguments} for t in c.tool_calls],
            "stop_reason": c.stop_reason,
            "usage": {"input": c.tokens_in, "output": c.tokens_out, "total": c.tokens_total},
            "cost_usd": None if self.cost is None else format(self.cost, "f"),
            "model": c.model,
            "provider": c.provider,
            "latency_ms": c.latency_ms,
            "call_id": str(self.call_id),
        }


# -- connection ----------------------------------------------------------------------------


def _provider_credentials(provider: str, stored: Mapping[str, Any]) -> dict[str, Any]:
    """The catalogue's connection fields as the LLM client takes them: Anthropic's
    ``version`` is the client's ``anthropic_version``, and its base URL is kept without the
    ``/v1`` the catalogue's model-list check appends to."""
    shaped = {k: v for k, v in stored.items() if v is not None}
    if provider == "anthropic":
        if "version" in shaped:
            shaped["anthropic_version"] = shaped.pop("version")
        base = str(shaped.get("base_url") or "")
        if base.rstrip("/").endswith("/v1"):
            shaped["base_url"] = base.rstrip("/")[: -len("/v1")]
    return shaped


@dataclass(frozen=True)
class _Connection:
    id: str
    name: str
    provider: str
    credentials: dict[str, Any]


def _connection(workspace_id: Any, name: str, settings: Settings) -> _Connection:
    if not name:
        raise LlmConnectionError("connection: an LLM call needs a connection (an openai or anthropic one)")
    row: Connection | None = (Connection.select(Connection, Integration).join(Integration).where(
        (Connection.workspace == workspace_id) & (Connection.name == name)
        & (Connection.is_active == True)).first())  # noqa: E712 - peewee expression
    if row is None:
        raise LlmConnectionError(f"connection: no active connection {name!r} in this workspace")
    provider = row.integration.key
    if provider not in LLM_PROVIDERS:
        raise LlmConnectionError(f"connection: {name!r} is a {provider} connection, not an LLM provider's "
                                 f"(expected one of {', '.join(LLM_PROVIDERS)})")
    stored = vault_for(settings.secret_keys).decrypt(row.credentials)
    return _Connection(str(row.id), name, provider, _provider_credentials(provider, stored or {}))


_clients: OrderedDict[tuple[Any, ...], ProviderClient] = OrderedDict()
_clients_lock = threading.Lock()


def _client(conn: _Connection, settings: Settings) -> ProviderClient:
    """A provider client for the connection, reused while its credentials are unchanged."""
    digest = hashlib.sha256(json.dumps(conn.credentials, sort_keys=True).encode()).hexdigest()
    key = (conn.id, digest, settings.llm_timeout_seconds, settings.http_allow_private)
    with _clients_lock:
        found = _clients.get(key)
        if found is not None:
            _clients.move_to_end(key)
            return found
    try:
        client = make_client(conn.provider, conn.credentials, timeout=settings.llm_timeout_seconds,
                             allow_private=settings.http_allow_private)
    except InvalidCredentials as exc:
        raise InvalidCredentials(f"connection {conn.name!r}: {exc}") from None
    with _clients_lock:
        _clients[key] = client
        while len(_clients) > MAX_CLIENTS:
            _clients.popitem(last=False)[1].close()
    return client


# -- budget ----------------------------------------------------------------------------------


def daily_budget(workspace_id: Any, settings: Settings | None = None) -> Decimal | None:
    """The workspace's daily LLM budget in USD: its own, else the deployment's; None: no limit."""
    own = Workspace.select(Workspace.llm_daily_budget_usd).where(Workspace.id == workspace_id).scalar()
    if own is not None:
        return Decimal(own)
    configured = (settings or get_settings()).llm_daily_budget_usd
    return Decimal(configured) if configured else None


def today_start(now: dt.datetime | None = None) -> dt.datetime:
    """Midnight UTC of today (naive, as every timestamp column)."""
    now = now or utcnow()
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


def spent_today(workspace_id: Any) -> Decimal:
    """What the workspace's LLM calls cost today (UTC): known costs, plus the estimates of
    calls whose cost is not known (running, timed out, abandoned)."""
    counted = peewee.fn.COALESCE(LlmCall.cost_usd, LlmCall.cost_estimate_usd, 0)
    total = LlmCall.select(peewee.fn.SUM(counted)).where(
        (LlmCall.workspace == workspace_id) & (LlmCall.created_at >= today_start())).scalar()
    return Decimal(total or 0).quantize(Decimal("0.000001"))


def _lock_budget(workspace_id: Any) -> None:
    """Serialise the budget checks of one workspace until the transaction ends (PostgreSQL;
    SQLite, dev mode's database, has one writer at a time anyway)."""
    if isinstance(database.obj, peewee.PostgresqlDatabase):
        database.execute_sql("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                             (f"shiftflow.llm_budget:{workspace_id}",))


# -- records ---------------------------------------------------------------------------------


def completion_json(completion: Completion) -> dict[str, Any]:
    """A ``Completion`` as the JSON kept in ``llm_call.response``."""
    return dataclasses.asdict(completion)


def completion_from_json(data: Mapping[str, Any]) -> Completion:
    """The ``Completion`` recorded by ``completion_json``."""
    fields = dict(data)
    fields["tool_calls"] = tuple(ToolCall(**t) for t in fields.get("tool_calls") or ())
    return Completion(**fields)


@dataclass
class _Reservation:
    row_id: Any = None
    attempt: int = 0
    reused: LlmResult | None = None


def _reserve(workspace_id: Any, conn: _Connection, request: LlmRequest, estimate: Decimal, *, execution_id: Any,
             step_execution_id: Any, call_key: str, prompt_id: Any, prompt_version_id: Any,
             inputs: Mapping[str, Any] | None, budget: Decimal | None) -> _Reservation:
    now = utcnow()
    with database.atomic():
        if budget is not None:
            _lock_budget(workspace_id)
        attempt = 1
        if step_execution_id is not None:
            earlier = list(LlmCall.select().where(LlmCall.step_execution == step_execution_id)
                           .order_by(LlmCall.attempt))
            for row in earlier:
                if row.call_key == call_key and row.status == "SUCCEEDED" and row.response:
                    # Paid for by an earlier delivery of this step: not called, not counted again.
                    cost = None if row.cost_usd is None else Decimal(row.cost_usd)
                    return _Reservation(row.id, row.attempt, LlmResult(
                        completion_from_json(row.response), row.id, row.attempt, cost, reused=True))
            if any(r.call_key == call_key and r.status == "RUNNING" for r in earlier):
                LlmCall.update(status="FAILED", error=ABANDONED, completed_at=now).where(
                    (LlmCall.step_execution == step_execution_id) & (LlmCall.call_key == call_key)
                    & (LlmCall.status == "RUNNING")).execute()
            attempt = max([r.attempt for r in earlier], default=0) + 1
        if budget is not None:
            slug = Workspace.select(Workspace.slug).where(Workspace.id == workspace_id).scalar()
            check_budget(spent_today(workspace_id), estimate, budget, workspace=slug)
        row = LlmCall.create(workspace=workspace_id, execution=execution_id, step_execution=step_execution_id,
                             attempt=attempt, prompt=prompt_id, prompt_version=prompt_version_id,
                             provider=conn.provider, model=request.model, status="RUNNING",
                             inputs=dict(inputs or {}), call_key=call_key, cost_estimate_usd=estimate,
                             created_at=now, started_at=now)
    return _Reservation(row.id, attempt)


def _unknown_cost(exc: BaseException) -> bool:
    """True when the provider may have run (and billed) the call: no answer was read."""
    return isinstance(exc, LlmTimeout) or (isinstance(exc, LlmUnavailable) and exc.status is None)


def _failed(row_id: Any, exc: BaseException) -> None:
    now = utcnow()
    with database.atomic():
        row = LlmCall.get_by_id(row_id)
        if row.status != "RUNNING":
            return
        row.status, row.error, row.completed_at = "FAILED", str(exc)[:MAX_ERROR_CHARS], now
        row.validation_status = "SKIPPED"
        if row.started_at is not None:
            row.latency_ms = max(1, int((now - row.started_at).total_seconds() * 1000))
        # An error answer is not billed; an answer never read may have been (the estimate stays counted).
        row.cost_usd = None if _unknown_cost(exc) else Decimal(0)
        if isinstance(exc, LlmError):
            row.provider_call_id = exc.request_id
        row.save()


def _succeeded(row_id: Any, completion: Completion, cost: Decimal | None, checked: Checked) -> None:
    LlmCall.update(status="SUCCEEDED", output=completion.text, token_usage=completion.token_usage(),
                   latency_ms=completion.latency_ms, cost_usd=cost, model=completion.model,
                   provider_call_id=completion.response_id or completion.request_id,
                   response=completion_json(completion), validation_status=checked.status,
                   validated_output=checked.validated if checked.status == "PASSED" else None,
                   validation_errors=list(checked.errors) or None, completed_at=utcnow()).where(
        LlmCall.id == row_id).execute()


# -- the call --------------------------------------------------------------------------------


def call_llm(workspace_id: Any, connection: str, request: LlmRequest, *, execution_id: Any,
             step_execution_id: Any = None, call_key: str = "call", prompt_id: Any = None,
             prompt_version_id: Any = None, inputs: Mapping[str, Any] | None = None,
             timeout: float | None = None, settings: Settings | None = None,
             check: Callable[[Completion], Checked] | None = None) -> LlmResult:
    """Make one LLM call for a step of an execution, held to the workspace's daily budget
    and recorded as an ``llm_call`` row (see the module docstring).

    Parameters:
        workspace_id: the execution's workspace.
        connection: the name of the workspace's ``openai`` or ``anthropic`` connection.
        request: what to ask.
        execution_id, step_execution_id: what the call belongs to (the step may be None
            for a call outside a step; such a call is never reused).
        call_key: the call's name within its step (distinct per call of one step).
        prompt_id, prompt_version_id, inputs: the prompt run this call serves, if any.
        timeout: this call's deadline in seconds (else the request's, else the setting).
        check: judges the answer (validation); its outcome is written with the answer
            (``validation_status``, ``validated_output``, ``validation_errors``), in the
            same statement. Without it the validation status is SKIPPED.

    Raises:
        LlmConnectionError: no such active connection, or not an LLM provider's.
        InvalidCredentials: the connection lacks ``api_key`` (or has a malformed field).
        UnknownModelPrice: the model has no price (its cost could not be counted).
        BudgetExceeded: the call could take the workspace past its daily budget.
        RateLimited: the connection's rate limit is reached, or the provider answered
            429/529/overloaded; ``retry_after`` is the wait (the step parks that long).
        LlmError / InvalidLlmRequest: the provider refused or failed (recorded FAILED).
    """
    settings = settings or get_settings()
    conn = _connection(workspace_id, connection, settings)
    client = _client(conn, settings)  # checks the credentials before anything is written
    if timeout is not None:
        request = dataclasses.replace(request, timeout=timeout)
    table = price_table(settings)
    estimate = estimate_cost(request, table)
    wait = ratelimit.default_limiter().acquire(conn.provider, conn.id)
    if wait:
        raise RateLimited(f"connection {connection!r}: the {conn.provider} rate limit is reached (not called)",
                          retry_after=wait)
    reserved = _reserve(workspace_id, conn, request, estimate, execution_id=execution_id,
                        step_execution_id=step_execution_id, call_key=call_key, prompt_id=prompt_id,
                        prompt_version_id=prompt_version_id, inputs=inputs,
                        budget=daily_budget(workspace_id, settings))
    if reserved.reused is not None:
        done = reserved.reused
        return dataclasses.replace(done, checked=check(done.completion)) if check is not None else done
    try:
        completion = client.complete(request)
    except LlmRateLimited as exc:
        _failed(reserved.row_id, exc)
        waited = ratelimit.default_limiter().cool_down(conn.provider, conn.id, exc) if exc.retry_after else None
        raise RateLimited(str(exc), retry_after=waited) from None
    except BaseException as exc:
        _failed(reserved.row_id, exc)
        raise
    cost = table.cost(completion.model, completion.tokens_in, completion.tokens_out,
                      asked=request.model) if completion.usage_reported else None
    checked = check(completion) if check is not None else Checked("SKIPPED")
    _succeeded(reserved.row_id, completion, cost, checked)
    return LlmResult(completion, reserved.row_id, reserved.attempt, cost, checked=checked)
