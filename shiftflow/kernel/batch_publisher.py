"""Publish a batch of messages from a synchronous loop; return once RabbitMQ confirmed all.

``kernel.enqueue.send`` waits for each confirm before the next publish, which is slow.
A scheduler firing thousands of schedules in the same second needs the confirms
pipelined: publish the whole batch, then wait once (figures:
docs/benchmarks.md#publishing-with-confirms).

``ConfirmedBatchPublisher`` keeps its own AMQP connection (one per scheduler loop) and
builds the same Dramatiq messages as ``send`` does (``kernel.enqueue.build_message``; a
unit test compares the bytes),
so workers cannot tell the difference. Middleware enqueue hooks do not run for these
messages; nothing in ShiftFlow's producer middleware needs them. (The ingress has its own
asyncio publisher, ``kernel.confirm_publisher``, for one awaited confirm per request; the
scheduler is a plain thread that publishes a whole tick at once, so it waits once per batch.)

pika's ``BlockingChannel`` can only wait for confirms one by one, so this module drives
the channel's underlying asynchronous implementation (``channel._impl``, stable across
pika 1.x) and pumps the connection until every delivery tag is acknowledged.
``SendPublisher`` is the one-by-one fallback for the in-process broker (dev mode, tests).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import dramatiq
import pika
import pika.exceptions
import pika.spec
from dramatiq.errors import BrokerConnectionError

from shiftflow.kernel import tracing
from shiftflow.kernel.broker import amqp_url_with_defaults
from shiftflow.kernel.contracts import ACTORS
from shiftflow.kernel.enqueue import Outgoing, send
from shiftflow.kernel.errors import BrokerUnavailable, QueueFull

log = logging.getLogger(__name__)


def encode_message(out: Outgoing) -> tuple[str, bytes]:
    """(queue, body) of the Dramatiq message ``kernel.enqueue.build_message`` would build.

    The payload is turned into a dict field by field rather than with
    ``dataclasses.asdict``, whose deep copy of ``data`` was the largest cost of a
    10,000-fire tick; the JSON is the same.
    """
    spec = ACTORS[out.actor]
    payload = {f.name: getattr(out.payload, f.name) for f in dataclasses.fields(out.payload)}
    message: dramatiq.Message[Any] = dramatiq.Message(
        queue_name=spec.queue,
        actor_name=spec.name,
        args=(),
        kwargs={"payload": payload},
        options=tracing.stamp({"broker_priority": out.priority}, out.actor, out.payload),
    )
    return spec.queue, message.encode()


class Publisher(Protocol):
    """Publishes messages durably: ``publish_all`` returns only once all are confirmed."""

    def publish_all(
        self, messages: Sequence[Outgoing], while_waiting: Callable[[], None] | None = None
    ) -> None:
        """Publish ``messages`` in order; raise ``BrokerUnavailable`` unless all were confirmed.

        ``while_waiting`` runs once the messages are sent, before the confirms are awaited
        (the caller's own round trip overlaps the broker's fsync); if it raises, so does this.
        """

    def keepalive(self) -> None:
        """Let the connection answer heartbeats while the caller is idle."""

    def close(self) -> None:
        """Release the connection."""


class SendPublisher:
    """One ``kernel.enqueue.send`` per message, on the installed broker (dev mode, stub tests)."""

    def publish_all(
        self, messages: Sequence[Outgoing], while_waiting: Callable[[], None] | None = None
    ) -> None:
        """Publish one by one, then run ``while_waiting``.

        Raises:
            BrokerUnavailable: a publish was not confirmed.
        """
        for out in messages:
            send(out.actor, out.payload, priority=out.priority)
        if while_waiting is not None:
            while_waiting()

    def keepalive(self) -> None:
        """Nothing to keep alive."""

    def close(self) -> None:
        """Nothing to release."""


class ConfirmedBatchPublisher:
    """Pipelined publisher confirms on one AMQP channel.

    Parameters:
        amqp_url: the RabbitMQ URL, or several tried in order (heartbeat and timeouts added
            as for the broker).
        broker: the installed Dramatiq broker, used once per queue to declare it with
            the arguments Dramatiq consumers expect (priority, dead-letter queue).
        timeout: seconds to wait for the confirms of one batch.
    """

    def __init__(self, amqp_url: str | Sequence[str], broker: dramatiq.Broker, *, timeout: float = 10.0) -> None:
        urls = [amqp_url] if isinstance(amqp_url, str) else list(amqp_url)
        self._urls = [amqp_url_with_defaults(url) for url in urls]
        self._broker = broker
        self._timeout = timeout
        self._connection: pika.BlockingConnection | None = None
        self._channel: Any = None
        self._declared: set[str] = set()
        self._first_tag = 1
        self._next_tag = 1
        self._done: bytearray = bytearray()
        self._low = 1
        self._confirmed = 0
        self._failed = ""
        self._nacked = False

    # ------------------------------------------------------------------ connection

    def _connect(self) -> None:
        # pika tries the addresses in order (a cluster's nodes) and keeps the first that opens.
        connection = pika.BlockingConnection([pika.URLParameters(url) for url in self._urls])
        channel = connection.channel()
        impl = channel._impl
        ready: list[bool] = []
        impl.confirm_delivery(ack_nack_callback=self._on_confirm, callback=lambda _frame: ready.append(True))
        impl.add_on_return_callback(self._on_return)
        deadline = time.monotonic() + self._timeout
        while not ready:
            if time.monotonic() > deadline:
                connection.close()
                raise BrokerUnavailable("RabbitMQ did not enable publisher confirms in time")
            connection.process_data_events(time_limit=0.05)
        self._connection, self._channel = connection, impl
        self._next_tag = self._low = 1

    def _reset(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and connection.is_open:
            try:
                connection.close()
            except (pika.exceptions.AMQPError, OSError):
                log.debug("closing a broken AMQP connection failed", exc_info=True)

    def _ensure(self, queue: str) -> None:
        if queue not in self._declared:
            # Declared through Dramatiq so the arguments match what its consumers declare.
            try:
                self._broker.declare_queue(queue, ensure=True)  # type: ignore[call-arg]
            except (pika.exceptions.AMQPError, BrokerConnectionError) as exc:
                raise BrokerUnavailable(f"could not declare queue {queue}: {exc}") from exc
            self._declared.add(queue)
        if (
            self._connection is None
            or not self._connection.is_open
            or self._channel is None
            or not self._channel.is_open
        ):
            self._reset()
            self._connect()

    # ------------------------------------------------------------------ confirms

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        tag = int(method.delivery_tag)
        if isinstance(method, pika.spec.Basic.Nack):
            # The queue is at its x-max-length (reject-publish): nothing of it was queued.
            self._failed = self._failed or f"RabbitMQ refused message {tag} (nack): the queue is full"
            self._nacked = True
        if method.multiple:
            for t in range(max(self._low, self._first_tag), tag + 1):
                self._mark(t)
            self._low = max(self._low, tag + 1)
        else:
            self._mark(tag)

    def _mark(self, tag: int) -> None:
        index = tag - self._first_tag
        if 0 <= index < len(self._done) and not self._done[index]:
            self._done[index] = 1
            self._confirmed += 1

    def _on_return(self, _channel: Any, method: Any, _properties: Any, _body: bytes) -> None:
        self._failed = self._failed or f"RabbitMQ could not route a message to {method.routing_key!r}"

    # ------------------------------------------------------------------ API

    def publish_all(
        self, messages: Sequence[Outgoing], while_waiting: Callable[[], None] | None = None
    ) -> None:
        """Publish ``messages`` in order and wait until RabbitMQ confirmed every one.

        ``while_waiting`` runs after the messages went out and before the confirms are
        awaited: the scheduler writes its rows then, so PostgreSQL's round trip overlaps
        RabbitMQ's fsync. (Its transaction still commits only after this returns.)

        Raises:
            BrokerUnavailable: connection lost, an unroutable message, or no confirm
                within the timeout (``QueueFull`` for a nack: a queue at its length limit). Some messages may have been delivered: the
                caller must be able to publish the batch again (dedup keys).
        """
        if not messages:
            if while_waiting is not None:
                while_waiting()
            return
        try:
            for queue in {ACTORS[m.actor].queue for m in messages}:
                self._ensure(queue)
            assert self._connection is not None
            self._first_tag, self._done, self._confirmed, self._failed = (
                self._next_tag,
                bytearray(len(messages)),
                0,
                "",
            )
            self._nacked = False
            self._low = self._first_tag
            for out in messages:
                queue, body = encode_message(out)
                self._channel.basic_publish(
                    exchange="",
                    routing_key=queue,
                    body=body,
                    properties=pika.BasicProperties(delivery_mode=2, priority=out.priority),
                    mandatory=True,
                )
                self._next_tag += 1
            self._connection.process_data_events(time_limit=0)  # put the frames on the wire
            if while_waiting is not None:
                while_waiting()
            deadline = time.monotonic() + self._timeout
            while self._confirmed < len(messages) and not self._failed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise BrokerUnavailable(
                        f"RabbitMQ confirmed {self._confirmed} of {len(messages)} "
                        f"messages within {self._timeout:g} s"
                    )
                self._connection.process_data_events(time_limit=min(remaining, 0.05))
        except (pika.exceptions.AMQPError, OSError) as exc:
            self._reset()
            raise BrokerUnavailable(f"publishing {len(messages)} messages failed: {exc}") from exc
        except BaseException:
            self._reset()  # unknown state (also when while_waiting failed): start afresh
            raise
        if self._failed:
            self._reset()
            raise (QueueFull if self._nacked else BrokerUnavailable)(self._failed)

    def keepalive(self) -> None:
        """Service heartbeats; a broken connection is dropped and reopened on the next publish."""
        if self._connection is not None and self._connection.is_open:
            try:
                self._connection.process_data_events(time_limit=0)
            except (pika.exceptions.AMQPError, OSError):
                self._reset()

    def close(self) -> None:
        """Close the connection."""
        self._reset()


def publisher_for(dev: bool, amqp_url: str | Sequence[str], *, timeout: float = 10.0) -> Publisher:
    """The publisher for this process: pipelined confirms on RabbitMQ, ``send`` in dev mode.

    Call after ``kernel.broker.install``.
    """
    if dev:
        return SendPublisher()
    return ConfirmedBatchPublisher(amqp_url, dramatiq.get_broker(), timeout=timeout)
