"""One call of a ``tool`` step: its tool, its connection, and the records a person reads.

``prepare`` resolves the step's tool (``kernel.tools.registry``) and, in one short
transaction before the call, writes the tool execution row (RUNNING, the attempt number,
the input with secrets masked) and the message's queue job (RUNNING); a worker killed
during the call leaves both RUNNING, so what it was doing stays visible. ``ToolCall.run``
checks the rendered parameters against the tool's schema (``steps[3].with.to: ...``),
hands the tool the decrypted credentials of the step's ``connection`` (only that one, only
in this worker, of the execution's own workspace) and calls it. A connection of a catalogue
integration is held to its rate limits (``kernel.integrations.ratelimit``): a limit
reached, or a 429 that starts a cool-down, is ``RateLimited`` with the seconds to wait,
which the step loop turns into a durable park.

The outcome (status, output or error, duration; the job's status and timings) is written
by ``ToolCall.finished`` *inside* the transaction that records the step's result, so the
step, its tool execution and its job never disagree.

``tool_execution`` is the table of seed 004; ``queue_job`` holds one row per message of a
tool step (its Dramatiq message id): queue, actor, status, attempts (deliveries of that
message), max attempts (the step's retries + 1) and timings. A parked retry is a new
message and so a new job; the step's row ties them together.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dramatiq.middleware import CurrentMessage

from shiftflow.kernel.artifacts import ArtifactStore, make_store
from shiftflow.kernel.contracts import Queue
from shiftflow.kernel.db import database
from shiftflow.kernel.definition import Step
from shiftflow.kernel.errors import RateLimited, ToolError
from shiftflow.kernel.integrations import ratelimit
from shiftflow.kernel.integrations.catalogue import default_catalogue
from shiftflow.kernel.integrations.connections import tool_credentials
from shiftflow.kernel.integrations.oauth2 import OAuth2Client, TokenSet, merge_tokens
from shiftflow.kernel.redis_handle import get_redis
from shiftflow.kernel.secretbox import vault_for
from shiftflow.kernel.settings import Settings, get_settings
from shiftflow.kernel.tools.base import Tool, ToolContext, ToolLimits
from shiftflow.kernel.tools.registry import default_registry
from shiftflow.models.engine import runs, step_artifacts
from shiftflow.models.tables.base import utcnow
from shiftflow.models.tables.integrations import Connection
from shiftflow.models.tables.queue_jobs import QueueJob
from shiftflow.models.tables.tools import Tool as ToolRow
from shiftflow.models.tables.tools import ToolExecution, WorkspaceTool

#: Longest error text kept on a tool execution or a job row.
MAX_ERROR_CHARS = 4000

#: The error of a tool execution whose worker died during the call.
ABANDONED = "abandoned: the worker died during the call (the step was taken over)"

#: Catalogue categories of the ``tool`` table by registry category (the rest: GENERAL).
_CATEGORIES = {"email": "EMAIL", "browser": "BROWSER", "media": "FILE", "http": "API", "notify": "SOCIAL"}


def tool_of(step: Step) -> Tool:
    """The registered tool a ``tool`` step calls.

    Raises:
        UnknownTool: not registered in this process (a plugin missing from this pool).
    """
    return default_registry().get(str(step.tool))


_STORE_SETTINGS: dict[int, ArtifactStore] = {}
_store_lock = threading.Lock()


def artifact_store(settings: Settings) -> ArtifactStore:
    """The process's artifact store for ``settings`` (built once: an S3 client is costly)."""
    key = id(settings)
    with _store_lock:
        if key not in _STORE_SETTINGS:
            _STORE_SETTINGS[key] = make_store(settings)
        return _STORE_SETTINGS[key]


def catalogue_row(tool: Tool) -> ToolRow:
    """The ``tool`` catalogue row of ``tool``, created from its declaration on first use."""
    row: ToolRow | None = ToolRow.get_or_none(ToolRow.name == tool.name)
    if row is None:
        ToolRow.insert(name=tool.name, display_name=tool.name, description=tool.description,
                       category=_CATEGORIES.get(tool.category, "GENERAL"), parameters_schema=dict(tool.params_schema),
                       output_schema=dict(tool.result_schema), queue=tool.queue,
                       created_at=utcnow(), updated_at=utcnow()).on_conflict_ignore().execute()
        row = ToolRow.get(ToolRow.name == tool.name)
    return row


