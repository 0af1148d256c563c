"""A local SideShift v2 server for tests and dev mode (paper trading). Loopback only.

``create_app(state)`` is a Starlette app serving SideShift's paths under ``/api/v2`` with
its JSON shapes and error body ``{"error": {"message", "code"}}``; ``FakeSideShift`` holds
the state and the test controls (clock, deposits, fault knobs, counters);
``FakeSideShiftServer`` runs the app with uvicorn in a background thread on 127.0.0.1
and a free port::

    state = FakeSideShift()
    with FakeSideShiftServer(state) as server:
        client = SideShiftClient("AbCdE1234", base_url=server.base_url)
        ...
        state.advance(60)

Fault knobs act on real HTTP: ``delay_next_create`` holds a create's answer after the
shift exists (so a client read timeout is an unknown outcome), ``drop_next_create``
aborts the connection after creating, ``fail_next`` answers 5xx or 429 (before or after
the work).

Strict where SideShift's documentation is strict (``commissionRate`` 0 to 2 % and applied
to rates; amounts within their coin's decimals; the documented error shape and statuses),
and, where it is silent, as ``FakeBehaviour`` says (``FakeSideShift(behaviour=...)``):
a reused quote accepted or refused, 404 or 400 for an unknown or malformed shift id,
``Retry-After`` on a 429 or not, excess decimals refused or rounded, the commission read
as a fraction or a percentage. ``docs/sideshift.md`` section 12 lists them.

Dev mode (paper trading): ``FakeSideShift(clock=SystemClock(), auto_deposit=True)`` lets
orders run to ``settled`` in real time; ``/_fake/...`` routes expose the controls over HTTP.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from decimal import Decimal
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from shiftflow.fakes.sideshift_api import ApiRequest, handle, record
from shiftflow.fakes.sideshift_behaviour import FakeBehaviour
from shiftflow.fakes.sideshift_catalog import ApiError, FakeClock, SystemClock, iso
from shiftflow.fakes.sideshift_records import Timings
from shiftflow.fakes.sideshift_state import CREATE_ROUTES, FakeSideShift, RecordedRequest

_TRANSPORT = "shiftflow.fake.transport"

#: (path under /api/v2, method, route name); the order matters only for readability,
#: Starlette prefers a full (path and method) match.
_ROUTES = (
    ("/coins", "GET", "coins"),
    ("/permissions", "GET", "permissions"),
    ("/pair/{from}/{to}", "GET", "pair"),
    ("/pairs", "GET", "pairs"),
    ("/quotes", "POST", "quotes"),
    ("/shifts/fixed", "POST", "shifts_fixed"),
    ("/shifts/variable", "POST", "shifts_variable"),
    ("/shifts/{shift_id}", "GET", "shift"),
    ("/shifts", "GET", "shifts"),
    ("/shifts/{shift_id}/set-refund-address", "POST", "set_refund_address"),
    ("/cancel-order", "POST", "cancel_order"),
    ("/checkout", "POST", "checkout_create"),
    ("/checkout/{checkout_id}", "GET", "checkout"),
    ("/create-account", "POST", "create_account"),
)


class _FakeApp(Starlette):
    """Starlette, plus a handle on the connection so that a fault can drop it."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            # uvicorn passes a bound method of its request cycle; its transport can be
            # aborted. Starlette's middleware wraps ``send``, so it is taken here, outermost.
            scope[_TRANSPORT] = getattr(getattr(send, "__self__", None), "transport", None)
        await super().__call__(scope, receive, send)


def _error(exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), exc.status, headers=exc.headers)


def _injected_error(state: FakeSideShift, status: int) -> JSONResponse:
    if status == 429:
        return _error(state.rate_limit_error(1.0))
    return _error(ApiError(status, "Internal Server Error", "UNKNOWN"))


async def _drop(request: Request) -> None:
    transport = request.scope.get(_TRANSPORT)
    if transport is None:
        raise ConnectionAbortedError("fake SideShift: dropping the connection (no transport to abort)")
    transport.abort()
    # Let uvicorn see the lost connection, so the response sent afterwards is discarded.
    for _ in range(3):
        await asyncio.sleep(0)


def _endpoint(state: FakeSideShift, route: str) -> Any:
    async def endpoint(request: Request) -> Response:
        body: Any = None
        if request.method == "POST":
            raw = await request.body()
            if raw.strip():
                try:
                    body = json.loads(raw, parse_float=Decimal)
                except ValueError:
                    return _error(ApiError(400, "Bad request"))
        req = ApiRequest(
            route=route,
            method=request.method,
            path=request.url.path,
            headers={k.lower(): v for k, v in request.headers.items()},
            query=dict(request.query_params),
            params={k: str(v) for k, v in request.path_params.items()},
            body=body,
            client=request.client.host if request.client else "unknown",
        )
        record(state, req)
        failure = state.take_failure(route)
        if failure is not None and not failure.after_effect:
            return _injected_error(state, failure.status)
        try:
            status, payload = handle(state, req)
        except ApiError as exc:
            return _error(exc)
        if failure is not None:
            return _injected_error(state, failure.status)
        if route in CREATE_ROUTES:
            delay, drop = state.take_create_faults()
            if delay:
                await asyncio.sleep(delay)
            if drop:
                await _drop(request)
                return Response(status_code=500)
        if status == 204:
            return Response(status_code=204)
        return JSONResponse(payload, status)

    endpoint.__name__ = route
    return endpoint


