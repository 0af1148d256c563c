"""The confirm-pipelining publisher and the ingress on it, against real RabbitMQ.

A small TCP proxy between publisher and broker lets a test hold back the broker's
answers (confirms never arrive) or cut the connection at an exact moment; the
management API closes a connection from the server side.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import urllib.request
from base64 import b64encode
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import dramatiq
import httpx
import pika
import pytest
import uvicorn
from dramatiq.brokers.rabbitmq import RabbitmqBroker

from shiftflow.kernel.confirm_publisher import (
    ConfirmPublisher,
    Unroutable,
    queue_arguments,
    queue_declarations,
)
from shiftflow.kernel.contracts import MAX_PRIORITY, Priority, TriggerPayload
from shiftflow.kernel.errors import BrokerUnavailable
from shiftflow.kernel.settings import Settings
from shiftflow.kernel.signatures import signed_headers
from shiftflow.producers.ingress import app as ingress
from shiftflow.producers.ingress.app import create_app
from shiftflow.producers.ingress.hooks import HookInfo
from tests.support.ports import free_port
from tests.support.rabbitmq import RABBIT_API
from tests.support.waiting import wait_for_http, wait_until

pytestmark = pytest.mark.integration

SECRET = "whsec_c2hpZnRmbG93LXRlc3Qtc2VjcmV0LTMyLWJ5dGVzISE="
WF = "11111111-1111-1111-1111-111111111111"
HOOK = HookInfo(
    token="tok",
    scheme="standard",
    secrets=(SECRET,),
    workflow_id=WF,
    workspace_id="22222222-2222-2222-2222-222222222222",
    active=True,
)


def payload(i: int) -> TriggerPayload:
    return TriggerPayload(
        workflow_id=WF,
        dedup_key=f"standard:msg_{i}",
        source="webhook",
        data={"i": i},
        received_at=1_700_000_000.0,
        priority="HIGH" if i % 2 else "NORMAL",
    )


def drain(url: str, queue: str = "triggers") -> list[tuple[Any, bytes]]:
    """Every message in ``queue`` as (properties, body), removed from it."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        out: list[tuple[Any, bytes]] = []
        while True:
            method, properties, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                return out
            out.append((properties, body))
    finally:
        connection.close()


def depth(url: str, queue: str = "triggers") -> int:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        return int(connection.channel().queue_declare(queue, passive=True).method.message_count)
    finally:
        connection.close()


class Proxy:
    """A TCP proxy to RabbitMQ that can hold back the broker's answers or cut connections."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.flowing = threading.Event()
        self.flowing.set()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.lock = threading.Lock()
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, amqp_url: str) -> str:
        parts = urlsplit(amqp_url)
        return urlunsplit(parts._replace(netloc=f"{parts.username}:{parts.password}@127.0.0.1:{self.port}"))

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            with self.lock:
                self.pairs.append((client, server))
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_broker: bool) -> None:
        try:
            while data := src.recv(65536):
                if from_broker:
                    self.flowing.wait()  # held: the publisher sees no confirm
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        """Drop every proxied connection at once, as a network failure would."""
        with self.lock:
            pairs, self.pairs = self.pairs, []
        for pair in pairs:
            for sock in pair:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()

    def close(self) -> None:
        self.closed = True
        self.flowing.set()
        self.listener.close()
        self.cut()


@pytest.fixture
def proxy(amqp_url: str) -> Iterator[Proxy]:
    parts = urlsplit(amqp_url)
    p = Proxy((parts.hostname or "127.0.0.1", parts.port or 5672))
    yield p
    p.close()


def api(method: str, path: str) -> Any:
    request = urllib.request.Request(RABBIT_API + path, method=method)
    request.add_header("Authorization", "Basic " + b64encode(b"guest:guest").decode())
    with urllib.request.urlopen(request, timeout=10) as response:
        raw = response.read()
        return json.loads(raw) if raw else None


def vhost_connections(amqp_url: str) -> list[str]:
    vhost = unquote(urlsplit(amqp_url).path[1:])
    return [c["name"] for c in api("GET", f"/vhosts/{quote(vhost, safe='')}/connections") or []]


# --------------------------------------------------------------------------- publisher


def test_queue_shape_is_dramatiqs(amqp_url: str) -> None:
    """Declared like Dramatiq's broker, so a worker starting later declares without conflict."""
    broker = RabbitmqBroker(url=amqp_url, confirm_delivery=True, max_priority=MAX_PRIORITY)
    try:
        assert queue_arguments("triggers") == broker._build_queue_arguments("triggers")

        async def main() -> None:
            publisher = ConfirmPublisher(amqp_url)
            await publisher.send("triggers.start", payload(0))
            await publisher.close()

        asyncio.run(main())
        broker.declare_queue("triggers", ensure=True)  # PRECONDITION_FAILED if the shapes differed
        names = [name for name, _ in queue_declarations("triggers")]
        assert names == ["triggers", "triggers.DQ", "triggers.XQ"]
        assert depth(amqp_url, "triggers.XQ") == 0
    finally:
        broker.close()


