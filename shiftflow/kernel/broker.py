"""The one place the Dramatiq broker is assembled, with an explicit middleware list.

Real mode: RabbitMQ with publisher confirms (a "sent" message is on disk or the send
raised), message priorities, and retries only for transient errors. Dev mode: Dramatiq's
in-process broker, so ``make run`` needs no server.

Import this (and call ``install``) before any actor is declared.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import dramatiq
import peewee
from dramatiq.brokers.rabbitmq import (
    DEAD_MESSAGE_TTL,
    RabbitmqBroker,
    _RabbitmqConsumer,  # subclassed: see _Consumer
)
from dramatiq.brokers.stub import StubBroker
from dramatiq.common import xq_name
from dramatiq.middleware import (
    AgeLimit,
    CurrentMessage,
    Middleware,
    Retries,
    ShutdownNotifications,
    TimeLimit,
)

from shiftflow.kernel import tracing
from shiftflow.kernel.contracts import MAX_PRIORITY, Queue
from shiftflow.kernel.errors import TransientError
from shiftflow.kernel.middleware import DbConnections, LiveUpdatesLifecycle, Metrics, MongoLifecycle
from shiftflow.kernel.settings import Settings

log = logging.getLogger(__name__)

#: Dramatiq-level redeliveries of a message that raised a transient error.
MAX_RETRIES = 8
MIN_BACKOFF_MS = 500
MAX_BACKOFF_MS = 60_000


#: Errors that may pass: our transient branch, and the database being unreachable for a
#: moment (a restart, a failover). Anything else is a bug or bad input: no retry.
RETRYABLE: tuple[type[BaseException], ...] = (TransientError, peewee.OperationalError, peewee.InterfaceError)


def retry_transient(retries: int, exception: BaseException) -> bool:
    """Retry only errors that may pass; a permanent error fails (and is dead-lettered) at once.

    A database error mid-step leaves the step RUNNING under this message id; the retry
    (a copy with the same id) takes it over.
    """
    return isinstance(exception, RETRYABLE) and retries < MAX_RETRIES


def middleware_for(settings: Settings, *, extra: Sequence[Middleware] = (), worker: bool = True) -> list[Middleware]:
    """The middleware list, in order. ``extra`` (models-aware, from ``consumers``) sits after
    resource lifecycle and before flow control, so it sees connections already open.
    """
    stack: list[Middleware] = []
    # 1. Infrastructure: lets actors read the message they run (redelivery flag, id).
    stack.append(CurrentMessage())
    # A span per message, continuing the trace of its traceparent: only while tracing is on.
    if tracing.enabled():
        stack.append(tracing.TracingMiddleware())
    # 2. Resource lifecycle: Peewee connection per worker thread around each message;
    #    the pymongo client per process after boot (pymongo is not fork-safe).
    if worker:
        stack.append(DbConnections())
        if settings.mongo_url:
            stack.append(MongoLifecycle(settings.mongo_url, settings.mongo_db, settings.log_batch_size,
                                        settings.log_flush_ms))
        if settings.redis_url:
            stack.append(LiveUpdatesLifecycle())
    # 3. Observability: per-message metrics; one exporter per pool (a fork) when a port is set.
    stack.append(Metrics(settings.metrics_dir, settings.metrics_port if worker else 0))
    # 4. Models-aware middleware from consumers (dead letters into Postgres).
    stack.extend(extra)
    # 5. Flow control: notify actors of shutdown; cap a message's age and run time. The time
    #    limit cannot interrupt a blocking socket read, so every outside call has its own timeout.
    stack.append(ShutdownNotifications())
    stack.append(AgeLimit())
    stack.append(TimeLimit(time_limit=15 * 60 * 1000))
    # 6. Retries last: transient errors only, exponential backoff with jitter.
    stack.append(Retries(max_retries=MAX_RETRIES, min_backoff=MIN_BACKOFF_MS, max_backoff=MAX_BACKOFF_MS,
                         retry_when=retry_transient))
    return stack


#: Queue types ``SHIFTFLOW_QUEUE_TYPE`` accepts.
CLASSIC, QUORUM = "classic", "quorum"

#: ``x-delivery-limit`` of quorum queues: above the highest ``SHIFTFLOW_DELIVERY_LIMIT``
#: (1,000) plus the delivery that quarantines, so a message that kills its worker is always
#: quarantined by ShiftFlow (a FAILED step with its reason in PostgreSQL) and never
#: dead-lettered by RabbitMQ first (RabbitMQ 4 would otherwise stop at 20 by default).
#: A constant, not derived from the setting: every process must declare identical arguments.
QUORUM_DELIVERY_LIMIT = 1_100


def queue_arguments(queue: str, max_length: int = 0, queue_type: str = CLASSIC) -> dict[str, Any]:
    """The arguments of ``queue`` (and of its ``.DQ``): Dramatiq's, plus a length limit with
    reject-publish when ``max_length`` > 0.

    ``classic``: ``x-max-priority`` (``RabbitmqBroker(max_priority=MAX_PRIORITY)``).
    ``quorum``: ``x-queue-type: quorum`` and ``x-delivery-limit``, without
    ``x-max-priority``: RabbitMQ before 4.0 refuses it on a quorum queue (its quorum queues
    are FIFO), and from 4.0 every quorum queue has two priority levels without an argument
    (a message of priority above 4, ShiftFlow's HIGH and CRITICAL, goes first).

    Every process that declares a queue must use the same arguments: RabbitMQ refuses
    (PRECONDITION_FAILED) a second declare with different ones.
    """
    arguments: dict[str, Any] = {
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": xq_name(queue),
    }
    if queue_type == QUORUM:
        arguments["x-queue-type"] = QUORUM
        arguments["x-delivery-limit"] = QUORUM_DELIVERY_LIMIT
    else:
        arguments["x-max-priority"] = MAX_PRIORITY
    if max_length > 0:
        # reject-publish: a full queue nacks the publish (the producer answers 503 and the
        # sender retries) instead of dropping its oldest message, which was accepted.
        arguments["x-max-length"] = max_length
        arguments["x-overflow"] = "reject-publish"
    return arguments


def dead_letter_arguments(queue_type: str = CLASSIC) -> dict[str, Any]:
    """The arguments of a ``.XQ`` queue: Dramatiq's fixed message TTL (a week), and the type."""
    arguments: dict[str, Any] = {"x-message-ttl": DEAD_MESSAGE_TTL}
    if queue_type == QUORUM:
        arguments["x-queue-type"] = QUORUM
    return arguments


def max_lengths(settings: Settings) -> dict[str, int]:
    """Queue -> length limit for the queues that have one (only ``triggers``: see the README).

    Only the entry queue is bounded: its producers (ingress, API, scheduler) can answer
    "retry later". Step and tool queues are fed by workers after a commit, and their
    length follows from the executions admitted; delay (``.DQ``) and dead-letter (``.XQ``)
    queues keep Dramatiq's arguments, so a retry or a dead letter is never refused.
    """
    return {Queue.TRIGGERS: settings.trigger_queue_max_length} if settings.trigger_queue_max_length else {}


def build_broker(settings: Settings, *, extra: Sequence[Middleware] = (), worker: bool = True) -> dramatiq.Broker:
    """Build (not install) the broker for ``settings``.

    Parameters:
        settings: the process settings; ``settings.dev`` selects the in-process broker.
        extra: models-aware middleware supplied by ``consumers``.
        worker: False for producers, which only publish (no DB/Mongo lifecycle).
    """
    tracing.configure(settings)
    middleware = middleware_for(settings, extra=extra, worker=worker)
    broker: dramatiq.Broker
    if settings.dev:
        broker = StubBroker(middleware=middleware)
        broker.emit_after("process_boot")
    else:
        broker = ShiftflowRabbitmqBroker(
            url=[amqp_url_with_defaults(url) for url in settings.amqp_urls],
            confirm_delivery=True,
            max_priority=MAX_PRIORITY,
            middleware=middleware,
            max_lengths=max_lengths(settings),
            queue_type=settings.queue_type,
        )
    return broker


class _Consumer(_RabbitmqConsumer):
    """Dramatiq's RabbitMQ consumer, telling middleware about bodies it cannot decode.

    Dramatiq nacks a body that is not a Dramatiq message without any middleware seeing
    it, so it would reach ``<queue>.XQ`` (forgotten after 7 days) and never PostgreSQL's
    dead letters. Each middleware with ``after_undecodable_message(broker, queue_name,
    body, properties)`` is told after the nack.
    """

    def __init__(self, broker: Any, queue_name: str, prefetch: int, timeout: int) -> None:
        super().__init__(broker, queue_name, prefetch, timeout)
        self._last: tuple[Any, Any, Any] = (None, None, None)
        deliveries = self.iterator

        def remembered() -> Iterator[tuple[Any, Any, Any]]:
            for delivery in deliveries:
                self._last = delivery
                yield delivery

        self.iterator = remembered()

    def __next__(self) -> Any:
        self._last = (None, None, None)
        message = super().__next__()
        method, properties, body = self._last
        if message is None and method is not None:  # a delivery Dramatiq could not decode
            for middleware in self.broker.middleware:
                hook = getattr(middleware, "after_undecodable_message", None)
                if hook is not None:
                    try:
                        hook(self.broker, self.queue_name, body, properties)
                    except Exception:  # as Dramatiq's own signals: one middleware cannot stop consuming
                        log.critical("after_undecodable_message of %r failed", middleware, exc_info=True)
        return message


class ShiftflowRabbitmqBroker(RabbitmqBroker):
    """Dramatiq's RabbitMQ broker, with three changes.

    * Every queue, with its ``.DQ`` and ``.XQ``, is of ``queue_type`` (``queue_arguments``,
      ``dead_letter_arguments``): classic with priorities, or quorum.

    * Some canonical queues are declared with a length limit. Dramatiq builds the same
      arguments for a queue and its delay queue; only the canonical queue
      (``_declare_queue``) gets the limit here, which is what
      ``kernel.confirm_publisher.queue_declarations`` declares too (a test compares both with
      what RabbitMQ holds).
    * Its consumers report undecodable bodies (``_Consumer``).

    Parameters:
        max_lengths: queue -> ``x-max-length`` (``max_lengths(settings)``).
        queue_type: ``classic`` or ``quorum`` (``SHIFTFLOW_QUEUE_TYPE``).
        **kwargs: as ``RabbitmqBroker``; ``url`` may be a list, tried in order.
    """

    def __init__(
        self, *, max_lengths: Mapping[str, int] | None = None, queue_type: str = CLASSIC, **kwargs: Any
    ) -> None:
        if queue_type not in (CLASSIC, QUORUM):
            raise ValueError(f"queue_type must be {CLASSIC!r} or {QUORUM!r}, not {queue_type!r}")
        super().__init__(**kwargs)
        self.max_lengths = dict(max_lengths or {})
        self.queue_type = queue_type

    def _build_queue_arguments(self, queue_name: str) -> dict[str, Any]:
        # Dramatiq's own builder also serves the delay queue (``_declare_dq_queue``).
        return queue_arguments(queue_name, 0, self.queue_type)

    def _declare_queue(self, queue_name: str) -> Any:
        arguments = queue_arguments(queue_name, self.max_lengths.get(queue_name, 0), self.queue_type)
        return self.channel.queue_declare(queue=queue_name, durable=True, arguments=arguments)

    def _declare_xq_queue(self, queue_name: str) -> Any:
        return self.channel.queue_declare(
            queue=xq_name(queue_name), durable=True, arguments=dead_letter_arguments(self.queue_type)
        )

    @property
    def consumer_class(self) -> type[_RabbitmqConsumer]:
        """The consumer of every queue."""
        return _Consumer


def amqp_url_with_defaults(url: str) -> str:
    """Add heartbeat and blocked-connection timeouts unless the URL sets them.

    Heartbeats detect a dead peer without a TCP close; the blocked timeout stops a
    publisher from hanging forever while RabbitMQ has a memory or disk alarm.
    """
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.setdefault("heartbeat", "30")
    query.setdefault("blocked_connection_timeout", "30")
    query.setdefault("connection_attempts", "3")
    query.setdefault("retry_delay", "1")
    return urlunsplit(parts._replace(query=urlencode(query)))


def install(broker: dramatiq.Broker) -> dramatiq.Broker:
    """Make ``broker`` the process-wide broker that ``kernel.enqueue.send`` publishes to."""
    dramatiq.set_broker(broker)
    return broker



def describe(broker: dramatiq.Broker) -> dict[str, Any]:
    """A short description of the broker for start-up logs."""
    return {"type": type(broker).__name__, "middleware": [type(m).__name__ for m in broker.middleware]}
