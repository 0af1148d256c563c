"""The management API: a Starlette app under ``/api/v1`` over the models' command and query functions.

Everything the API does, the CLI does with the same functions (``models.manage.workspaces``,
``apikeys``, ``lifecycle``, ``control``, ``queries``); this module only speaks HTTP:

* **Auth**: ``Authorization: Bearer sfk_...`` (``apikeys.authenticate``); the key's
  workspace scopes every query, so another workspace's ids answer 404.
* **Input**: bodies, query parameters and headers are validated against the OpenAPI
  document (``producers.api.spec``), which is served at ``/api/v1/openapi.json``; text PostgreSQL
  cannot store (NUL, lone surrogates) is refused. Bad input is never a 5xx.
* **Errors**: ``{"error": "..."}`` with 400 (body not JSON), 401, 403, 404, 409, 413,
  422 (a field, named), 429 (too many failed authentications from the address or for the
  key, ``auth_throttle``; or a workspace quota, named; both with ``Retry-After``), 503 (a
  backing store or the broker is down, or the trigger queue is full, with ``Retry-After``).
* **Quotas**: run and re-run count against the workspace's run quota and its cap of
  queued executions (``models.manage.quotas.RunAdmission``; buckets shared through Redis when
  ``SHIFTFLOW_REDIS_URL`` is set).
* **Publishing**: commands that start work (manual trigger, re-run, cancel) commit
  first, then publish with broker confirms (``kernel.enqueue.send``, off the event loop,
  bounded by ``SHIFTFLOW_PUBLISH_TIMEOUT_SECONDS``); a manual trigger answers 202 only
  after the confirm. Re-run and cancel hand unsent step messages to the timer loop.
* **Audit**: every mutation writes its audit entry in its own transaction (in the models).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from typing import Any

import anyio
import anyio.to_thread
import jsonschema
import peewee
from playhouse.pool import MaxConnectionsExceeded
from pymongo.errors import PyMongoError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from shiftflow.kernel.db import database
from shiftflow.kernel.enqueue import Outgoing
from shiftflow.kernel.errors import (
    DefinitionError,
    NotFound,
    QueueFull,
    SettingsError,
    ShiftFlowError,
    TransientError,
)
from shiftflow.kernel.quota import Admission, RedisBuckets
from shiftflow.kernel.settings import Settings
from shiftflow.kernel.storable import unstorable
from shiftflow.models.engine.quotas import QuotaExceeded
from shiftflow.models.manage import apikeys
from shiftflow.models.manage.access import Principal
from shiftflow.models.manage.problems import Conflict, Forbidden, InvalidInput, Unauthenticated
from shiftflow.models.manage.quotas import RunAdmission
from shiftflow.producers.api import auth_throttle, spec
from shiftflow.producers.api.auth_throttle import AuthThrottle, Throttled
from shiftflow.producers.api.handlers import HANDLERS, Call, Result, Send

log = logging.getLogger(__name__)

#: Largest accepted request body (a workflow definition with many steps fits easily).
MAX_BODY_BYTES = 1_048_576
#: Seconds a client should wait before retrying after a 503.
RETRY_AFTER_SECONDS = 5

_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$")
_FORMATS = jsonschema.FormatChecker(formats=("email", "uuid"))


@_FORMATS.checks("date-time", raises=ValueError)
def _is_date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True
    import datetime as dt

    if not _DATE_TIME.match(value):
        return False
    dt.datetime.fromisoformat(value.replace("z", "Z").replace("t", "T"))  # rejects month 13, day 32...
    return True


def _validator(schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    # Request schemas are inline (no $ref), so each validates on its own.
    return jsonschema.Draft202012Validator(schema, format_checker=_FORMATS)


class _Reject(Exception):
    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status, self.reason, self.headers = status, reason, headers


# --------------------------------------------------------------------------- request plumbing


def _error(status: int, reason: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": reason}, status_code=status, headers=headers)


def _unavailable(reason: str) -> _Reject:
    return _Reject(503, reason, {"Retry-After": str(RETRY_AFTER_SECONDS)})


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length", "").strip()
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _Reject(413, f"body larger than {MAX_BODY_BYTES} bytes")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise _Reject(413, f"body larger than {MAX_BODY_BYTES} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise _Reject(400, "client disconnected before the body was complete") from None
    return b"".join(chunks)


def _parse_body(raw: bytes, content_type: str, op: dict[str, Any]) -> dict[str, Any]:
    body_spec = op.get("requestBody")
    if body_spec is None:
        return {}
    if not raw.strip():
        if body_spec.get("required"):
            raise _Reject(400, "a JSON body is required")
        return {}
    media = content_type.split(";", 1)[0].strip().lower()
    if media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
        raise _Reject(400, "send the body as application/json")
    try:
        data = json.loads(raw, parse_constant=_reject_constant)
    except RecursionError:
        raise _Reject(400, "body nests too deeply") from None
    except ValueError as exc:
        raise _Reject(400, f"body is not valid JSON: {exc}") from None
    _validate(data, body_spec["content"]["application/json"]["schema"], "body")
    problem = unstorable(data)
    if problem:
        raise InvalidInput("body", problem)
    return dict(data)


_NAIVE = re.compile(r"^\d{4}-\d{2}-\d{2}([Tt ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?)?$")


def _validate(value: Any, schema: dict[str, Any], where: str) -> None:
    error = jsonschema.exceptions.best_match(_validator(schema).iter_errors(value))
    if error is not None:
        path = ".".join(str(p) for p in error.absolute_path)
        message = error.message[:500]
        if error.validator == "format" and error.validator_value == "date-time":
            message = f"{str(error.instance)[:60]!r} is not an RFC 3339 date-time, e.g. 2026-01-31T12:00:00Z"
            if isinstance(error.instance, str) and _NAIVE.match(error.instance):
                message += " (a UTC offset is required: add Z or +HH:MM)"
        raise InvalidInput(f"{where}.{path}" if path else where, message)


def _coerce(raw: str, schema: dict[str, Any], name: str) -> Any:
    kind = schema.get("type")
    if kind == "integer":
        if not re.fullmatch(r"-?\d{1,18}", raw.strip()):
            raise InvalidInput(name, f"{raw[:50]!r} is not an integer")
        return int(raw)
    if kind == "boolean":
        if raw not in ("true", "false"):
            raise InvalidInput(name, "expected true or false")
        return raw == "true"
    return raw


def _parameters(request: Request, op: dict[str, Any]) -> dict[str, Any]:
    """Declared query and header parameters, coerced and validated against their schemas."""
    values: dict[str, Any] = {}
    for param in op.get("parameters", ()):
        name, where = param["name"], param["in"]
        if where == "query":
            raw = request.query_params.get(name)
        elif where == "header":
            raw = request.headers.get(name)
        else:
            continue
        if raw is None:
            continue
        problem = unstorable(raw)
        if problem:
            raise InvalidInput(name, problem)
        value = _coerce(raw, param["schema"], name)
        _validate(value, param["schema"], name)
        values[name] = value
    return values


def _check_path(op: dict[str, Any], path: dict[str, str]) -> None:
    """Path parameters against their schemas: a value that can never name an object is a 404
    that says why (never a 409 from deeper down)."""
    for param in op.get("parameters", ()):
        if param["in"] != "path" or param["name"] not in path:
            continue
        name, raw = param["name"], path[param["name"]]
        try:
            value = _coerce(raw, param["schema"], name)
            _validate(value, param["schema"], name)
        except InvalidInput as exc:
            raise NotFound(f"{name} {raw[:50]!r} cannot exist: {exc.reason}") from None


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _authenticate(request: Request, throttle: AuthThrottle) -> Principal:
    """The caller, counting a failure against their address and key prefix (``auth_throttle``);
    ``throttle.check`` ran before, outside the database connection."""
    client = request.client.host if request.client else None
    token = _bearer(request)
    try:
        return apikeys.authenticate(token, ip=client, user_agent=request.headers.get("user-agent"))
    except Unauthenticated:
        throttle.failed(client, apikeys.lookup_prefix(token))
        raise


def _run_op(
    op: dict[str, Any],
    request: Request,
    raw: bytes,
    send: Send,
    mongo: Callable[[], Any],
    throttle: AuthThrottle,
    runs: RunAdmission | None = None,
    settings: Settings | None = None,
) -> Result:
    """Authenticate, validate and run one operation (in a worker thread, own DB connection)."""
    path = {k: str(v) for k, v in request.path_params.items()}
    for name, value in path.items():
        if unstorable(value):
            raise NotFound(f"{name} {value[:50]!r} does not exist")
    # A throttled caller costs no database connection and no key lookup.
    throttle.check(request.client.host if request.client else None, apikeys.lookup_prefix(_bearer(request)))
    _check_path(op, path)
    with database.connection_context():
        actor = _authenticate(request, throttle)
        params = _parameters(request, op)
        body = _parse_body(raw, request.headers.get("content-type", ""), op)
        permission = op.get("x-permission")
        if permission and permission not in ("keys:self",):  # keys: decided per key (self or others)
            actor.require(permission)
        return HANDLERS[op["operationId"]](Call(actor, path, params, body, send, mongo, runs, settings))


def _after(result: Result) -> None:
    if result.after is not None:
        with database.connection_context(), database.atomic():
            result.after()


def _fallback(result: Result, unsent: list[Outgoing]) -> None:
    assert result.fallback is not None
    with database.connection_context():
        result.fallback(unsent)


def _classify(exc: BaseException) -> _Reject | None:
    """The HTTP answer for an error raised by a command, or None (a bug: 500)."""
    if isinstance(exc, _Reject):
        return exc
    if isinstance(exc, Unauthenticated):
        return _Reject(401, str(exc), {"WWW-Authenticate": 'Bearer realm="shiftflow"'})
    if isinstance(exc, Throttled):
        return _Reject(429, str(exc), {"Retry-After": str(exc.retry_after)})
    if isinstance(exc, QuotaExceeded):
        return _Reject(429, str(exc), {"Retry-After": exc.retry_after_header})
    table: tuple[tuple[type[BaseException], int], ...] = (
        (Forbidden, 403),
        (NotFound, 404),
        (Conflict, 409),
        (InvalidInput, 422),
        (DefinitionError, 422),
    )
    for kind, status in table:
        if isinstance(exc, kind):
            return _Reject(status, str(exc))
    if isinstance(exc, peewee.IntegrityError):
        return _Reject(409, "a concurrent change conflicted with this one; retry")
    if isinstance(exc, peewee.DataError):
        return _Reject(422, "a value is out of range for its field")
    if isinstance(exc, SettingsError):  # e.g. no SHIFTFLOW_SECRET_KEYS to seal a connection with
        log.error("management API: %s", exc)
        return _unavailable(f"this deployment is not configured for it: {exc}")
    if isinstance(exc, QueueFull):  # a replay publishing into a full queue, say
        return _unavailable("the trigger queue is full, retry later")
    if isinstance(
        exc, TransientError | peewee.OperationalError | peewee.InterfaceError | MaxConnectionsExceeded
    ):
        log.warning("management API: backing store unavailable: %s", exc)
        return _unavailable("a backing store is unavailable, retry later")
    if isinstance(exc, PyMongoError):
        log.warning("management API: MongoDB unavailable: %s", exc)
        return _unavailable("the log store is unavailable, retry later")
    return None


def create_api(
    settings: Settings,
    *,
    send: Send | None = None,
    mongo: Callable[[], Any] | None = None,
    admission: Admission | None = None,
) -> Starlette:
    """Build the management API (mount it at ``/api/v1``; ``producers.app`` does).

    Parameters:
        settings: reads ``publish_timeout_seconds``, ``mongo_url`` and ``mongo_db``.
        send: publishes one message and returns once RabbitMQ confirmed it, raising
            ``BrokerUnavailable`` otherwise; default ``kernel.enqueue.send`` (the broker
            installed by the process).
        mongo: returns the pymongo database of the log collections, or None; default a
            client on ``settings.mongo_url`` made on first use.
        admission: the buckets of the run quota; default Redis-shared ones when
            ``settings.redis_url`` is set, else this process's own.

    Returns:
        A Starlette app serving every path of ``spec.DOCUMENT`` relative to its mount.
    """
    if send is None:
        from shiftflow.kernel.enqueue import send as enqueue_send

        send = enqueue_send
    sender: Send = send
    timeout = settings.publish_timeout_seconds
    mongo_fn = mongo or _mongo_reader(settings)
    publish_limiter = anyio.CapacityLimiter(16)
    throttle = auth_throttle.from_settings(settings)
    if admission is None:
        shared = None
        if settings.redis_url:
            import redis

            client = redis.Redis.from_url(settings.redis_url, socket_timeout=2, socket_connect_timeout=2)
            shared = RedisBuckets(client)
        admission = Admission(shared)
    runs = RunAdmission(settings, admission)

    def publish_all(messages: list[Outgoing]) -> None:
        for out in messages:
            sender(out.actor, out.payload, priority=out.priority, delay_ms=out.delay_ms)

    async def publish(result: Result) -> None:
        try:
            with anyio.fail_after(timeout):
                await anyio.to_thread.run_sync(
                    publish_all, result.publish, abandon_on_cancel=True, limiter=publish_limiter
                )
        except (TimeoutError, TransientError) as exc:
            log.warning("management API: publish failed: %s", exc)
            if result.fallback is None:
                if isinstance(exc, QueueFull):
                    # Nothing was queued (reject-publish); the same Idempotency-Key may retry.
                    raise _unavailable("the trigger queue is full, retry later") from None
                raise _unavailable("the broker did not confirm, retry later") from None
            await anyio.to_thread.run_sync(_fallback, result, result.publish)

    def endpoint(op: dict[str, Any]) -> Callable[[Request], Any]:
        async def handle(request: Request) -> Response:
            try:
                raw = await _read_body(request) if "requestBody" in op else b""
                result = await anyio.to_thread.run_sync(
                    _run_op, op, request, raw, sender, mongo_fn, throttle, runs, settings
                )
                if result.publish:
                    await publish(result)
                await anyio.to_thread.run_sync(_after, result)
            except (
                _Reject,
                ShiftFlowError,
                peewee.PeeweeException,
                PyMongoError,
                MaxConnectionsExceeded,
            ) as exc:
                rejected = _classify(exc)
                if rejected is None:
                    raise
                return _error(rejected.status, rejected.reason, rejected.headers)
            if result.status == 204:
                return Response(status_code=204)
            if result.stream is not None:
                # A sync iterator: Starlette reads it in a worker thread, chunk by chunk.
                return StreamingResponse(result.stream, status_code=result.status,
                                         media_type=result.media_type, headers=result.headers)
            return JSONResponse(result.body, status_code=result.status)

        return handle

    async def openapi(request: Request) -> Response:
        return JSONResponse(spec.DOCUMENT)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return _error(exc.status_code, str(exc.detail), dict(exc.headers or {}))

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("management API: unexpected error", exc_info=exc)
        return _error(500, "internal error")

    def by_method(handlers: dict[str, Callable[[Request], Any]]) -> Callable[[Request], Any]:
        async def handle(request: Request) -> Response:
            return await handlers[request.method](request)

        return handle

    routes = [Route("/openapi.json", openapi, methods=["GET"])]
    grouped: dict[str, dict[str, Callable[[Request], Any]]] = {}
    for method, path, op in spec.operations():
        if op["operationId"] in HANDLERS:
            grouped.setdefault(path, {})[method] = endpoint(op)
    # Literal paths before parameterised ones, so /dead-letters/replay is not an id. One
    # route per path, so a 405's Allow header lists every method the path has.
    for path in sorted(grouped, key=lambda p: ("{" in p, p)):
        routes.append(Route(path, by_method(grouped[path]), methods=list(grouped[path])))
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error, Exception: server_error})
    # `/workflows/` is not `/workflows`: a 404, never an undocumented 307 to another URL.
    app.router.redirect_slashes = False
    return app


def _mongo_reader(settings: Settings) -> Callable[[], Any]:
    """The log store to read: the process's sink when there is one, else a client of our own."""
    holder: dict[str, Any] = {}

    def get() -> Any:
        from shiftflow.kernel.mongo import MongoSink, get_sink

        sink = get_sink()
        if sink is not None:
            return sink.database()
        if not settings.mongo_url:
            return None
        if "sink" not in holder:
            holder["sink"] = MongoSink(settings.mongo_url, settings.mongo_db)
        return holder["sink"].database()

    return get


def missing_handlers() -> list[str]:
    """Operation ids of the document without a handler (a test keeps this empty)."""
    return [
        op["operationId"]
        for _, _, op in spec.operations()
        if op["operationId"] not in HANDLERS and op["operationId"] != "getOpenApi"
    ]