def test_many_concurrent_publishes_are_confirmed_and_decode_as_dramatiq_messages(amqp_url: str) -> None:
    count = 600

    async def main() -> list[str]:
        publisher = ConfirmPublisher(amqp_url, max_unconfirmed=64)
        try:
            ids = await asyncio.gather(
                *(
                    publisher.send(
                        "triggers.start", payload(i), priority=int(Priority.parse(payload(i).priority))
                    )
                    for i in range(count)
                )
            )
            assert publisher.unconfirmed == 0
            return list(ids)
        finally:
            await publisher.close()

    ids = asyncio.run(main())
    messages = drain(amqp_url)
    assert len(messages) == count
    decoded = [dramatiq.Message.decode(body) for _, body in messages]
    assert sorted(m.message_id for m in decoded) == sorted(ids)
    by_key = {
        m.kwargs["payload"]["dedup_key"]: (m, props) for m, (props, _) in zip(decoded, messages, strict=True)
    }
    assert len(by_key) == count
    message, props = by_key["standard:msg_7"]
    assert (message.queue_name, message.actor_name) == ("triggers", "triggers.start")
    assert message.kwargs["payload"]["data"] == {"i": 7}
    assert message.options["broker_priority"] == int(Priority.HIGH)
    assert (props.delivery_mode, props.priority, props.message_id) == (
        2,
        int(Priority.HIGH),
        message.message_id,
    )
    assert by_key["standard:msg_8"][1].priority == int(Priority.NORMAL)


def test_unconfirmed_cap_holds_while_the_broker_does_not_confirm(amqp_url: str, proxy: Proxy) -> None:
    cap = 10

    async def main() -> None:
        publisher = ConfirmPublisher(proxy.url(amqp_url), max_unconfirmed=cap)
        try:
            await publisher.send("triggers.start", payload(-1))  # connected, queues declared
            proxy.flowing.clear()

            async def one(i: int) -> str:
                try:
                    await asyncio.wait_for(publisher.send("triggers.start", payload(i)), 1.0)
                    return "ok"
                except TimeoutError:
                    return "timeout"

            outcomes = await asyncio.gather(*(one(i) for i in range(50)))
            # None confirmed, none reported as success; only `cap` ever reached the broker.
            assert outcomes == ["timeout"] * 50
            # The callers gave up, but their messages are still unconfirmed: slots stay taken.
            assert publisher.unconfirmed == cap
            assert await wait_depth(amqp_url, cap + 1)
            proxy.flowing.set()
            for _ in range(100):
                if publisher.unconfirmed == 0:
                    break
                await asyncio.sleep(0.05)
            assert publisher.unconfirmed == 0
            await asyncio.wait_for(publisher.send("triggers.start", payload(99)), 5)
        finally:
            await publisher.close()

    asyncio.run(main())
    assert depth(amqp_url) == cap + 2


