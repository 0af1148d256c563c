"""Confirm-pipelining publisher: many publishes in flight, each awaiting its own confirm.

Dramatiq's RabbitMQ broker waits for each publisher confirm before the next publish, and
waiting for each confirm in turn is what makes confirmed publishing slow
(docs/benchmarks.md#publishing-with-confirms). The ingress must still answer 202 only
once RabbitMQ has the message on disk, but nothing forces one message at a time: this publisher runs on the ASGI event loop (pika's asyncio
adapter), gives every request its own delivery tag and lets the request await a future
that the broker's ``basic.ack`` resolves. RabbitMQ acks many tags with one frame
(``multiple=True``) and writes them with one fsync, so concurrent requests share the
cost of persistence.

What it keeps from the one-at-a-time path:

* **Only a confirm is success.** ``basic.nack`` (``QueueFull``: the queue is at its
  ``x-max-length``, declared with ``x-overflow: reject-publish``), a ``basic.return``
  (mandatory publish that no queue took) and a connection or channel lost before the ack
  all raise ``BrokerUnavailable``; the caller answers 503 and the sender's retry carries
  the same delivery id, which the trigger actor deduplicates.
* **A cap on unconfirmed messages** (``max_unconfirmed``): a publish first takes a slot,
  and the slot is given back only when the broker answered or the connection died, not
  when an impatient caller gave up, so a broker that stops confirming cannot make the
  process buffer without bound; callers beyond the cap wait (their timeout makes it 503).
* **Reconnection with backoff**: a lost connection fails every in-flight publish, then a
  background task reconnects (exponential backoff with jitter). While the last attempt
  failed, publishes fail at once instead of waiting for their timeout.
* **The same queue shape as Dramatiq**: the queues it publishes to are declared on every
  connection exactly as the workers' broker (``kernel.broker.ShiftflowRabbitmqBroker``)
  declares them (durable, dead-lettering to ``<queue>.XQ``, of the same type: classic with
  ``x-max-priority`` or quorum with ``x-delivery-limit``, and the
  length limit of ``triggers``), with their ``.DQ`` and ``.XQ`` companions, so workers and
  publisher agree whichever starts first. Bodies are Dramatiq messages
  (``kernel.enqueue.build_message``), persistent (delivery mode 2), with their priority.

The ingress still enforces its body limit before a message is built.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import random
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import pika
import pika.exceptions
import pika.frame
import pika.spec
from dramatiq.common import dq_name, xq_name
from pika.adapters.asyncio_connection import AsyncioConnection
from pika.channel import Channel
from prometheus_client import Counter, Gauge

from shiftflow.kernel.broker import CLASSIC, QUORUM, amqp_url_with_defaults, dead_letter_arguments
from shiftflow.kernel.broker import queue_arguments as broker_queue_arguments
from shiftflow.kernel.contracts import Priority, Queue
from shiftflow.kernel.enqueue import encode_message
from shiftflow.kernel.errors import BrokerUnavailable, QueueFull

log = logging.getLogger(__name__)

#: Default cap on published-but-unconfirmed messages per publisher (per process).
MAX_UNCONFIRMED = 1024
#: Bytes of frames gathered before they are sent without waiting for the loop iteration's
#: end: a few dozen trigger messages, so one system call still carries many.
FLUSH_BYTES = 8 * 1024

UNCONFIRMED = Gauge("shiftflow_publisher_unconfirmed", "Messages published and not yet confirmed.")
CONNECTS = Counter(
    "shiftflow_publisher_connects_total",
    "Connection attempts of the confirm-pipelining publisher, by outcome (ok, failed, lost).",
    ["outcome"],
)
for _outcome in ("ok", "failed", "lost"):
    CONNECTS.labels(_outcome)


class _CoalescingConnection(AsyncioConnection):
    """pika's asyncio connection, writing all frames of one loop iteration with one send.

    pika hands every frame (three per message: method, header, body) to its transport
    separately, and the transport sends each with its own ``send`` call; on loopback a
    send costs about as much as building the message. Collecting the output of one loop
    iteration (all the publishes of the requests that ran in it) into one write keeps the
    order of frames and makes that one system call. ``_adapter_emit_data`` is the hook
    pika's connection leaves to its adapters for exactly this: emitting bytes.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._outgoing: list[bytes] = []
        self._outgoing_size = 0
        super().__init__(*args, **kwargs)

    def _adapter_emit_data(self, data: bytes) -> None:
        if not self._outgoing:
            asyncio.get_running_loop().call_soon(self._flush)
        self._outgoing.append(data)
        self._outgoing_size += len(data)
        if self._outgoing_size >= FLUSH_BYTES:
            # A long loop iteration (hundreds of requests) would otherwise hand RabbitMQ
            # all its messages at its end, and the broker and the ingress would take turns
            # idling; sending every few dozen messages keeps both busy at once.
            self._flush()

    def _flush(self) -> None:
        data, self._outgoing, self._outgoing_size = b"".join(self._outgoing), [], 0
        # Gone when the connection was aborted meanwhile: the frames die with it, and
        # their publishes fail through the close callback (never reported as confirmed).
        if data and self._transport is not None:
            super()._adapter_emit_data(data)


