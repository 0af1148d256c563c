"""Webhook ingress: ``POST /hooks/{token}`` -> verified, deduplicated trigger on RabbitMQ.

The ingress is thin (DESIGN.md 1): it checks the request (type, size, token, signature,
JSON), builds a ``TriggerPayload`` whose dedup key is ``{scheme}:{delivery id}``,
publishes it to ``triggers.start`` and answers 202 only after the publish returned,
which with publisher confirms means RabbitMQ has the message on disk. It never answers
2xx for a trigger that could still be lost: anything uncertain is a 503 with
``Retry-After``, so the sender retries and the trigger actor's dedup key absorbs a
duplicate. It never waits for the workflow to run.

Status codes (all error bodies are ``{"error": "<reason>"}``):

===  =======================  ==========================================================
202  accepted                 published; body ``{"status", "execution_key", "workflow_id"}``
400  bad_request              malformed Content-Length, client went away mid-body
401  unauthorized             signature, timestamp or signature header wrong or missing
404  not_found                unknown token, inactive webhook or workflow not ACTIVE
413  too_large                body above ``webhook_max_body_bytes`` (declared or streamed)
415  unsupported_media_type   not ``application/json``/``*+json``, or a compressed body
422  invalid                  not JSON, not an object, or not storable (NaN, 1e999, NUL, depth)
429  over_quota               the workspace's webhook quota is used up (``Retry-After``)
503  queue_full               the ``triggers`` queue is at its length limit (``Retry-After``)
503  unavailable              broker refused or timed out, or webhook store down
===  =======================  ==========================================================

Quotas (``kernel.quota``, ``models.manage.quotas``): each workspace has a token bucket of
accepted webhooks, shared by every ingress process through Redis when
``SHIFTFLOW_REDIS_URL`` is set. It is checked after the signature, so only its own
authentic, well-formed webhooks spend a workspace's quota (an unsigned flood is a cheap
401 and cannot use up another tenant's budget), and before the publish, so a refused
webhook never reaches the queue.

``GET /healthz`` is liveness (200 while the process serves); ``GET /readyz`` is readiness:
200 when the publisher is connected to RabbitMQ and the database answers, else 503
naming what is not (``kernel.readiness``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.to_thread
from prometheus_client import Counter, Histogram
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shiftflow.kernel import readiness, storable
from shiftflow.kernel.broker import max_lengths
from shiftflow.kernel.confirm_publisher import ConfirmPublisher
from shiftflow.kernel.contracts import Priority, Queue, TriggerPayload, execution_id_for
from shiftflow.kernel.db import database
from shiftflow.kernel.enqueue import send
from shiftflow.kernel.errors import QueueFull, SignatureError, TransientError
from shiftflow.kernel.quota import AsyncAdmission, AsyncRedisBuckets, Limit
from shiftflow.kernel.settings import Settings
from shiftflow.kernel.signatures import verify
from shiftflow.producers.ingress import hooks, spec
from shiftflow.producers.ingress.hooks import HookInfo

log = logging.getLogger(__name__)

#: The fixed label values of ``shiftflow_webhooks_total{outcome}``. Duplicates are not
#: an ingress outcome: only the trigger actor knows, and counts them in
#: ``shiftflow_executions_total{outcome="duplicate"}``.
OUTCOMES = (
    "accepted",
    "bad_request",
    "unauthorized",
    "not_found",
    "too_large",
    "unsupported_media_type",
    "invalid",
    "over_quota",
    "queue_full",
    "unavailable",
    "error",
)

WEBHOOKS = Counter("shiftflow_webhooks_total", "Webhook requests by outcome.", ["outcome"])
LATENCY = Histogram(
    "shiftflow_webhook_latency_seconds",
    "Time from request start to response for POST /hooks/{token}, including the broker confirm.",
    ["outcome"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
# Every series created up front so dashboards and alerts see zeros, not gaps; the hot
# path uses these children directly (``labels()`` takes a lock and hashes per call).
WEBHOOKS_BY_OUTCOME = {outcome: WEBHOOKS.labels(outcome) for outcome in OUTCOMES}
LATENCY_BY_OUTCOME = {outcome: LATENCY.labels(outcome) for outcome in OUTCOMES}

#: Seconds a sender should wait before retrying after a 503.
RETRY_AFTER_SECONDS = 5
#: Deepest JSON nesting accepted in a body (``storable.MAX_JSON_DEPTH``).
MAX_JSON_DEPTH = storable.MAX_JSON_DEPTH
#: Threads that may publish at once. Separate from the default pool used by lookups, so
#: publishes stuck on a hung broker (abandoned after the timeout) cannot starve lookups.
PUBLISH_THREADS = 32
#: Seconds the event loop reuses a token's lookup answer before asking ``lookup`` again.
#: ``lookup`` may query PostgreSQL, so it runs in a thread, and at thousands of requests
#: per second that hop cost more CPU than the rest of the lookup; one second is small
#: next to ``hooks.lookup``'s own cache (30 s), so a revoked hook stops within the same time.
#: Requests arriving while a lookup of their token runs wait for that one lookup.
LOOKUP_MEMO_SECONDS = 1.0
#: Tokens remembered at most; a flood of random tokens clears the memo, never grows it.
LOOKUP_MEMO_SIZE = 10_000

Publish = Callable[[TriggerPayload], object]
AsyncPublish = Callable[[TriggerPayload], Awaitable[object]]


class _Rejected(Exception):
    """Internal: stop handling a request with this status, outcome label and reason."""

    def __init__(self, status: int, outcome: str, reason: str, headers: dict[str, str] | None = None):
        super().__init__(reason)
        self.status = status
        self.outcome = outcome
        self.reason = reason
        self.headers = headers


def publish_trigger(payload: TriggerPayload) -> None:
    """Publish ``payload`` to ``triggers.start`` with its priority (the default ``publish``).

    Raises:
        BrokerUnavailable: RabbitMQ could not be reached or did not confirm.
    """
    send("triggers.start", payload, priority=int(Priority.parse(payload.priority)))


def trigger_sender(publisher: ConfirmPublisher) -> AsyncPublish:
    """The async ``publish`` of real mode: ``triggers.start`` through a confirm-pipelining publisher.

    Returns:
        ``await send(payload)`` returns once RabbitMQ confirmed; raises ``BrokerUnavailable``.
    """

    async def send(payload: TriggerPayload) -> str:
        return await publisher.send("triggers.start", payload, priority=int(Priority.parse(payload.priority)))

    return send


#: Renders error and 202 bodies exactly as Starlette's ``JSONResponse`` does.
_render_json = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode


def _error(status: int, reason: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": reason}, status_code=status, headers=headers)


async def _respond(
    send: Send, status: int, content: dict[str, Any], headers: dict[str, str] | None = None
) -> None:
    """Send a JSON response (the same bytes and headers as ``JSONResponse``) at the ASGI level."""
    body = _render_json(content).encode("utf-8")
    raw = [(b"content-length", str(len(body)).encode("latin-1")), (b"content-type", b"application/json")]
    if headers:
        raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class _Headers(Mapping[str, str]):
    """Request headers by case-insensitive name; the first of repeated headers wins (as Starlette's)."""

    __slots__ = ("_by_name",)

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        by_name: dict[str, str] = {}
        for name, value in raw:
            key = name.decode("latin-1").lower()  # ASGI servers send lower case already
            if key not in by_name:
                by_name[key] = value.decode("latin-1")
        self._by_name = by_name

    def get(self, key: str, default: Any = None) -> Any:
        """``Mapping.get`` without raising and catching a KeyError per missing header."""
        return self._by_name.get(key.lower(), default)

    def __getitem__(self, key: str) -> str:
        return self._by_name[key.lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_name)

    def __len__(self) -> int:
        return len(self._by_name)


def _check_content_type(headers: Mapping[str, str]) -> None:
    media_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != "application/json" and not (
        media_type.startswith("application/") and media_type.endswith("+json")
    ):
        raise _Rejected(415, "unsupported_media_type", "content type must be application/json")
    # Signatures cover the bytes as sent; a compressed body would also dodge the size cap.
    encoding = headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise _Rejected(415, "unsupported_media_type", "compressed bodies are not accepted")


async def _read_body(receive: Receive, headers: Mapping[str, str], limit: int) -> bytes:
    """The request body, refused (413) once it is known or seen to exceed ``limit`` bytes."""
    declared = headers.get("content-length")
    if declared is not None:
        declared = declared.strip()
        if not (declared.isascii() and declared.isdigit()):
            raise _Rejected(400, "bad_request", "malformed Content-Length")
        if int(declared) > limit:
            raise _Rejected(413, "too_large", f"body larger than {limit} bytes")  # before reading a byte
    # Chunked bodies declare no length: count while streaming and stop at the limit.
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        kind = message["type"]
        if kind == "http.request":
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > limit:
                    raise _Rejected(413, "too_large", f"body larger than {limit} bytes")
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        elif kind == "http.disconnect":
            raise _Rejected(400, "bad_request", "client disconnected before the body was complete")
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _reject_constant(name: str) -> Any:
    # json accepts NaN/Infinity by default; PostgreSQL jsonb does not, so the trigger
    # actor could never store such a body: refuse it here rather than 202 and lose it.
    raise ValueError(f"{name} is not valid JSON")


class _OutOfRange(ValueError):
    """A number literal Python reads as infinity (``1e999``): valid JSON, not storable."""


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (math.inf, -math.inf):
        raise _OutOfRange("body " + storable.number_problem(f"{text[:40]}: beyond the range of a double"))
    return value


#: ``json.loads(..., parse_constant=...)`` builds a decoder per call; this one is made once.
#: Floats are checked as they are read (the C scanner calls ``parse_float`` per literal), so
#: an overflowing number is caught even when the value walk below is skipped.
_decode_json = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float).decode