class ConnectionTokens:
    """``oauth2.TokenStore`` over the connection table, scoped to one workspace: a refresh
    may rotate the refresh token, which is stored (locked, encrypted) before anything else.
    Used by tool steps and by the connection test of ``manage.connections``."""

    def __init__(self, workspace_id: Any, settings: Settings | None = None) -> None:
        self.workspace_id, self.settings = workspace_id, settings

    def _vault(self) -> Any:
        return vault_for((self.settings or get_settings()).secret_keys)

    def load(self, connection_id: str) -> Mapping[str, Any] | None:
        """The connection's credentials, decrypted; None once it is deleted."""
        row = Connection.get_or_none((Connection.id == connection_id) & (Connection.workspace == self.workspace_id))
        return None if row is None else self._vault().decrypt(row.credentials)

    def save(self, connection_id: str, tokens: TokenSet) -> None:
        """Merge ``tokens`` into the credentials, encrypt and write (``expires_at`` in clear)."""
        vault = self._vault()
        with database.atomic():
            row = Connection.select().where((Connection.id == connection_id)
                                            & (Connection.workspace == self.workspace_id)).for_update().first()
            if row is None:
                return
            row.credentials = vault.encrypt(merge_tokens(vault.decrypt(row.credentials), tokens))
            row.key_id = vault.current_key_id
            row.expires_at = (dt.datetime.fromtimestamp(tokens.expires_at, dt.UTC).replace(tzinfo=None)
                              if tokens.expires_at else None)
            row.save()


_oauth2_clients: dict[tuple[int, int, int], OAuth2Client] = {}
_oauth2_lock = threading.Lock()


def oauth2_client(settings: Settings) -> OAuth2Client:
    """The process's token client for ``settings``: ``SHIFTFLOW_OAUTH2_*``, and its refresh
    lock in Redis when Redis is configured, so that two worker *processes* meeting an
    expired token refresh once (a per-process lock let both refresh, and with rotation the
    second presented a used-up refresh token: ``invalid_grant``)."""
    client = get_redis()
    key = (os.getpid(), id(settings), id(client))
    with _oauth2_lock:
        if key not in _oauth2_clients:
            _oauth2_clients[key] = OAuth2Client.from_settings(settings, redis_client=client)
        return _oauth2_clients[key]


@dataclass(frozen=True)
class Resolved:
    """A step's connection, ready for its tool: the credentials, and the catalogue
    integration and connection id its rate limits are kept under (None: no limits apply)."""

    credentials: dict[str, Any]
    integration: str | None = None
    connection_id: str | None = None
    #: The connection's own rate limits (``connection.rate_limits``; None: the integration's).
    rate_limits: dict[str, Any] | None = None


def credentials_for(workspace_id: Any, name: str | None, tool: Tool, settings: Settings) -> Resolved:
    """The decrypted credentials of the workspace connection ``name``, shaped for ``tool``.

    Raises:
        ToolError: no active connection of that name in the workspace, or one of an
            integration the tool does not take (``connection: ...``, never a value).
    """
    if not name:
        return Resolved({})
    row = _connection_row(workspace_id, name)
    if row is None:
        raise ToolError(f"connection: no active connection {name!r} in this workspace")
    key = row.integration.key
    credentials = vault_for(settings.secret_keys).decrypt(row.credentials)
    catalogue = default_catalogue()
    if key not in catalogue:
        # A custom integration (``store_connection``): its credentials pass as they are.
        return Resolved(dict(credentials))
    integration = catalogue.check_tool(tool.name, key)
    shaped = tool_credentials(integration, tool.name, str(row.id), credentials,
                              oauth2=oauth2_client(settings),
                              store=ConnectionTokens(workspace_id, settings))
    return Resolved(shaped, key, str(row.id), dict(row.rate_limits) if row.rate_limits else None)


def _current_message() -> Any:
    return CurrentMessage.get_current_message()


