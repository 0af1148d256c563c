"""Webhook ingress: ``POST /hooks/{token}`` -> verified, deduplicated trigger on RabbitMQ.

The ingress is thin (docs/architecture.md#the-webhook-ingress): it checks the request (type, size, token, signature,
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
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
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

from shiftflow.kernel import readiness, tracing
from shiftflow.kernel.broker import max_lengths
from shiftflow.kernel.confirm_publisher import ConfirmPublisher
from shiftflow.kernel.contracts import Priority, Queue, TriggerPayload, execution_id_for
from shiftflow.kernel.db import database
from shiftflow.kernel.enqueue import send
from shiftflow.kernel.errors import QueueFull, SignatureError, TransientError
from shiftflow.kernel.quota import AsyncAdmission, AsyncRedisBuckets, Limit
from shiftflow.kernel.settings import Settings
from shiftflow.kernel.signatures import verify
from shiftflow.producers.ingress import checks, hooks, spec
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


class _HookMemo:
    """Token -> webhook lookups, each reused for ``LOOKUP_MEMO_SECONDS`` (see there).

    A lookup may query PostgreSQL, so it runs in a thread; requests arriving while a lookup
    of their token runs wait for that one lookup. A failed lookup (store down) is not
    remembered: the next request asks again.
    """

    def __init__(self, lookup: Callable[[str], HookInfo | None]) -> None:
        self.lookup = lookup
        # token -> (reuse until in monotonic seconds, the lookup)
        self.memo: dict[str, tuple[float, asyncio.Task[HookInfo | None]]] = {}

    def _forget_failed(self, token: str, task: asyncio.Task[HookInfo | None]) -> None:
        if task.cancelled() or task.exception() is not None:
            if self.memo.get(token, (0.0, None))[1] is task:
                del self.memo[token]

    async def find(self, token: str) -> HookInfo | None:
        """The webhook of ``token``, or None; raises what ``lookup`` raises (``TransientError``)."""
        now = time.monotonic()
        remembered = self.memo.get(token)
        if remembered is None or now >= remembered[0]:
            # A task of its own, so that a caller who goes away does not cancel it for the others.
            task = asyncio.ensure_future(anyio.to_thread.run_sync(self.lookup, token))
            task.add_done_callback(lambda done: self._forget_failed(token, done))
            if len(self.memo) >= LOOKUP_MEMO_SIZE:
                self.memo.clear()
            remembered = self.memo[token] = (now + LOOKUP_MEMO_SECONDS, task)
        if remembered[1].done():
            return remembered[1].result()  # the common case: no awaiting at all
        return await asyncio.shield(remembered[1])


class WebhookReceiver:
    """``POST /hooks/{token}`` as a raw ASGI app: check, build and publish one webhook.

    The steps of ``accept``, in order: content type, body (size), the webhook of the token,
    its signature, the JSON object, the workspace's quota, the publish. Each refusal is a
    ``checks.Rejected`` with its status; ``__call__`` turns it into the response and counts it.
    ``create_app`` documents the parameters.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        publish: Publish,
        publish_async: AsyncPublish | None,
        lookup: Callable[[str], HookInfo | None],
        clock: Callable[[], float],
        admission: AsyncAdmission | None,
        publisher: ConfirmPublisher | None,
    ) -> None:
        self.settings = settings
        self.publish = publish
        self.publish_async = publish_async
        self.hooks = _HookMemo(lookup)
        self.clock = clock
        self.owns_admission = admission is None
        self.quotas = admission if admission is not None else AsyncAdmission()
        self.default_quota = Limit(settings.quota_webhooks_per_second, settings.quota_webhooks_burst)
        self.publisher = publisher
        self.limit = settings.webhook_max_body_bytes
        self.timeout = settings.publish_timeout_seconds
        self.tolerance = settings.webhook_tolerance_seconds
        self.publish_limiter = anyio.CapacityLimiter(PUBLISH_THREADS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer one webhook: 202 with the execution's key, or the refusal; count the outcome."""
        started = time.perf_counter()
        outcome = "error"
        response_started = False

        async def send_tracked(message: Message) -> None:
            nonlocal response_started
            response_started = True
            await send(message)

        try:
            try:
                content = await self.accept(scope, receive)
            except checks.Rejected as rejected:
                outcome = rejected.outcome
                log.info("webhook rejected: %s %s", rejected.status, rejected.reason)
                await checks.respond(send_tracked, rejected.status, {"error": rejected.reason}, rejected.headers)
            else:
                outcome = "accepted"
                await checks.respond(send_tracked, 202, content)
        except Exception:
            # As Starlette's ServerErrorMiddleware: a JSON 500 if nothing was sent yet, and
            # the exception goes on to the server, which logs it.
            if not response_started:
                await checks.respond(send, 500, {"error": "internal error"})
            raise
        finally:
            WEBHOOKS_BY_OUTCOME[outcome].inc()
            LATENCY_BY_OUTCOME[outcome].observe(time.perf_counter() - started)

    async def accept(self, scope: Scope, receive: Receive) -> dict[str, Any]:
        """Check, build and publish one webhook; the 202 body, or raise ``checks.Rejected``."""
        headers = checks.Headers(scope["headers"])
        checks.check_content_type(headers)
        body = await checks.read_body(receive, headers, self.limit)
        try:
            hook = await self.hooks.find(scope["path_params"]["token"])
        except TransientError as exc:
            log.warning("webhook lookup failed: %s", exc)
            raise checks.unavailable("webhook store unavailable, retry later") from None
        if hook is None or not hook.active:
            raise checks.Rejected(404, "not_found", "unknown webhook")
        now = self.clock()
        try:
            delivery_id = verify(hook.scheme, hook.secrets, headers, body, now, self.tolerance)
        except SignatureError as exc:
            raise checks.Rejected(401, "unauthorized", str(exc)) from None
        payload = TriggerPayload(
            workflow_id=hook.workflow_id,
            dedup_key=f"{hook.scheme}:{delivery_id}",
            source="webhook",
            data=checks.parse_object(body),
            received_at=now,
            priority=Priority.NORMAL.name,
        )
        await self.admit(hook)
        await self.send(payload)
        return {
            "status": "accepted",
            "execution_id": str(execution_id_for(hook.workflow_id, payload.dedup_key)),
            "execution_key": payload.dedup_key,
            "workflow_id": hook.workflow_id,
        }

    def quota_of(self, hook: HookInfo) -> Limit:
        """The webhook quota of the hook's workspace: its own, else the deployment's default."""
        if hook.quota_rate is None and hook.quota_burst is None:
            return self.default_quota
        return Limit(
            self.settings.quota_webhooks_per_second if hook.quota_rate is None else hook.quota_rate,
            self.settings.quota_webhooks_burst if hook.quota_burst is None else hook.quota_burst,
        )

    async def admit(self, hook: HookInfo) -> None:
        """Spend one token of the workspace's webhook quota, or refuse (429)."""
        quota = self.quota_of(hook)
        if quota.unlimited:
            return
        key = "webhooks:" + hook.workspace_id
        wait = self.quotas.try_admit(key, quota)
        if wait is None:  # this process holds no token of the shared bucket: lease some
            wait = await self.quotas.admit(key, quota)
        if wait > 0:
            raise checks.over_quota(quota, wait)

    async def send(self, payload: TriggerPayload) -> None:
        """Publish the trigger and return once it is durable, or refuse (503)."""
        timeout = self.timeout
        try:
            # On timeout we answer 503 at once; the publish may still be confirmed later
            # (the thread is abandoned, or the message stays unconfirmed in the publisher),
            # which is safe because the sender's retry carries the same dedup key and the
            # trigger actor creates the execution once.
            if self.publish_async is not None:
                # asyncio's own timeout: the publisher is asyncio-bound anyway, and an anyio
                # cancel scope costs several times more per request.
                async with asyncio.timeout(timeout):
                    await self.publish_async(payload)
            else:
                with anyio.fail_after(timeout):
                    await anyio.to_thread.run_sync(
                        self.publish, payload, abandon_on_cancel=True, limiter=self.publish_limiter
                    )
        except TimeoutError:
            log.warning("publish of %s timed out after %s s", payload.dedup_key, timeout)
            raise checks.unavailable(f"broker did not confirm within {timeout:g} s, retry later") from None
        except QueueFull:
            # Nothing was queued (reject-publish): never a 202 for it. No warning per request
            # (a full queue refuses thousands a second); shiftflow_webhooks_total counts them.
            raise checks.unavailable("the trigger queue is full, retry later", "queue_full") from None
        except TransientError as exc:
            # The detail (hosts, broker errors) goes to the log, not to the caller.
            log.warning("publish of %s failed: %s", payload.dedup_key, exc)
            raise checks.unavailable("broker unavailable, retry later") from None

    @asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        """The app's lifespan: share the quota buckets through Redis when configured, and
        connect the publisher now rather than on the first webhook."""
        shared: AsyncRedisBuckets | None = None
        if self.owns_admission and self.settings.redis_url:
            import redis.asyncio

            # Bound to this (the server's) event loop; connects on the first lease.
            client = redis.asyncio.Redis.from_url(
                self.settings.redis_url, socket_timeout=2, socket_connect_timeout=2
            )
            shared = self.quotas.shared = AsyncRedisBuckets(client)
        if self.publisher is not None:
            await self.publisher.start()
        try:
            yield
        finally:
            if self.publisher is not None:
                await self.publisher.close()
            if shared is not None:
                self.quotas.shared = None
                await shared.close()


class _Readiness:
    """``GET /readyz``: every check's answer, reused for ``READY_MEMO_SECONDS``, so a flood of
    probes costs the database one query; probes arriving together share one round."""

    def __init__(self, probes: dict[str, ReadyCheck]) -> None:
        self.probes = probes
        self.last: tuple[float, tuple[int, dict[str, Any]]] | None = None  # (monotonic time, answer)
        self.lock = asyncio.Lock()

    async def readyz(self, request: Request) -> Response:
        async with self.lock:
            if self.last is None or time.monotonic() - self.last[0] >= READY_MEMO_SECONDS:
                results: dict[str, str | None] = {}
                for name, check in self.probes.items():
                    try:
                        async with asyncio.timeout(readiness.CHECK_TIMEOUT_SECONDS):
                            results[name] = await check()
                    except TimeoutError:
                        results[name] = f"no answer within {readiness.CHECK_TIMEOUT_SECONDS:g} s"
                self.last = (time.monotonic(), readiness.answer(results))
        status, body = self.last[1]
        headers = {"Retry-After": str(readiness.RETRY_AFTER_SECONDS)} if status == 503 else None
        return JSONResponse(body, status_code=status, headers=headers)


async def _healthz(request: Request) -> Response:
    # Liveness only: the process serves HTTP. What it depends on is /readyz's business.
    return PlainTextResponse("ok")


async def _openapi(request: Request) -> Response:
    return JSONResponse(spec.DOCUMENT)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return checks.error_response(exc.status_code, exc.detail, dict(exc.headers or {}))


async def _server_error(request: Request, exc: Exception) -> Response:
    return checks.error_response(500, "internal error")


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
    tracing.configure(settings)  # off unless SHIFTFLOW_OTLP_ENDPOINT is set
    publisher: ConfirmPublisher | None = None
    if publish is None and publish_async is None and not settings.dev:
        publisher = ConfirmPublisher(
            settings.amqp_urls, queues=(Queue.TRIGGERS,), max_lengths=max_lengths(settings),
            queue_type=settings.queue_type,
        )
        publish_async = trigger_sender(publisher)
    receiver = WebhookReceiver(
        settings,
        publish=publish or publish_trigger,
        publish_async=publish_async,
        lookup=lookup or hooks.lookup,
        clock=clock,
        admission=admission,
        publisher=publisher,
    )
    probes: dict[str, ReadyCheck] = {}
    if publisher is not None:
        probes["broker"] = _publisher_check(publisher)
    if lookup is None:  # webhooks are looked up in the database: the ingress needs it
        probes["database"] = _database_check
    probes.update(ready_checks or {})
    app = IngressApp(
        receiver,
        lifespan=receiver.lifespan,
        routes=[
            # Reached through routing only by what the fast path leaves (a root path, say);
            # kept so that other methods get Starlette's 405 with an Allow header.
            Route("/hooks/{token}", _AsgiEndpoint(receiver), methods=["POST"]),
            Route("/healthz", _healthz, methods=["GET"]),
            Route("/readyz", _Readiness(probes).readyz, methods=["GET"]),
            Route("/openapi.json", _openapi, methods=["GET"]),
        ],
        exception_handlers={HTTPException: _http_error, Exception: _server_error},
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