_FRAME_END = b"\xce"
#: basic.publish property flags: delivery-mode, priority, and message-id when given.
_FLAGS = 0x1000 | 0x0800
_FLAG_MESSAGE_ID = 0x0080


@functools.lru_cache(maxsize=64)
def _publish_method_frame(channel_number: int, queue: str) -> bytes:
    """The ``basic.publish`` method frame (default exchange, mandatory): the same for every
    message to ``queue`` on one channel, so it is encoded once."""
    return pika.frame.Method(
        channel_number, pika.spec.Basic.Publish(exchange="", routing_key=queue, mandatory=True)
    ).marshal()


def publish_frames(
    channel_number: int, queue: str, body: bytes, priority: int, message_id: str, body_max: int
) -> list[bytes]:
    """The frames pika's ``basic_publish`` sends for a persistent message with ``priority``
    and ``message_id``: method, content header, body frames of at most ``body_max`` bytes.

    pika builds and marshals three frame objects and a ``BasicProperties`` per message in
    pure Python; only the body size, message id and body change between messages, so
    the rest is packed once (a test checks the bytes against pika's own).
    """
    if message_id:
        encoded_id = message_id.encode("utf-8")
        properties = (
            struct.pack(">HBBB", _FLAGS | _FLAG_MESSAGE_ID, 2, priority, len(encoded_id)) + encoded_id
        )
    else:
        properties = struct.pack(">HBB", _FLAGS, 2, priority)
    header = struct.pack(">HxxQ", pika.spec.BasicProperties.INDEX, len(body)) + properties
    frames = [
        _publish_method_frame(channel_number, queue),
        struct.pack(">BHI", pika.spec.FRAME_HEADER, channel_number, len(header)) + header + _FRAME_END,
    ]
    for start in range(0, len(body), body_max):
        chunk = body[start : start + body_max]
        frames.append(
            struct.pack(">BHI", pika.spec.FRAME_BODY, channel_number, len(chunk)) + chunk + _FRAME_END
        )
    return frames


class Unroutable(BrokerUnavailable):
    """Raised when RabbitMQ returned a mandatory message: no queue took it (queue missing)."""


def queue_arguments(queue: str, max_length: int = 0, queue_type: str = CLASSIC) -> dict[str, Any]:
    """The arguments ``queue`` is declared with: Dramatiq's, plus a length limit when
    ``max_length`` > 0 (``kernel.broker.queue_arguments``, which the workers' broker uses).

    Must match the workers' declare exactly: RabbitMQ refuses (PRECONDITION_FAILED) a
    second declare of a queue with different arguments.
    """
    return broker_queue_arguments(queue, max_length, queue_type)