@dataclass
class ToolCall:
    """One prepared call of a tool step (see the module docstring)."""

    claim: runs.Claim
    step: Step
    tool: Tool
    record_id: Any
    settings: Settings
    job_id: str | None = None
    #: The step's connection: its id and its integration's key (None: no connection).
    connection_id: str | None = None
    integration: str | None = None
    started: float = field(default_factory=time.perf_counter)
    #: The files the call stored (rows written by ``finished`` when it succeeded).
    artifacts: step_artifacts.StepArtifacts | None = None

    @property
    def where(self) -> str:
        """``steps[3].with``: the prefix of the field paths in parameter errors."""
        index = [s.id for s in self.claim.definition.steps].index(self.step.id)
        return f"steps[{index}].with"

    def run(self, params: Any, scrub: Any) -> dict[str, Any]:
        """Check the rendered ``params``, give the tool its connection and call it.

        Raises:
            InvalidParameters: the rendered parameters fail the tool's schema.
            PermanentError / TransientError: from the connection or the tool.
        """
        self.tool.validate(params, where=self.where)
        execution, step_row = self.claim.execution, self.claim.step
        assert step_row is not None
        # Only artifacts of this workspace may be read (``steps[2].with.input: ...`` otherwise).
        inputs = step_artifacts.allowed_inputs(self.tool, params, execution.workspace_id, self.where)
        connection = credentials_for(execution.workspace_id, self.step.connection, self.tool, self.settings)
        if connection.integration is not None and connection.connection_id is not None:
            # The integration's rate limits, shared by every worker (docs/integrations.md),
            # with the connection's own limits when it has some.
            wait = ratelimit.acquire(connection.integration, connection.connection_id,
                                     override=connection.rate_limits)
            if wait:
                raise RateLimited(f"connection {self.step.connection!r}: the {connection.integration} rate limit "
                                  f"is reached (not called)", retry_after=wait)
        self.artifacts = step_artifacts.StepArtifacts(artifact_store(self.settings), inputs)
        ctx = ToolContext(
            artifacts=self.artifacts,
            credentials=connection.credentials,
            limits=ToolLimits.from_settings(self.settings),
            allow_private=self.settings.http_allow_private,
            # Stable across retries of this step (an email's Message-ID lets the far side de-duplicate).
            idempotency_key=f"{execution.id}.{step_row.step_id}.{step_row.iteration}",
            settings=self.settings,
        )
        try:
            answer = self._call(params, ctx, connection)
        except BaseException:
            # A failed call keeps none of its files (an oversize second file, a timeout
            # after the first): nothing half-written.
            self.artifacts.discard()
            raise
        result: dict[str, Any] = scrub(answer)
        return result

    def _call(self, params: Any, ctx: ToolContext, connection: Resolved) -> Any:
        try:
            return self.tool.call(params, ctx)
        except RateLimited as exc:
            if connection.integration is None or connection.connection_id is None:
                raise
            # Every worker's next call on this connection (or integration) waits out the cool-down.
            wait = ratelimit.cool_down(connection.integration, connection.connection_id, exc)
            raise RateLimited(str(exc), retry_after=wait) from None

    def finished(self, status: str, *, output: Any = None, error: str | None = None, retrying: bool = False) -> None:
        """Record the outcome on the tool execution and the job (call inside the step's transaction)."""
        now = utcnow()
        text = error[:MAX_ERROR_CHARS] if error else None
        ToolExecution.update(status=status, output=output, error=text, completed_at=now,
                             duration_ms=max(0, int((time.perf_counter() - self.started) * 1000))).where(
            (ToolExecution.id == self.record_id) & (ToolExecution.status == "RUNNING")).execute()
        if self.job_id is not None:
            job = "RETRYING" if retrying else status
            QueueJob.update(status=job, error=text, completed_at=None if retrying else now,
                            failed_at=now if status == "FAILED" and not retrying else None,
                            progress=100 if status == "SUCCEEDED" else QueueJob.progress).where(
                QueueJob.message_id == self.job_id).execute()
        if status == "SUCCEEDED":
            ToolRow.update(usage_count=ToolRow.usage_count + 1).where(ToolRow.name == self.tool.name).execute()
            if self.artifacts is not None and self.claim.step is not None:
                # In the step's transaction: a completed step always has its rows, a row its step.
                step_artifacts.record(self.artifacts.made, tool=self.tool.name,
                                      workspace_id=self.claim.execution.workspace_id,
                                      execution_id=self.claim.execution.id, step_execution_id=self.claim.step.id)
        elif self.artifacts is not None:
            self.artifacts.discard()  # the call answered but its step did not complete