def _plainly_storable(body: bytes, encoding: str) -> bool:
    """True when ``body`` cannot hold the text and nesting ``storable.unstorable`` looks for,
    judged from its bytes (numbers are checked while parsing).

    Valid JSON puts no raw control character (NUL included) inside a string, so a NUL or
    a lone surrogate can only come from a ``\\u`` escape, or a surrogate from bytes that are
    not strict UTF-8 (checked by the caller's strict decode); and every level of nesting
    needs a ``{`` or ``[``. Most webhooks pass all three, and skip the walk over every
    value, which was the largest cost of a small webhook's checks.
    """
    return (
        encoding == "utf-8"
        and b"\\u" not in body
        and body.count(b"{") + body.count(b"[") <= MAX_JSON_DEPTH
    )


def _parse_object(body: bytes) -> dict[str, Any]:
    # As json.loads does for bytes: UTF-8, -16 or -32 by the first bytes.
    encoding = json.detect_encoding(body)
    plain = _plainly_storable(body, encoding)
    try:
        try:
            text = body.decode(encoding, "strict" if plain else "surrogatepass")
        except UnicodeDecodeError:
            if not plain:
                raise
            plain = False  # encoded surrogates, say: decode as before and walk the values
            text = body.decode(encoding, "surrogatepass")
        data = _decode_json(text)
    except _OutOfRange as exc:
        raise _Rejected(422, "invalid", str(exc)) from None
    except RecursionError:
        raise _Rejected(422, "invalid", f"body nests deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise _Rejected(422, "invalid", f"body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise _Rejected(422, "invalid", "body must be a JSON object")
    problem = None if plain else storable.unstorable(data)
    if problem:
        raise _Rejected(422, "invalid", f"body {problem}")
    return data


#: A ``/readyz`` check: a coroutine function returning None, or what is wrong.
ReadyCheck = Callable[[], Awaitable[str | None]]
#: Seconds a ``/readyz`` answer is reused: a flood of probes costs the database one query.
READY_MEMO_SECONDS = 1.0


def _publisher_check(publisher: ConfirmPublisher) -> ReadyCheck:
    async def broker() -> str | None:
        if publisher.connected:
            return None
        return f"not connected to RabbitMQ ({publisher.state}{': ' + publisher.last_error if publisher.last_error else ''})"

    return broker


async def _database_check() -> str | None:
    return await anyio.to_thread.run_sync(readiness.database_problem, database, abandon_on_cancel=True)


def _unavailable(reason: str, outcome: str = "unavailable") -> _Rejected:
    return _Rejected(503, outcome, reason, {"Retry-After": str(RETRY_AFTER_SECONDS)})


def _over_quota(limit: Limit, wait: float) -> _Rejected:
    return _Rejected(
        429,
        "over_quota",
        f"webhook quota exceeded: this workspace may send {limit.describe('webhooks')}; "
        "retry after Retry-After seconds",
        {"Retry-After": str(max(1, math.ceil(wait)))},
    )


def create_app(
    settings: Settings,
    *,
    publish: Publish | None = None,
    publish_async: AsyncPublish | None = None,
    lookup: Callable[[str], HookInfo | None] | None = None,
    clock: Callable[[], float] = time.time,
    admission: AsyncAdmission | None = None,
    ready_checks: Mapping[str, ReadyCheck] | None = None,
) -> Starlette:
    """Build the ingress application.

    Parameters:
        settings: reads ``webhook_max_body_bytes``, ``webhook_tolerance_seconds`` and
            ``publish_timeout_seconds``.
        publish: sends one trigger and returns once it is durable, raising
            ``TransientError`` (``BrokerUnavailable``) otherwise. Called in a worker thread
            because it blocks on the broker confirm. Default in dev mode: ``publish_trigger``
            (the in-process broker).
        publish_async: the same contract as a coroutine function, awaited on the event loop
            (many publishes in flight). Default in real mode: a ``ConfirmPublisher`` on
            ``settings.amqp_url`` (``trigger_sender``), opened and closed with the app.
        lookup: token -> ``HookInfo`` or None, may raise ``TransientError``; default the
            cached database lookup ``hooks.lookup`` (the database must be bound).
        clock: Unix time in seconds, for signature timestamps and ``received_at``.
        admission: the workspaces' webhook quotas (``kernel.quota.AsyncAdmission``). Default:
            in-process buckets, which the app's lifespan switches to Redis-shared ones when
            ``settings.redis_url`` is set. Defaults come from ``settings.quota_webhooks_*``,
            a workspace's own from its hook (``HookInfo.quota_rate``/``quota_burst``).
        ready_checks: more ``/readyz`` checks by name (coroutine functions returning None
            or what is wrong), beside the built-in ones: ``broker`` (the app's own
            publisher is connected; real mode without ``publish``/``publish_async``) and
            ``database`` (``SELECT 1``; when ``lookup`` is the database's).

    Returns:
        A Starlette app with ``POST /hooks/{token}``, ``GET /healthz`` (liveness), ``GET /readyz``
        (readiness) and ``GET /openapi.json`` (``ingress_spec``). Metrics are not served here,
        on the public port, but on a listener of their own (``kernel.metrics.serve_registry``,
        started by ``shiftflow ingress`` on ``SHIFTFLOW_METRICS_HOST:SHIFTFLOW_INGRESS_METRICS_PORT``).

    Raises:
        ValueError: both ``publish`` and ``publish_async`` were given.
    """
    if publish is not None and publish_async is not None:
        raise ValueError("give publish or publish_async, not both")
    publisher: ConfirmPublisher | None = None
    if publish is None and publish_async is None and not settings.dev:
        publisher = ConfirmPublisher(settings.amqp_url, queues=(Queue.TRIGGERS,), max_lengths=max_lengths(settings))
        publish_async = trigger_sender(publisher)
    owns_admission = admission is None
    quotas = admission if admission is not None else AsyncAdmission()
    default_quota = Limit(settings.quota_webhooks_per_second, settings.quota_webhooks_burst)
    publish_fn: Publish = publish or publish_trigger
    lookup_fn = lookup or hooks.lookup
    limit = settings.webhook_max_body_bytes
    timeout = settings.publish_timeout_seconds
    publish_limiter = anyio.CapacityLimiter(PUBLISH_THREADS)
    # token -> (reuse until in monotonic seconds, the lookup): see LOOKUP_MEMO_SECONDS.
    memo: dict[str, tuple[float, asyncio.Task[HookInfo | None]]] = {}

    def forget_failed(token: str, task: asyncio.Task[HookInfo | None]) -> None:
        # A failed lookup (store down) is not remembered: the next request asks again.
        if task.cancelled() or task.exception() is not None:
            if memo.get(token, (0.0, None))[1] is task:
                del memo[token]

    async def find_hook(token: str) -> HookInfo | None:
        now = time.monotonic()
        remembered = memo.get(token)
        if remembered is None or now >= remembered[0]:
            # A lookup may query PostgreSQL: keep it off the event loop. A task of its own,
            # so that a caller who goes away does not cancel it for the others waiting.
            task = asyncio.ensure_future(anyio.to_thread.run_sync(lookup_fn, token))
            task.add_done_callback(lambda done: forget_failed(token, done))
            if len(memo) >= LOOKUP_MEMO_SIZE:
                memo.clear()
            remembered = memo[token] = (now + LOOKUP_MEMO_SECONDS, task)
        if remembered[1].done():
            return remembered[1].result()  # the common case: no awaiting at all
        return await asyncio.shield(remembered[1])

    tolerance = settings.webhook_tolerance_seconds

    async def accept(scope: Scope, receive: Receive) -> dict[str, Any]:
        """Check, build and publish one webhook; the 202 body, or raise ``_Rejected``."""
        headers = _Headers(scope["headers"])
        _check_content_type(headers)
        body = await _read_body(receive, headers, limit)
        token = scope["path_params"]["token"]
        try:
            hook = await find_hook(token)
        except TransientError as exc:
            log.warning("webhook lookup failed: %s", exc)
            raise _unavailable("webhook store unavailable, retry later") from None
        if hook is None or not hook.active:
            raise _Rejected(404, "not_found", "unknown webhook")
        now = clock()
        try:
            delivery_id = verify(hook.scheme, hook.secrets, headers, body, now, tolerance)
        except SignatureError as exc:
            raise _Rejected(401, "unauthorized", str(exc)) from None
        payload = TriggerPayload(
            workflow_id=hook.workflow_id,
            dedup_key=f"{hook.scheme}:{delivery_id}",
            source="webhook",
            data=_parse_object(body),
            received_at=now,
            priority=Priority.NORMAL.name,
        )
        quota = (
            default_quota
            if hook.quota_rate is None and hook.quota_burst is None
            else Limit(
                settings.quota_webhooks_per_second if hook.quota_rate is None else hook.quota_rate,
                settings.quota_webhooks_burst if hook.quota_burst is None else hook.quota_burst,
            )
        )
        if not quota.unlimited:
            key = "webhooks:" + hook.workspace_id
            wait = quotas.try_admit(key, quota)
            if wait is None:  # this process holds no token of the shared bucket: lease some
                wait = await quotas.admit(key, quota)
            if wait > 0:
                raise _over_quota(quota, wait)
        try:
            # On timeout we answer 503 at once; the publish may still be confirmed later
            # (the thread is abandoned, or the message stays unconfirmed in the publisher),
            # which is safe because the sender's retry carries the same dedup key and the
            # trigger actor creates the execution once.
            if publish_async is not None:
                # asyncio's own timeout: the publisher is asyncio-bound anyway, and an anyio
                # cancel scope costs several times more per request.
                async with asyncio.timeout(timeout):
                    await publish_async(payload)
            else:
                with anyio.fail_after(timeout):
                    await anyio.to_thread.run_sync(
                        publish_fn, payload, abandon_on_cancel=True, limiter=publish_limiter
                    )
        except TimeoutError:
            log.warning("publish of %s timed out after %s s", payload.dedup_key, timeout)
            raise _unavailable(f"broker did not confirm within {timeout:g} s, retry later") from None
        except QueueFull:
            # Nothing was queued (reject-publish): never a 202 for it. No warning per request
            # (a full queue refuses thousands a second); shiftflow_webhooks_total counts them.
            raise _unavailable("the trigger queue is full, retry later", "queue_full") from None
        except TransientError as exc:
            # The detail (hosts, broker errors) goes to the log, not to the caller.
            log.warning("publish of %s failed: %s", payload.dedup_key, exc)
            raise _unavailable("broker unavailable, retry later") from None
        return {
            "status": "accepted",
            "execution_id": str(execution_id_for(hook.workflow_id, payload.dedup_key)),
            "execution_key": payload.dedup_key,
            "workflow_id": hook.workflow_id,
        }

    async def receive_hook(scope: Scope, receive: Receive, send: Send) -> None:
        """``POST /hooks/{token}`` as a raw ASGI app: no Request, no Response objects."""
        started = time.perf_counter()
        outcome = "error"
        response_started = False

        async def send_tracked(message: Message) -> None:
            nonlocal response_started
            response_started = True
            await send(message)

        try:
            try:
                content = await accept(scope, receive)
            except _Rejected as rejected:
                outcome = rejected.outcome
                log.info("webhook rejected: %s %s", rejected.status, rejected.reason)
                await _respond(send_tracked, rejected.status, {"error": rejected.reason}, rejected.headers)
            else:
                outcome = "accepted"
                await _respond(send_tracked, 202, content)
        except Exception:
            # As Starlette's ServerErrorMiddleware: a JSON 500 if nothing was sent yet, and
            # the exception goes on to the server, which logs it.
            if not response_started:
                await _respond(send, 500, {"error": "internal error"})
            raise
        finally:
            WEBHOOKS_BY_OUTCOME[outcome].inc()
            LATENCY_BY_OUTCOME[outcome].observe(time.perf_counter() - started)

    checks: dict[str, ReadyCheck] = {}
    if publisher is not None:
        checks["broker"] = _publisher_check(publisher)
    if lookup is None:  # webhooks are looked up in the database: the ingress needs it
        checks["database"] = _database_check
    checks.update(ready_checks or {})
    last_ready: list[Any] = [0.0, None]  # [monotonic time, (status, body)]
    ready_lock = asyncio.Lock()

    async def healthz(request: Request) -> Response:
        # Liveness only: the process serves HTTP. What it depends on is /readyz's business.
        return PlainTextResponse("ok")

    async def readyz(request: Request) -> Response:
        async with ready_lock:  # probes arriving together share one round of checks
            if last_ready[1] is None or time.monotonic() - last_ready[0] >= READY_MEMO_SECONDS:
                results: dict[str, str | None] = {}
                for name, check in checks.items():
                    try:
                        async with asyncio.timeout(readiness.CHECK_TIMEOUT_SECONDS):
                            results[name] = await check()
                    except TimeoutError:
                        results[name] = f"no answer within {readiness.CHECK_TIMEOUT_SECONDS:g} s"
                last_ready[:] = [time.monotonic(), readiness.answer(results)]
        status, body = last_ready[1]
        headers = {"Retry-After": str(readiness.RETRY_AFTER_SECONDS)} if status == 503 else None
        return JSONResponse(body, status_code=status, headers=headers)

    async def openapi(request: Request) -> Response:
        return JSONResponse(spec.DOCUMENT)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return _error(exc.status_code, exc.detail, dict(exc.headers or {}))

    async def server_error(request: Request, exc: Exception) -> Response:
        return _error(500, "internal error")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        shared: AsyncRedisBuckets | None = None
        if owns_admission and settings.redis_url:
            import redis.asyncio

            # Bound to this (the server's) event loop; connects on the first lease.
            client = redis.asyncio.Redis.from_url(settings.redis_url, socket_timeout=2, socket_connect_timeout=2)
            shared = quotas.shared = AsyncRedisBuckets(client)
        if publisher is not None:
            await publisher.start()  # connect now rather than on the first webhook
        try:
            yield
        finally:
            if publisher is not None:
                await publisher.close()
            if shared is not None:
                quotas.shared = None
                await shared.close()

    app = IngressApp(
        receive_hook,
        lifespan=lifespan,
        routes=[
            # Reached through routing only by what the fast path leaves (a root path, say);
            # kept so that other methods get Starlette's 405 with an Allow header.
            Route("/hooks/{token}", _AsgiEndpoint(receive_hook), methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/openapi.json", openapi, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error, Exception: server_error},
    )
    app.router.redirect_slashes = False  # `/healthz/` is a 404, never an undocumented 307
    return app


class _AsgiEndpoint:
    """Wraps an ASGI callable so that Starlette's ``Route`` passes it the raw scope
    (a plain function would be wrapped as a request/response endpoint)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


class IngressApp(Starlette):
    """Starlette with a fast path for ``POST /hooks/{token}``.

    Starlette's middleware stack, routing, ``Request`` and ``JSONResponse`` cost about as
    much CPU per webhook as all of the ingress's own checks; the webhook route is the one
    hot path, so its requests go straight to the raw ASGI handler. Everything else (the
    other routes, the management API mounted beside it, lifespan, 404/405) is Starlette's.

    Parameters:
        hook_handler: the ASGI handler of ``POST /hooks/{token}``; it finds the token in
            ``scope["path_params"]``, as when Starlette routes to it.
        **kwargs: as ``Starlette``.
    """

    def __init__(self, hook_handler: ASGIApp, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hook_handler = hook_handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve ``POST /hooks/{token}`` directly, anything else through Starlette."""
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            path: str = scope["path"]
            # Exactly what the route "/hooks/{token}" matches: one non-empty segment.
            if path.startswith("/hooks/") and len(path) > 7 and "/" not in path[7:]:
                scope["app"] = self
                scope["path_params"] = {"token": path[7:]}
                await self.hook_handler(scope, receive, send)
                return
        await super().__call__(scope, receive, send)