async def wait_depth(url: str, expected: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await asyncio.to_thread(depth, url) == expected:
            return True
        await asyncio.sleep(0.1)
    return False


def test_unroutable_and_deleted_queue_fail_then_the_queue_is_declared_again(amqp_url: str) -> None:
    async def main() -> None:
        publisher = ConfirmPublisher(amqp_url)
        try:
            with pytest.raises(Unroutable):
                await asyncio.wait_for(publisher.publish("no.such.queue", b"{}", message_id="m1"), 5)
            assert publisher.unconfirmed == 0
            await publisher.send("triggers.start", payload(1))
            await asyncio.to_thread(delete_queue, amqp_url, "triggers")
            with pytest.raises(Unroutable):
                await asyncio.wait_for(publisher.send("triggers.start", payload(2)), 5)
            # The sender's retry finds the queue declared again.
            await asyncio.wait_for(publisher.send("triggers.start", payload(2)), 5)
        finally:
            await publisher.close()

    asyncio.run(main())
    assert [dramatiq.Message.decode(b).kwargs["payload"]["dedup_key"] for _, b in drain(amqp_url)] == [
        "standard:msg_2"
    ]


def delete_queue(url: str, queue: str) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        connection.channel().queue_delete(queue)
    finally:
        connection.close()


@pytest.mark.parametrize("how", ["network cut", "closed by the server"])
def test_connection_lost_mid_stream_fails_in_flight_then_reconnects(
    amqp_url: str, proxy: Proxy, how: str
) -> None:
    async def main() -> None:
        publisher = ConfirmPublisher(proxy.url(amqp_url), backoff=(0.05, 0.5))
        try:
            await publisher.send("triggers.start", payload(0))
            proxy.flowing.clear()  # these publishes reach the broker, their confirms do not
            in_flight = [
                asyncio.ensure_future(publisher.send("triggers.start", payload(i))) for i in range(1, 21)
            ]
            while publisher.unconfirmed < 20:
                await asyncio.sleep(0.01)
            if how == "network cut":
                proxy.cut()
            else:
                # The management API lists connections with its statistics, every few seconds.
                names = await asyncio.to_thread(wait_until, lambda: vhost_connections(amqp_url), timeout=15)
                assert len(names) == 1
                await asyncio.to_thread(api, "DELETE", f"/connections/{quote(names[0], safe='')}")
                await asyncio.sleep(0.3)
                proxy.cut()  # the held close frame would never arrive otherwise
            proxy.flowing.set()
            results = await asyncio.wait_for(asyncio.gather(*in_flight, return_exceptions=True), 10)
            # Lost before the confirm: every one fails, none is reported as success.
            assert all(isinstance(r, BrokerUnavailable) for r in results), results
            # The publisher reconnects by itself; later publishes succeed.
            for _attempt in range(100):
                try:
                    await asyncio.wait_for(publisher.send("triggers.start", payload(100)), 5)
                    break
                except BrokerUnavailable:
                    await asyncio.sleep(0.1)
            else:
                pytest.fail("publisher did not reconnect")
            assert publisher.connected
        finally:
            await publisher.close()

    asyncio.run(main())


def test_unreachable_broker_fails_fast(amqp_url: str) -> None:
    port = free_port()  # nothing listens there

    async def main() -> float:
        publisher = ConfirmPublisher(f"amqp://guest:guest@127.0.0.1:{port}/%2F")
        try:
            started = time.monotonic()
            with pytest.raises(BrokerUnavailable):
                await asyncio.wait_for(publisher.send("triggers.start", payload(0)), 5)
            with pytest.raises(BrokerUnavailable):  # while backing off: at once
                await asyncio.wait_for(publisher.send("triggers.start", payload(1)), 5)
            return time.monotonic() - started
        finally:
            await publisher.close()

    assert asyncio.run(main()) < 2.0


# --------------------------------------------------------------------------- ingress


class _Uvicorn(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # runs in a test thread
        pass


@pytest.fixture
def serve() -> Iterator[Any]:
    servers: list[tuple[_Uvicorn, threading.Thread]] = []

    def start(amqp_url: str, timeout: float = 2.0, hooks: dict[str, HookInfo] | None = None) -> str:
        settings = Settings(amqp_url=amqp_url, publish_timeout_seconds=timeout, webhook_max_body_bytes=4096)
        app = create_app(settings, lookup=(hooks if hooks is not None else {"tok": HOOK}).get)
        port = free_port()
        server = _Uvicorn(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        servers.append((server, thread))
        base = f"http://127.0.0.1:{port}"
        wait_for_http(base + "/healthz", timeout=10)
        return base

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(10)


def post(base: str, delivery_id: str, body: bytes = b'{"amount": 42}') -> httpx.Response:
    headers = signed_headers("standard", SECRET, body, int(time.time()), delivery_id)
    return httpx.post(f"{base}/hooks/tok", content=body, headers=headers, timeout=15)


def test_ingress_answers_202_only_after_the_confirm(amqp_url: str, proxy: Proxy, serve: Any) -> None:
    base = serve(proxy.url(amqp_url), timeout=1.0)
    response = post(base, "msg_1")
    assert response.status_code == 202, response.text
    assert response.json()["execution_key"] == "standard:msg_1"
    [(props, body)] = drain(amqp_url)
    assert dramatiq.Message.decode(body).kwargs["payload"]["dedup_key"] == "standard:msg_1"
    assert props.priority == int(Priority.NORMAL)

    proxy.flowing.clear()  # the message reaches RabbitMQ, its confirm does not reach the ingress
    response = post(base, "msg_2")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert wait_until(lambda: depth(amqp_url) == 1, timeout=5)  # on the queue, yet not reported as accepted
    proxy.flowing.set()

    too_big = b'{"x": "' + b"a" * 5000 + b'"}'
    assert post(base, "msg_3", too_big).status_code == 413  # the body limit still holds


def test_ingress_answers_503_with_retry_after_when_the_broker_is_unreachable(
    amqp_url: str, serve: Any
) -> None:
    base = serve(f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F", timeout=3.0)
    started = time.monotonic()
    response = post(base, "msg_1")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert response.json() == {"error": "broker unavailable, retry later"}
    assert time.monotonic() - started < 3.0  # refused connections fail fast, not at the timeout


def test_ingress_reuses_a_lookup_for_a_short_time_only(
    amqp_url: str, serve: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The event loop skips the lookup thread for a token seen within LOOKUP_MEMO_SECONDS."""
    memo_seconds = 2.0  # above the default, so that a slow first request cannot outlast it
    monkeypatch.setattr(ingress, "LOOKUP_MEMO_SECONDS", memo_seconds)
    hooks = {"tok": HOOK}
    base = serve(amqp_url, hooks=hooks)
    assert post(base, "msg_1").status_code == 202
    del hooks["tok"]  # the webhook is deleted
    assert post(base, "msg_2").status_code == 202  # answered from the memo
    time.sleep(memo_seconds + 0.1)
    assert post(base, "msg_3").status_code == 404
    assert depth(amqp_url) == 2