def queue_declarations(
    queue: str, max_length: int = 0, queue_type: str = CLASSIC
) -> list[tuple[str, dict[str, Any]]]:
    """(name, arguments) of ``queue`` and its delay and dead-letter queues, as the workers'
    broker declares them (only ``queue`` itself carries ``max_length``), all of ``queue_type``."""
    return [
        (queue, queue_arguments(queue, max_length, queue_type)),
        (dq_name(queue), queue_arguments(queue, 0, queue_type)),
        (xq_name(queue), dead_letter_arguments(queue_type)),
    ]


class ConfirmPublisher:
    """Publish persistent messages with publisher confirms, many in flight at once.

    Create it anywhere; it connects on first use (or ``start``) inside the running event
    loop and must then be used from that loop only. ``close`` it at shutdown.

    Parameters:
        url: the AMQP URL, or several (a cluster's nodes): each connection attempt tries
            them in order and keeps the first that opens. Heartbeat and blocked-connection
            timeout are added unless set.
        queues: queues declared (Dramatiq-identically) on every connection.
        max_lengths: queue -> ``x-max-length`` (``kernel.broker.max_lengths(settings)``):
            the same limits the workers' broker declares. A publish to a full queue
            raises ``QueueFull``.
        max_unconfirmed: cap on published, unconfirmed messages.
        connect_timeout: seconds one connection attempt (open, confirm mode, declares) to
            one address may take.
        backoff: (first, longest) delay in seconds between failed rounds of attempts.
        queue_type: ``classic`` or ``quorum``, as the workers' broker (``SHIFTFLOW_QUEUE_TYPE``).
    """

    _CONNECTING, _UP, _DOWN, _CLOSED = "connecting", "up", "down", "closed"

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        queues: Sequence[str] = (Queue.TRIGGERS,),
        max_lengths: Mapping[str, int] | None = None,
        max_unconfirmed: int = MAX_UNCONFIRMED,
        connect_timeout: float = 5.0,
        backoff: tuple[float, float] = (0.2, 10.0),
        queue_type: str = CLASSIC,
    ) -> None:
        if max_unconfirmed < 1:
            raise ValueError("max_unconfirmed must be at least 1")
        urls = [url] if isinstance(url, str) else list(url)
        if not urls:
            raise ValueError("at least one broker URL is needed")
        self._addresses = [pika.URLParameters(amqp_url_with_defaults(u)) for u in urls]
        for params in self._addresses:
            # One attempt per address and round: the backoff loop below retries, and a refused
            # connection must turn into a fast 503 rather than pika's own retries with sleeps.
            params.connection_attempts = 1
            params.socket_timeout = connect_timeout
        self._queue_type = queue_type
        self._queues = tuple(queues)
        self._max_lengths = dict(max_lengths or {})
        self.max_unconfirmed = max_unconfirmed
        self._connect_timeout = connect_timeout
        self._backoff = backoff
        self._state = self._CONNECTING
        self._last_error = ""
        self._task: asyncio.Task[None] | None = None
        # Loop-bound objects are made in ``start`` so that the publisher can be built
        # before the server's event loop runs.
        self._slots: asyncio.Semaphore | None = None
        self._changed: asyncio.Event | None = None
        self._lost: asyncio.Event | None = None
        self._connection: AsyncioConnection | None = None
        self._channel: Channel | None = None
        self._next_tag = 1
        # delivery tag -> (future, message id), in publish order: ``multiple`` acks pop
        # from the front. OrderedDict because popping the front of a plain dict degrades.
        self._pending: collections.OrderedDict[int, tuple[asyncio.Future[None], str]] = (
            collections.OrderedDict()
        )

    # ------------------------------------------------------------------ public API

    @property
    def connected(self) -> bool:
        """True while a channel in confirm mode is open."""
        return self._state == self._UP

    @property
    def state(self) -> str:
        """``connecting``, ``up``, ``down`` (the last attempt failed: ``last_error``) or ``closed``."""
        return self._state

    @property
    def last_error(self) -> str:
        """Why the last connection attempt failed (empty while connected or never failed)."""
        return self._last_error

    @property
    def unconfirmed(self) -> int:
        """Messages published on the current channel and not yet confirmed."""
        return len(self._pending)

    async def start(self) -> None:
        """Start connecting in the background (idempotent); publishing also starts it."""
        self._ensure_started()

    async def publish(self, queue: str, body: bytes, *, priority: int = 0, message_id: str = "") -> None:
        """Publish ``body`` to ``queue`` (default exchange) and return once RabbitMQ confirmed it.

        Bound the wait with the caller's own timeout (``anyio.fail_after``); a cancelled
        publish may still be confirmed later, which is why callers must be idempotent.

        Parameters:
            queue: the routing key: a queue name on the default exchange.
            body: the message body (a Dramatiq message's ``encode()``).
            priority: RabbitMQ message priority (0..``MAX_PRIORITY``).
            message_id: AMQP ``message_id`` property; identifies a returned message.

        Raises:
            BrokerUnavailable: not connected, or the connection was lost before the confirm.
            QueueFull: RabbitMQ refused the message (nack): ``queue`` is at its length limit.
            Unroutable: no queue took the message (it was returned).
        """
        self._ensure_started()
        assert self._slots is not None
        await self._slots.acquire()
        try:
            channel = await self._wait_up()
        except BaseException:
            self._slots.release()
            raise
        tag = self._next_tag
        self._next_tag += 1
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # From here the slot belongs to the pending entry: ``_settle`` gives it back.
        self._pending[tag] = (future, message_id)
        UNCONFIRMED.inc()
        try:
            connection = self._connection
            if not channel.is_open or connection is None or connection.is_closed:
                raise pika.exceptions.ChannelWrongStateError("channel closed")
            # What channel.basic_publish would send, without pika's per-frame objects.
            connection._output_marshaled_frames(
                publish_frames(
                    channel.channel_number, queue, body, priority, message_id, connection._body_max_length
                )
            )
        except pika.exceptions.AMQPError as exc:  # channel or connection closed under us
            self._settle(tag, BrokerUnavailable(f"publish failed: {exc!r}"))
            self._mark_lost()
        await future

    async def send(self, actor: str, payload: Any, *, priority: int = int(Priority.NORMAL)) -> str:
        """Build the Dramatiq message for ``actor`` and publish it (the async ``enqueue.send``).

        Returns:
            The message id.

        Raises:
            BrokerUnavailable: as ``publish``.
            KeyError: ``actor`` is not declared in ``contracts.ACTORS``.
        """
        queue, message_id, body = encode_message(actor, payload, priority=priority)
        await self.publish(queue, body, priority=priority, message_id=message_id)
        return message_id

    async def close(self) -> None:
        """Close the connection; in-flight publishes fail with ``BrokerUnavailable``."""
        if self._changed is not None:
            self._set_state(self._CLOSED)  # wakes publishes waiting for a connection
        self._state = self._CLOSED
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._drop_connection("publisher closed")

    # ------------------------------------------------------------------ connection loop

    def _ensure_started(self) -> None:
        if self._task is not None:
            return
        if self._state == self._CLOSED:
            raise BrokerUnavailable("publisher closed")
        self._slots = asyncio.Semaphore(self.max_unconfirmed)
        self._changed = asyncio.Event()
        self._lost = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="shiftflow-publisher")

    def _set_state(self, state: str, error: str = "") -> None:
        assert self._changed is not None
        self._state, self._last_error = state, error
        # Wake everyone waiting for a change, then arm a fresh event for the next one.
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait_up(self) -> Channel:
        while True:
            if self._state == self._UP and self._channel is not None:
                return self._channel
            if self._state == self._DOWN:
                raise BrokerUnavailable(f"not connected to RabbitMQ: {self._last_error}")
            if self._state == self._CLOSED:
                raise BrokerUnavailable("publisher closed")
            assert self._changed is not None
            await self._changed.wait()

    async def _run(self) -> None:
        delay = self._backoff[0]
        while self._state != self._CLOSED:
            self._set_state(self._CONNECTING)
            try:
                await self._connect_any()
            except (pika.exceptions.AMQPError, OSError, TimeoutError) as exc:
                CONNECTS.labels("failed").inc()
                self._drop_connection(f"connect failed: {exc!r}")
                self._set_state(self._DOWN, f"{exc.__class__.__name__}: {exc}")
                log.warning("RabbitMQ connection failed (%r); retrying in %.1f s", exc, delay)
                # Full jitter keeps many ingress processes from reconnecting in lockstep.
                await asyncio.sleep(delay * (0.5 + random.random() / 2))
                delay = min(delay * 2, self._backoff[1])
                continue
            CONNECTS.labels("ok").inc()
            delay = self._backoff[0]
            self._set_state(self._UP)
            log.info(
                "publisher connected to RabbitMQ (confirm mode, cap %d unconfirmed)", self.max_unconfirmed
            )
            assert self._lost is not None
            await self._lost.wait()
            CONNECTS.labels("lost").inc()
            self._drop_connection("connection lost before the broker confirmed")
            log.warning("RabbitMQ connection lost; reconnecting")

    async def _connect_any(self) -> None:
        """Connect to the first address that answers, in the order given.

        Raises:
            the last address's error when none answered.
        """
        error: BaseException | None = None
        for index, params in enumerate(self._addresses):
            try:
                await asyncio.wait_for(self._connect(params), self._connect_timeout)
                if index:
                    log.warning("publisher connected to broker address %d of %d", index + 1, len(self._addresses))
                return
            except (pika.exceptions.AMQPError, OSError, TimeoutError) as exc:
                self._drop_connection(f"connect failed: {exc!r}")
                error = exc
        assert error is not None
        raise error

    async def _connect(self, params: pika.URLParameters) -> None:
        """Open a connection and a confirm-mode channel, and declare the queues."""
        loop = asyncio.get_running_loop()
        assert self._lost is not None
        self._lost = asyncio.Event()
        opened: asyncio.Future[Any] = loop.create_future()

        def on_open(connection: Any) -> None:
            if not opened.done():
                opened.set_result(connection)

        def on_open_error(connection: Any, error: BaseException) -> None:
            if not opened.done():
                err = (
                    error
                    if isinstance(error, Exception)
                    else pika.exceptions.AMQPConnectionError(repr(error))
                )
                opened.set_exception(err)

        def on_close(connection: Any, error: BaseException) -> None:
            if not opened.done():
                opened.set_exception(pika.exceptions.AMQPConnectionError(repr(error)))
            if connection is self._connection:
                self._mark_lost()

        connection = self._connection = _CoalescingConnection(
            params,
            on_open_callback=on_open,
            on_open_error_callback=on_open_error,
            on_close_callback=on_close,
            custom_ioloop=loop,
        )
        await opened
        channel: Channel = await self._call(lambda cb: connection.channel(on_open_callback=cb))
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_return_callback(self._on_return)
        await self._call(lambda cb: channel.confirm_delivery(self._on_confirm, callback=cb))
        for queue in self._queues:
            for name, arguments in queue_declarations(queue, self._max_lengths.get(queue, 0), self._queue_type):
                await self._call(
                    lambda cb, n=name, a=arguments: channel.queue_declare(
                        n, durable=True, arguments=a, callback=cb
                    )
                )
        self._next_tag = 1  # delivery tags count from 1 on every channel put in confirm mode
        self._channel = channel

    async def _call(self, start: Any) -> Any:
        """Run a pika callback-style operation and await its callback's argument.

        Fails if the connection is lost meanwhile (pika never calls back then).
        """
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Any] = loop.create_future()

        def resolve(value: Any) -> None:
            if not done.done():
                done.set_result(value)

        start(resolve)
        assert self._lost is not None
        lost = loop.create_task(self._lost.wait())
        try:
            await asyncio.wait({done, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
        if not done.done():
            raise pika.exceptions.AMQPConnectionError("connection closed during set-up")
        return done.result()

    def _mark_lost(self) -> None:
        self._channel = None
        if self._state == self._UP:
            self._state = self._CONNECTING  # publishes arriving now wait for the reconnect
        if self._lost is not None:
            self._lost.set()

    def _drop_connection(self, reason: str) -> None:
        """Forget the channel, fail every unconfirmed publish, close the connection."""
        self._channel = None
        self._fail_all(BrokerUnavailable(reason))
        connection, self._connection = self._connection, None
        if connection is not None and not (connection.is_closed or connection.is_closing):
            with contextlib.suppress(pika.exceptions.AMQPError):
                connection.close()

    # ------------------------------------------------------------------ broker callbacks

    def _settle(self, tag: int, error: BaseException | None) -> None:
        entry = self._pending.pop(tag, None)
        if entry is None:
            return
        future = entry[0]
        # A caller that timed out cancelled its future; its slot is only freed now.
        if not future.done():
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)
        UNCONFIRMED.dec()
        assert self._slots is not None
        self._slots.release()

    def _fail_all(self, error: BaseException) -> None:
        for tag in list(self._pending):
            self._settle(tag, error)

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        # A classic queue nacks a persistent message when it is at its ``x-max-length`` with
        # ``x-overflow: reject-publish`` (other nacks are internal errors, equally "not queued").
        error = (
            None
            if isinstance(method, pika.spec.Basic.Ack)
            else QueueFull("RabbitMQ refused the message (nack): the queue is full")
        )
        if method.multiple:
            # Every tag up to and including this one; earlier tags may be settled already.
            while self._pending:
                tag = next(iter(self._pending))
                if tag > method.delivery_tag:
                    break
                self._settle(tag, error)
        else:
            self._settle(method.delivery_tag, error)
        if error is not None and self._queue_type == QUORUM:
            # A channel that published to a quorum queue while its leader was being elected
            # again can go on being nacked after the new leader is up (seen on RabbitMQ
            # 3.10: every publish nacked for minutes). A fresh connection and channel find
            # the new leader; a queue that is really full refuses the next publish again.
            self._mark_lost()

    def _on_return(self, channel: Channel, method: Any, properties: Any, body: bytes) -> None:
        # RabbitMQ sends basic.return before the basic.ack of the same message: fail the
        # caller now; the ack that follows only frees the slot. Returns are rare, so a
        # scan by message id beats keeping a second index for every publish.
        reason = f"{method.reply_code} {method.reply_text} (routing key {method.routing_key!r})"
        log.warning("message returned by RabbitMQ: %s", reason)
        for future, message_id in self._pending.values():
            if message_id and message_id == properties.message_id and not future.done():
                future.set_exception(Unroutable(f"no queue took the message: {reason}"))
                break
        # A deleted queue of ours is declared again (as Dramatiq does after an unroutable
        # publish), so that the sender's retry finds it. Without waiting for the answer: a
        # refused declare closes the channel, and the reconnect loop takes over.
        current = self._channel
        if (
            method.routing_key in self._queues
            and current is not None
            and channel is current
            and current.is_open
        ):
            for name, arguments in queue_declarations(
                method.routing_key, self._max_lengths.get(method.routing_key, 0), self._queue_type
            ):
                current.queue_declare(name, durable=True, arguments=arguments)

    def _on_channel_closed(self, channel: Channel, reason: BaseException) -> None:
        # A channel error (e.g. PRECONDITION_FAILED on declare) leaves the connection
        # open: close it too, so the reconnect loop starts from a clean state.
        if self._state == self._CLOSED:
            return
        if channel is self._channel or self._channel is None:
            text = str(getattr(reason, "reply_text", ""))
            if getattr(reason, "reply_code", 0) == 406 and "inequivalent arg" in text:
                # Every publish fails until an operator acts: say what to do, not only what broke.
                log.error(
                    "RabbitMQ refused to declare a queue: %s. Every process must declare it with the "
                    "same arguments (SHIFTFLOW_TRIGGER_QUEUE_MAX_LENGTH), and a queue keeps the "
                    "arguments it was created with: see 'Bounded trigger queue' in the README",
                    text,
                )
            else:
                log.warning("publisher channel closed: %r", reason)
            self._mark_lost()