def _control_routes(state: FakeSideShift) -> list[Route]:
    """``/_fake/...``: the test controls over HTTP, for dev mode and other processes."""

    async def deposit(request: Request) -> Response:
        body = json.loads(await request.body() or b"{}")
        try:
            return JSONResponse(state.deposit(request.path_params["shift_id"], str(body["amount"])))
        except KeyError:
            return _error(ApiError(404, "Shift not found", "NOT_FOUND"))

    async def advance(request: Request) -> Response:
        body = json.loads(await request.body() or b"{}")
        state.advance(float(body.get("seconds", 0)))
        return JSONResponse({"now": iso(state.now())})

    async def counters(request: Request) -> Response:
        with state.lock:
            return JSONResponse(
                {
                    "created": state.created_total,
                    "createdByQuote": dict(state.created_by_quote),
                    "createdByExternalId": dict(state.created_by_external_id),
                    "quotesCreated": state.quotes_created,
                    "rateLimited": dict(state.rate_limited),
                    "doubleOrders": state.double_orders(),
                }
            )

    async def behaviour(request: Request) -> Response:
        if request.method == "POST":
            try:
                changes = json.loads(await request.body() or b"{}")
                if not isinstance(changes, dict):
                    raise ValueError("expected a JSON object of FakeBehaviour fields")
                with state.lock:
                    state.behaviour = state.behaviour.updated(changes)
            except (ValueError, TypeError) as exc:
                return _error(ApiError(400, str(exc)))
        return JSONResponse(state.behaviour.to_json())

    return [
        Route("/_fake/behaviour", behaviour, methods=["GET", "POST"]),
        Route("/_fake/shifts/{shift_id}/deposit", deposit, methods=["POST"]),
        Route("/_fake/advance", advance, methods=["POST"]),
        Route("/_fake/counters", counters, methods=["GET"]),
    ]


def create_app(state: FakeSideShift) -> Starlette:
    """A Starlette app serving the fake SideShift API under ``/api/v2``.

    The test controls are also served, outside the API, under ``/_fake``:
    ``POST /_fake/shifts/{id}/deposit {"amount"}``, ``POST /_fake/advance {"seconds"}``,
    ``GET /_fake/counters`` and ``GET|POST /_fake/behaviour`` (``{"reused_quote": "accept"}``...).

    Parameters:
        state: the state every request reads and changes.

    Returns:
        The ASGI app (serve it with ``FakeSideShiftServer`` or any ASGI server).
    """
    routes = [
        Route("/api/v2" + path, _endpoint(state, name), methods=[method]) for path, method, name in _ROUTES
    ]
    return _FakeApp(routes=routes + _control_routes(state))


class FakeSideShiftServer:
    """Serves a ``FakeSideShift`` over real HTTP on 127.0.0.1, from a background thread.

    Parameters:
        state: the state to serve; a fresh ``FakeSideShift()`` by default.
        port: 0 picks a free port (the socket is bound before the thread starts, so
            there is no race for it).
    """

    def __init__(self, state: FakeSideShift | None = None, *, port: int = 0) -> None:
        self.state = state or FakeSideShift()
        self._port = port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        """The API root to give a client, e.g. ``http://127.0.0.1:41234/api/v2``."""
        return f"http://127.0.0.1:{self.port}/api/v2"

    def start(self, timeout: float = 10.0) -> FakeSideShiftServer:
        """Bind, start serving and wait until the server accepts requests.

        Raises:
            RuntimeError: the server did not start within ``timeout`` seconds.
        """
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted sockets inherit this. asyncio sets it only for sockets created with
        # proto=IPPROTO_TCP; without it every keep-alive answer waits ~40 ms (Nagle plus
        # delayed ACK), since uvicorn writes headers and body separately.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(("127.0.0.1", self._port))
        sock.listen(128)
        self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(
            create_app(self.state),
            log_level="warning",
            access_log=False,
            lifespan="off",
            http="h11",
            ws="none",
            loop="asyncio",
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="fake-sideshift", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("fake SideShift server did not start")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving and join the thread (held answers are cut after about 1 second)."""
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout / 2)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout / 2)
        self._server = self._thread = None

    def __enter__(self) -> FakeSideShiftServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = [
    "ApiError",
    "FakeBehaviour",
    "FakeClock",
    "FakeSideShift",
    "FakeSideShiftServer",
    "RecordedRequest",
    "SystemClock",
    "Timings",
    "create_app",
]