def prepare(claim: runs.Claim, step: Step, stored_input: Any, settings: Settings) -> ToolCall:
    """Resolve the step's tool and write its RUNNING tool execution and queue job rows.

    Raises:
        UnknownTool: the tool is not registered here.
        ToolError: the tool is disabled in the catalogue (``tool.enabled``) or by the
            execution's workspace (``WorkspaceTool``); nothing written.
    """
    assert claim.step is not None
    tool = tool_of(step)
    message = _current_message()
    with runs.transaction():
        row = catalogue_row(tool)
        if not row.enabled:
            raise ToolError(f"tool: {tool.name} is disabled (enable it in the tool catalogue)")
        if WorkspaceTool.disabled(claim.execution.workspace_id, tool.name):
            raise ToolError(f"tool: {tool.name} is disabled in this workspace (shiftflow tools enable)")
        step_row, execution, now = claim.step, claim.execution, utcnow()
        # A RUNNING row of this step is an attempt whose worker died mid-call (this claim
        # took the step over from a holder that is gone): it ended, without an answer.
        ToolExecution.update(status="FAILED", error=ABANDONED, completed_at=now).where(
            (ToolExecution.step_execution == step_row.id) & (ToolExecution.status == "RUNNING")).execute()
        attempt = ToolExecution.select().where(ToolExecution.step_execution == step_row.id).count() + 1
        record = ToolExecution.create(workspace=execution.workspace_id, tool=row.id, execution=execution.id,
                                      step_execution=step_row.id, attempt=attempt, queue=tool.queue,
                                      status="RUNNING", input=runs.masked(stored_input), created_at=now,
                                      started_at=now)
        job_id = _job_started(message, claim, step, tool, now)
    found = _connection_row(execution.workspace_id, step.connection)
    connection_id, integration = (str(found.id), found.integration.key) if found is not None else (None, None)
    return ToolCall(claim, step, tool, record.id, settings, job_id, connection_id=connection_id,
                    integration=integration)


def _connection_row(workspace_id: Any, name: str | None) -> Connection | None:
    if not name:
        return None
    row: Connection | None = Connection.get_or_none(
        (Connection.workspace == workspace_id) & (Connection.name == name)
        & (Connection.is_active == True))  # noqa: E712 - peewee expression
    return row


def job_key(message: Any, step_id: str, iteration: int) -> str | None:
    """The queue job's key: the message id for the step the message names, and the message
    id with the step for a step the same worker continued with (``run_chain``), which rides
    on the same message but is a job of its own (its own attempts, status and timings)."""
    message_id = getattr(message, "message_id", None)
    if not message_id:
        return None
    args = getattr(message, "args", None) or ()
    payload = args[0] if args and isinstance(args[0], dict) else {}
    if payload.get("step_id") == step_id and int(payload.get("iteration", 0) or 0) == iteration:
        return str(message_id)
    # Hashed so that a long step id still fits the 64-character column without colliding.
    step = hashlib.sha256(f"{step_id}\0{iteration}".encode()).hexdigest()[:16]
    return f"{message_id}:{step}"


def _job_started(message: Any, claim: runs.Claim, step: Step, tool: Tool, now: Any) -> str | None:
    """Insert (or, on a redelivery of the same message, count again) the message's job."""
    message_id = job_key(message, claim.step.step_id if claim.step is not None else "",
                         claim.step.iteration if claim.step is not None else 0)
    if not message_id:
        return None  # called outside a worker (a test calling the engine directly)
    assert claim.step is not None
    updated = QueueJob.update(status="RUNNING", attempts=QueueJob.attempts + 1, started_at=now, error=None).where(
        QueueJob.message_id == message_id).execute()
    if not updated:
        QueueJob.insert(workspace=claim.execution.workspace_id, message_id=message_id,
                        queue=getattr(message, "queue_name", None) or tool.queue,
                        actor=getattr(message, "actor_name", None) or Queue.TOOL_ACTORS.get(tool.queue, "tools.call"),
                        execution=claim.execution.id, status="RUNNING", attempts=1, max_attempts=step.retry.max + 1,
                        data={"step_id": claim.step.step_id, "iteration": claim.step.iteration, "tool": tool.name},
                        created_at=now, started_at=now).on_conflict_ignore().execute()
    return str(message_id)
