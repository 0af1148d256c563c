"""The webhook ingress with a fake lookup and a fake publish: every status code, the
order of checks, metrics, and the hook lookup cache. No broker, no server."""

from __future__ import annotations

import json
import threading
import time
import warnings
from collections.abc import Iterator
from typing import Any

import anyio
import dramatiq
import dramatiq.broker
import peewee
import pytest
from dramatiq.brokers.stub import StubBroker
from prometheus_client import REGISTRY

from shiftflow.kernel.contracts import TriggerPayload, execution_id_for
from shiftflow.kernel.db import database, make_database
from shiftflow.kernel.errors import BrokerUnavailable
from shiftflow.kernel.settings import Settings
from shiftflow.kernel.signatures import signed_headers
from shiftflow.producers.ingress.hooks import HookInfo, HookStoreUnavailable, load_hook, make_lookup

with warnings.catch_warnings():
    # Third-party deprecations raised at import time, not ours to fix here: Starlette >= 1.x
    # warns when it finds httpx rather than httpx2, and kernel.enqueue still imports
    # dramatiq's old ``ConnectionError`` name (renamed ``BrokerConnectionError`` in 2.x).
    warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient`")
    from starlette.testclient import TestClient

    from shiftflow.producers.ingress.app import create_app, publish_trigger

NOW = 1_700_000_000.0
LIMIT = 8192
SETTINGS = Settings(webhook_max_body_bytes=LIMIT, webhook_tolerance_seconds=300, publish_timeout_seconds=0.2)
SECRET = "whsec_c2hpZnRmbG93LXRlc3Qtc2VjcmV0LTMyLWJ5dGVzISE="
WF = "11111111-1111-1111-1111-111111111111"
WS = "22222222-2222-2222-2222-222222222222"


def hook(token: str, scheme: str = "standard", active: bool = True) -> HookInfo:
    return HookInfo(
        token=token, scheme=scheme, secrets=(SECRET,), workflow_id=WF, workspace_id=WS, active=active
    )


HOOKS = {
    "std": hook("std"),
    "gh": hook("gh", "github"),
    "stripe": hook("stripe", "stripe"),
    "paused": hook("paused", active=False),
}


class FakePublish:
    """Records payloads; can raise or block to simulate a broken broker."""

    def __init__(self, error: Exception | None = None, block: threading.Event | None = None) -> None:
        self.calls: list[TriggerPayload] = []
        self.error = error
        self.block = block

    def __call__(self, payload: TriggerPayload) -> None:
        if self.block is not None:
            self.block.wait(10)
        if self.error is not None:
            raise self.error
        self.calls.append(payload)


def client(publish: FakePublish, lookup: Any = HOOKS.get, **kwargs: Any) -> TestClient:
    app = create_app(SETTINGS, publish=publish, lookup=lookup, clock=lambda: NOW)
    return TestClient(app, **kwargs)


def post(c: TestClient, token: str, body: bytes, scheme: str = "standard", **over: str) -> Any:
    headers = signed_headers(scheme, SECRET, body, int(NOW), "delivery-1") | over
    return c.post(f"/hooks/{token}", content=body, headers=headers)


def count(outcome: str) -> float:
    return REGISTRY.get_sample_value("shiftflow_webhooks_total", {"outcome": outcome}) or 0.0


BODY = json.dumps({"order": 7, "items": ["a", "b"]}).encode()


# --- 202 ------------------------------------------------------------------------------


@pytest.mark.parametrize(("token", "scheme"), [("std", "standard"), ("gh", "github"), ("stripe", "stripe")])
def test_accepted_publishes_exactly_one_trigger(token: str, scheme: str) -> None:
    publish = FakePublish()
    before = count("accepted")
    r = post(client(publish), token, BODY, scheme)
    assert r.status_code == 202, r.text
    key = f"{scheme}:{'delivery-1' if scheme != 'stripe' else f'{int(NOW)}.'}"
    assert r.json()["status"] == "accepted" and r.json()["workflow_id"] == WF
    assert r.json()["execution_key"].startswith(key)
    assert publish.calls == [
        TriggerPayload(
            workflow_id=WF,
            dedup_key=r.json()["execution_key"],
            source="webhook",
            data={"order": 7, "items": ["a", "b"]},
            received_at=NOW,
            priority="NORMAL",
        )
    ]
    assert count("accepted") == before + 1


@pytest.mark.parametrize(
    "ctype", ["application/json; charset=utf-8", "application/vnd.github+json", "APPLICATION/JSON"]
)
def test_json_media_types_accepted(ctype: str) -> None:
    publish = FakePublish()
    assert post(client(publish), "std", BODY, **{"content-type": ctype}).status_code == 202
    assert len(publish.calls) == 1


# --- 401 / 404 ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "scheme", "over", "reason"),
    [
        ("std", "standard", {"webhook-signature": "v1,AAAA"}, "no signature matched"),
        ("std", "standard", {"webhook-timestamp": str(int(NOW) - 301)}, "no signature matched"),
        ("std", "standard", {"webhook-timestamp": "yesterday"}, "malformed webhook-timestamp"),
        ("std", "github", {}, "missing header webhook-id"),
        ("gh", "github", {"x-hub-signature-256": "sha256=" + "0" * 64}, "no signature matched"),
        ("gh", "github", {"x-github-delivery": ""}, "missing header X-GitHub-Delivery"),
        ("stripe", "stripe", {"stripe-signature": "t=1"}, "malformed Stripe-Signature"),
        ("stripe", "standard", {}, "missing header Stripe-Signature"),
    ],
)
def test_signature_failures_are_401_and_never_publish(
    token: str, scheme: str, over: dict[str, str], reason: str
) -> None:
    publish = FakePublish()
    r = post(client(publish), token, BODY, scheme, **over)
    assert r.status_code == 401
    assert r.json()["error"].startswith(reason)
    assert publish.calls == []


def test_stale_timestamp_is_401() -> None:
    publish = FakePublish()
    app = create_app(SETTINGS, publish=publish, lookup=HOOKS.get, clock=lambda: NOW + 301)
    r = post(TestClient(app), "std", BODY)
    assert r.status_code == 401 and r.json() == {"error": "timestamp outside tolerance of 300 s"}
    assert publish.calls == []


@pytest.mark.parametrize("token", ["nope", "paused"])
def test_unknown_or_inactive_token_is_404_before_signature(token: str) -> None:
    publish = FakePublish()
    r = client(publish).post(f"/hooks/{token}", content=BODY, headers={"content-type": "application/json"})
    assert r.status_code == 404 and r.json() == {"error": "unknown webhook"}
    assert publish.calls == []


# --- 413 / 415 / 422 ------------------------------------------------------------------


def test_oversize_with_content_length_is_413() -> None:
    publish = FakePublish()
    big = b'{"x":"' + b"a" * LIMIT + b'"}'
    r = post(client(publish), "std", big)
    assert r.status_code == 413 and "larger than 8192 bytes" in r.json()["error"]
    assert publish.calls == []


def test_oversize_chunked_without_content_length_is_413() -> None:
    publish = FakePublish()

    def chunks() -> Iterator[bytes]:
        for _ in range(100):
            yield b"a" * 1000

    r = client(publish).post("/hooks/std", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert publish.calls == []


def test_body_at_exactly_the_limit_is_read() -> None:
    publish = FakePublish()
    body = b'{"x":"' + b"a" * (LIMIT - 8) + b'"}'
    assert len(body) == LIMIT
    assert post(client(publish), "std", body).status_code == 202


def _asgi(app: Any, headers: list[tuple[bytes, bytes]], receive: Any) -> list[dict[str, Any]]:
    """Drive the app at the ASGI level to observe exactly how much body it reads."""
    sent: list[dict[str, Any]] = []
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/hooks/std",
        "raw_path": b"/hooks/std",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), *headers],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    anyio.run(app, scope, receive, send)
    return sent


def test_declared_oversize_is_refused_without_reading_the_body() -> None:
    reads = 0

    async def receive() -> dict[str, Any]:
        nonlocal reads
        reads += 1
        return {"type": "http.request", "body": b"a" * 1000, "more_body": True}

    app = create_app(SETTINGS, publish=FakePublish(), lookup=HOOKS.get, clock=lambda: NOW)
    sent = _asgi(app, [(b"content-length", str(LIMIT + 1).encode())], receive)
    assert sent[0]["status"] == 413
    assert reads == 0


def test_undeclared_stream_stops_reading_at_the_limit() -> None:
    reads = 0

    async def receive() -> dict[str, Any]:  # an endless body
        nonlocal reads
        reads += 1
        return {"type": "http.request", "body": b"a" * 1000, "more_body": True}

    app = create_app(SETTINGS, publish=FakePublish(), lookup=HOOKS.get, clock=lambda: NOW)
    sent = _asgi(app, [], receive)
    assert sent[0]["status"] == 413
    assert reads == LIMIT // 1000 + 1


@pytest.mark.parametrize(
    "headers",
    [
        {"content-type": "text/plain"},
        {"content-type": "application/x-www-form-urlencoded"},
        {"content-type": "application/jsonp"},
        {},
        {"content-type": "application/json", "content-encoding": "gzip"},
    ],
)
def test_wrong_content_type_or_compressed_is_415(headers: dict[str, str]) -> None:
    publish = FakePublish()
    r = client(publish).post("/hooks/std", content=BODY, headers=headers)
    assert r.status_code == 415 and "error" in r.json()
    assert publish.calls == []


def test_content_type_checked_before_size() -> None:
    r = client(FakePublish()).post(
        "/hooks/std", content=b"a" * (LIMIT + 1), headers={"content-type": "text/plain"}
    )
    assert r.status_code == 415


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "body is not valid JSON"),
        (b"", "body is not valid JSON"),
        (b"\xff\xfe{}", "body is not valid JSON"),
        (b"[1, 2]", "body must be a JSON object"),
        (b'"text"', "body must be a JSON object"),
        (b'{"x": NaN}', "body is not valid JSON"),
        # Numbers Python reads as infinity: PostgreSQL's jsonb has no infinity.
        (b'{"x": 1e999}', "body contains a number PostgreSQL cannot store"),
        (b'{"x": [-1E400]}', "body contains a number PostgreSQL cannot store"),
        (b'{"x": 1.8e308}', "body contains a number PostgreSQL cannot store"),
        # More digits than Python turns into an integer.
        (b'{"x": ' + b"9" * 4301 + b"}", "body is not valid JSON"),
        (b'{"x": "a\\u0000b"}', "body contains \\u0000"),
        (b'{"x\\u0000": 1}', "body contains \\u0000"),
        (b'{"x": "\\ud800"}', "body contains an unpaired UTF-16 surrogate"),
        (b'{"x": "\xed\xa0\x80"}', "body contains an unpaired UTF-16 surrogate"),  # encoded, no escape
        (b'{"x": "a\x00b"}', "body is not valid JSON"),  # a raw NUL: invalid JSON, never stored
        (b'{"x": ' + b"[" * 64 + b"]" * 64 + b"}", "body nests deeper than 64 levels"),
        (b'{"x": ' + b"[" * 3000 + b"]" * 3000 + b"}", "body nests deeper than 64 levels"),
    ],
)
def test_invalid_json_is_422_after_signature(body: bytes, reason: str) -> None:
    publish = FakePublish()
    r = post(client(publish), "std", body)
    assert r.status_code == 422, r.text
    assert r.json()["error"].startswith(reason)
    assert publish.calls == []


def test_nesting_at_the_cap_is_accepted() -> None:
    body = b'{"x": ' + b"[" * 63 + b"]" * 63 + b"}"
    assert post(client(FakePublish()), "std", body).status_code == 202


@pytest.mark.parametrize(
    "number",
    [b"1.7976931348623157e308", b"-1e308", b"5e-324", b"1e-400", b"9" * 4300, b"-" + b"9" * 4300, b"-0.0"],
)
def test_numbers_at_the_limits_that_can_be_stored_are_accepted(number: bytes) -> None:
    publish = FakePublish()
    assert post(client(publish), "std", b'{"x": ' + number + b"}").status_code == 202
    assert len(publish.calls) == 1


@pytest.mark.parametrize(
    "body",
    [
        b'{"x": "\\\\u0000 is how JSON writes NUL"}',  # an escaped backslash, then "u0000": no NUL
        b'{"x": "' + b"{[" * 100 + b'"}',  # brackets inside a string are not nesting
        b'{"x": "caf\\u00e9 \\u2603"}',  # escapes that are fine
    ],
)
def test_bodies_that_only_look_unstorable_are_accepted(body: bytes) -> None:
    """The byte-level shortcut (``_plainly_storable``) may only skip the walk, never refuse."""
    publish = FakePublish()
    assert post(client(publish), "std", body).status_code == 202
    assert len(publish.calls) == 1


def test_invalid_json_with_bad_signature_is_401_not_422() -> None:
    r = post(client(FakePublish()), "std", b"{not json", **{"webhook-signature": "v1,AAAA"})
    assert r.status_code == 401


# --- 503 ------------------------------------------------------------------------------


def test_broker_unavailable_is_503_with_retry_after() -> None:
    publish = FakePublish(error=BrokerUnavailable("could not publish triggers.start: amqp://secret-host"))
    before = count("unavailable")
    r = post(client(publish), "std", BODY)
    assert r.status_code == 503
    assert r.headers["retry-after"] == "5"
    assert r.json() == {"error": "broker unavailable, retry later"}  # no broker detail leaks
    assert count("unavailable") == before + 1


def test_publish_timeout_is_503_without_waiting_for_the_broker() -> None:
    release = threading.Event()
    publish = FakePublish(block=release)
    try:
        with client(publish) as c:
            started = time.monotonic()
            r = post(c, "std", BODY)
            elapsed = time.monotonic() - started
            release.set()
    finally:
        release.set()
    assert r.status_code == 503 and r.headers["retry-after"] == "5"
    assert r.json() == {"error": "broker did not confirm within 0.2 s, retry later"}
    assert elapsed < 2


def test_lookup_store_down_is_503() -> None:
    def broken(token: str) -> HookInfo | None:
        raise HookStoreUnavailable("could not read webhook: OperationalError")

    publish = FakePublish()
    r = post(client(publish, lookup=broken), "std", BODY)
    assert r.status_code == 503 and r.headers["retry-after"] == "5"
    assert publish.calls == []


def test_unexpected_error_is_json_500_counted_as_error() -> None:
    before = count("error")
    r = post(client(FakePublish(error=KeyError("boom")), raise_server_exceptions=False), "std", BODY)
    assert r.status_code == 500 and r.json() == {"error": "internal error"}
    assert count("error") == before + 1


# --- other routes ---------------------------------------------------------------------


def test_healthz() -> None:
    r = client(FakePublish()).get("/healthz")
    assert r.status_code == 200 and r.text == "ok"


def test_metrics_are_not_served_on_the_public_port() -> None:
    """Issue 11, finding 9: anyone reaching the webhook port could read /metrics."""
    r = client(FakePublish()).get("/metrics")
    assert r.status_code == 404, r.text


def test_readyz_names_what_is_not_ready_while_healthz_stays_200(monkeypatch: pytest.MonkeyPatch) -> None:
    from shiftflow.kernel import readiness
    from shiftflow.producers.ingress import app as ingress

    monkeypatch.setattr(ingress, "READY_MEMO_SECONDS", 0.0)
    monkeypatch.setattr(readiness, "CHECK_TIMEOUT_SECONDS", 0.2)
    problems: dict[str, str | None] = {"broker": None, "database": None}
    slow = threading.Event()

    async def broker() -> str | None:
        return problems["broker"]

    async def database() -> str | None:
        if slow.is_set():
            await anyio.sleep(5)
        return problems["database"]

    app = create_app(SETTINGS, publish=FakePublish(), lookup=HOOKS.get, clock=lambda: NOW,
                     ready_checks={"broker": broker, "database": database})
    with TestClient(app) as c:
        r = c.get("/readyz")
        assert r.status_code == 200 and r.json() == {"status": "ready", "checks": {"broker": "ok", "database": "ok"}}
        problems["broker"] = "not connected to RabbitMQ (down: ConnectionRefusedError)"
        r = c.get("/readyz")
        assert r.status_code == 503 and r.headers["retry-after"] == "5"
        assert r.json() == {
            "error": "not ready: broker: not connected to RabbitMQ (down: ConnectionRefusedError)",
            "checks": {"broker": "not connected to RabbitMQ (down: ConnectionRefusedError)", "database": "ok"},
        }
        assert c.get("/healthz").status_code == 200
        problems["broker"] = None
        slow.set()  # a check that does not answer in time is a failed check
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["checks"]["database"] == "no answer within 0.2 s"


def test_readyz_answers_a_burst_of_probes_with_one_round_of_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    from shiftflow.producers.ingress import app as ingress

    monkeypatch.setattr(ingress, "READY_MEMO_SECONDS", 60.0)  # the burst fits in it however slow the machine
    calls = []

    async def database() -> str | None:
        calls.append(1)
        return None

    app = create_app(SETTINGS, publish=FakePublish(), lookup=HOOKS.get, ready_checks={"database": database})
    with TestClient(app) as c:
        assert all(c.get("/readyz").status_code == 200 for _ in range(20))
    assert len(calls) == 1


def test_metrics_exposes_counter_and_histogram() -> None:
    import httpx

    from shiftflow.kernel.metrics import serve_registry
    from tests.support.ports import free_port

    c = client(FakePublish())
    post(c, "std", BODY)
    server = serve_registry("127.0.0.1", free_port())  # what `shiftflow ingress` starts beside the app
    try:
        r = httpx.get(f"http://127.0.0.1:{server.server_port}/metrics", timeout=5)
    finally:
        server.shutdown()
        server.server_close()
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert 'shiftflow_webhooks_total{outcome="accepted"}' in r.text
    assert 'shiftflow_webhooks_total{outcome="too_large"}' in r.text  # pre-created at zero
    assert "shiftflow_webhook_latency_seconds_bucket" in r.text
    assert "delivery-1" not in r.text  # no unbounded ids as labels


def test_routing_errors_are_json() -> None:
    c = client(FakePublish())
    r = c.get("/hooks/std")
    assert (
        r.status_code == 405 and r.json() == {"error": "Method Not Allowed"} and "POST" in r.headers["allow"]
    )
    assert c.get("/nowhere").json() == {"error": "Not Found"}


# --- the raw ASGI fast path -----------------------------------------------------------


def _drive(
    app: Any, path: str, body: bytes, headers: dict[str, str], root_path: str = ""
) -> tuple[int, dict[bytes, bytes], Any]:
    """One request at the ASGI level: (status, response headers, decoded JSON body)."""
    received = False

    async def receive() -> dict[str, Any]:
        nonlocal received
        if received:
            return {"type": "http.disconnect"}
        received = True
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": root_path + path,
        "raw_path": (root_path + path).encode(),
        "query_string": b"",
        "root_path": root_path,
        "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    anyio.run(app, scope, receive, send)
    start, content = sent[0], b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], dict(start["headers"]), json.loads(content)


@pytest.mark.parametrize(
    ("token", "over", "publish_error", "status"),
    [
        ("std", {}, None, 202),
        ("std", {"webhook-signature": "v1,AAAA"}, None, 401),
        ("nope", {}, None, 404),
        ("std", {"content-type": "text/plain"}, None, 415),
        ("std", {"content-length": "12x"}, None, 400),
        ("std", {}, BrokerUnavailable("down"), 503),
    ],
)
def test_fast_path_and_starlette_routing_answer_alike(
    token: str, over: dict[str, str], publish_error: Exception | None, status: int
) -> None:
    # Under a root path the request goes through Starlette's routing to the same handler;
    # without one it takes the fast path. Both must give the same status, headers and body.
    headers = signed_headers("standard", SECRET, BODY, int(NOW), "delivery-1") | over
    answers = []
    for root_path in ("", "/ingress"):
        publish = FakePublish(error=publish_error)
        app = create_app(SETTINGS, publish=publish, lookup=HOOKS.get, clock=lambda: NOW)
        answers.append(_drive(app, f"/hooks/{token}", BODY, headers, root_path))
        assert len(publish.calls) == (status == 202)
    assert answers[0] == answers[1]
    got_status, got_headers, got_body = answers[0]
    assert got_status == status
    assert got_headers[b"content-type"] == b"application/json"
    assert int(got_headers[b"content-length"]) == len(json.dumps(got_body, separators=(",", ":")))
    assert (got_headers.get(b"retry-after") == b"5") == (status == 503)
    if status == 202:
        assert got_body == {
            "status": "accepted",
            "execution_id": str(execution_id_for(WF, "standard:delivery-1")),
            "execution_key": "standard:delivery-1",
            "workflow_id": WF,
        }
    else:
        assert set(got_body) == {"error"}


def test_fast_path_headers_are_case_insensitive_and_first_wins() -> None:
    headers = signed_headers("standard", SECRET, BODY, int(NOW), "delivery-1")
    raw = [(k.title().encode(), v.encode()) for k, v in headers.items()]
    raw.append((b"webhook-id", b"a-second-id-that-is-ignored"))
    publish = FakePublish()
    app = create_app(SETTINGS, publish=publish, lookup=HOOKS.get, clock=lambda: NOW)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": BODY, "more_body": False}

    sent = _asgi(app, raw, receive)
    assert sent[0]["status"] == 202
    assert publish.calls[0].dedup_key == "standard:delivery-1"


def test_client_gone_mid_body_is_400() -> None:
    messages = iter(
        [{"type": "http.request", "body": b'{"a":', "more_body": True}, {"type": "http.disconnect"}]
    )

    async def receive() -> dict[str, Any]:
        return next(messages)

    publish = FakePublish()
    app = create_app(SETTINGS, publish=publish, lookup=HOOKS.get, clock=lambda: NOW)
    sent = _asgi(app, [], receive)
    assert sent[0]["status"] == 400
    assert json.loads(sent[1]["body"]) == {"error": "client disconnected before the body was complete"}
    assert publish.calls == []


@pytest.mark.parametrize("path", ["/hooks/", "/hooks/std/more"])
def test_paths_beside_the_route_are_starlette_404(path: str) -> None:
    r = client(FakePublish()).post(path, content=BODY, headers={"content-type": "application/json"})
    assert r.status_code == 404 and r.json() == {"error": "Not Found"}


def test_unexpected_error_reaches_the_server_after_the_500() -> None:
    # The server must see the exception (it logs it), as with Starlette's error middleware.
    with pytest.raises(KeyError):
        post(client(FakePublish(error=KeyError("boom"))), "std", BODY)


# --- default publish ------------------------------------------------------------------


def test_default_publish_sends_triggers_start_with_priority() -> None:
    saved = dramatiq.broker.global_broker
    broker = StubBroker()
    broker.declare_queue("triggers")
    dramatiq.set_broker(broker)
    try:
        payload = TriggerPayload(workflow_id=WF, dedup_key="standard:d", source="webhook", data={"a": 1})
        publish_trigger(payload)
        [message] = [dramatiq.Message.decode(m) for m in broker.queues["triggers"].queue]
    finally:
        dramatiq.broker.global_broker = saved
        broker.close()
    assert message.actor_name == "triggers.start"
    assert message.options["broker_priority"] == 3
    assert message.kwargs["payload"]["dedup_key"] == "standard:d"


# --- hook lookup cache ----------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Loader:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.down = False

    def __call__(self, token: str) -> HookInfo | None:
        self.calls.append(token)
        if self.down:
            raise HookStoreUnavailable("down")
        return HOOKS.get(token)


def test_cache_serves_hits_for_ttl_and_misses_for_negative_ttl() -> None:
    loader, clock = Loader(), Clock()
    lookup = make_lookup(loader, ttl=30, negative_ttl=5, clock=clock)
    assert lookup("std") == HOOKS["std"] and lookup("std") == HOOKS["std"]
    assert lookup("nope") is None and lookup("nope") is None
    assert loader.calls == ["std", "nope"]
    clock.t += 6
    lookup("std"), lookup("nope")
    assert loader.calls == ["std", "nope", "nope"]
    clock.t += 25
    lookup("std")
    assert loader.calls[-1] == "std" and len(loader.calls) == 4


def test_cache_serves_stale_hit_while_store_is_down_then_gives_up() -> None:
    loader, clock = Loader(), Clock()
    lookup = make_lookup(loader, ttl=30, stale_ttl=300, clock=clock)
    lookup("std")
    loader.down = True
    clock.t += 100
    assert lookup("std") == HOOKS["std"]
    with pytest.raises(HookStoreUnavailable):
        lookup("gh")  # never seen: nothing to fall back on
    clock.t += 300
    with pytest.raises(HookStoreUnavailable):
        lookup("std")


def test_cache_skips_impossible_tokens_and_is_bounded() -> None:
    loader, clock = Loader(), Clock()
    lookup = make_lookup(loader, max_entries=2, clock=clock)
    for bad in ["", "a" * 65, "../etc", "tök", "a b"]:
        assert lookup(bad) is None
    assert loader.calls == []
    lookup("std"), lookup("gh"), lookup("stripe"), lookup("std")
    assert loader.calls == ["std", "gh", "stripe", "std"]  # "std" was evicted first


# --- load_hook against SQLite -----------------------------------------------------------


@pytest.fixture
def sqlite_db(tmp_path: Any) -> Iterator[peewee.Database]:
    from shiftflow.models.tables.workflows import Webhook

    # Webhook and every table its foreign keys reach, whatever other models grow.
    tables: set[type[peewee.Model]] = set()
    todo: list[type[peewee.Model]] = [Webhook]
    while todo:
        model = todo.pop()
        if model not in tables:
            tables.add(model)
            todo.extend(model._meta.refs.values())
    saved = database.obj
    db = make_database(f"sqlite:///{tmp_path}/hooks.db")
    database.initialize(db)
    try:
        with db.connection_context():
            db.create_tables(list(tables))
        yield db
    finally:
        db.close()
        database.initialize(saved)


HOOK_KEY = "unit-tests-secret-key-of-32-characters-or-more"


@pytest.fixture
def keyed(monkeypatch: pytest.MonkeyPatch) -> None:
    from shiftflow.kernel import settings as settings_module

    monkeypatch.setattr(settings_module, "_current", Settings(secret_keys=(HOOK_KEY,)))


def _sealed(values: list[Any]) -> dict[str, Any]:
    from shiftflow.models.tables import webhook_secrets

    sealed, key_id = webhook_secrets.seal(values)
    return {"sealed_secrets": sealed, "key_id": key_id}


def test_load_hook_reads_and_releases_the_connection(sqlite_db: peewee.Database, keyed: None) -> None:
    from shiftflow.models.tables.tenancy import Workspace
    from shiftflow.models.tables.workflows import Webhook, Workflow

    with sqlite_db.connection_context():
        ws = Workspace.create(name="w", slug="w")
        active = Workflow.create(workspace=ws, name="a", status="ACTIVE")
        paused = Workflow.create(workspace=ws, name="p", status="PAUSED")
        Webhook.create(workflow=active, token="tok-a", scheme="github", **_sealed(["s1", "s2", 3, ""]))
        Webhook.create(workflow=active, token="tok-off", is_active=False, **_sealed(["s"]))
        Webhook.create(workflow=paused, token="tok-p", **_sealed(["s"]))
        assert "s1" not in str(sqlite_db.execute_sql("SELECT * FROM webhook").fetchall())  # sealed at rest
    assert load_hook("tok-a") == HookInfo("tok-a", "github", ("s1", "s2"), str(active.id), str(ws.id), True)
    assert sqlite_db.is_closed()  # no connection held after the lookup
    assert load_hook("tok-off").active is False  # type: ignore[union-attr]
    assert load_hook("tok-p").active is False  # type: ignore[union-attr]
    assert load_hook("missing") is None
    assert sqlite_db.is_closed()


def test_secrets_no_configured_key_opens_make_the_lookup_unavailable_not_unknown(
    sqlite_db: peewee.Database, keyed: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keys missing or wrong on the ingress: 503 (senders retry), never 401 or 404 (they give up)."""
    from shiftflow.kernel import settings as settings_module
    from shiftflow.models.tables.tenancy import Workspace
    from shiftflow.models.tables.workflows import Webhook, Workflow

    with sqlite_db.connection_context():
        ws = Workspace.create(name="w", slug="w")
        workflow = Workflow.create(workspace=ws, name="a", status="ACTIVE")
        Webhook.create(workflow=workflow, token="tok-a", **_sealed(["s1"]))
    for keys in (("another-key-of-more-than-32-characters-here",), ()):
        monkeypatch.setattr(settings_module, "_current", Settings(secret_keys=keys))
        with pytest.raises(HookStoreUnavailable, match="configured keys"):
            load_hook("tok-a")
        assert sqlite_db.is_closed()
    r = client(FakePublish(), lookup=lambda token: load_hook(token)).post(
        "/hooks/tok-a", content=BODY, headers={"content-type": "application/json"}
    )
    assert r.status_code == 503 and r.headers["retry-after"]


def test_load_hook_maps_database_errors_to_transient(sqlite_db: peewee.Database) -> None:
    with sqlite_db.connection_context():
        sqlite_db.execute_sql("DROP TABLE webhook")
    with pytest.raises(HookStoreUnavailable):
        load_hook("tok")
    assert sqlite_db.is_closed()
