"""Dramatiq middleware that only needs the kernel: DB connections, Mongo sink, metrics.

Models-aware middleware (dead-letter recording) lives in ``consumers``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import dramatiq
from dramatiq.middleware import Middleware

from shiftflow.kernel import metrics
from shiftflow.kernel.db import database
from shiftflow.kernel.mongo import MongoSink, configure_sink, get_sink
from shiftflow.kernel.redis_handle import flush_updates
from shiftflow.kernel.settings import Settings

log = logging.getLogger(__name__)


class DbConnections(Middleware):
    """A Peewee connection per worker thread, opened before each message, closed after.

    Closing returns it to the pool; a connection broken by a database restart is never
    reused for the next message.
    """

    def before_process_message(self, broker: dramatiq.Broker, message: Any) -> None:
        database.connect(reuse_if_open=True)

    def after_process_message(self, broker: dramatiq.Broker, message: Any, *,
                              result: Any = None, exception: BaseException | None = None) -> None:
        if not database.is_closed():
            database.close()

    after_skip_message = after_process_message


class MongoLifecycle(Middleware):
    """The MongoDB sink: created in each worker process after boot (pymongo is not fork-safe),
    flushed and closed at shutdown so buffered log documents are not lost on SIGTERM."""

    def __init__(self, url: str, db_name: str, batch_size: int, flush_ms: int) -> None:
        self.url, self.db_name, self.batch_size, self.flush_ms = url, db_name, batch_size, flush_ms

    def after_process_boot(self, broker: dramatiq.Broker) -> None:
        configure_sink(MongoSink(self.url, self.db_name, batch_size=self.batch_size, flush_ms=self.flush_ms))

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        sink = get_sink()
        if sink is not None:
            sink.close(timeout=10)
            configure_sink(None)


class LiveUpdatesLifecycle(Middleware):
    """Send the live updates still queued when a worker process stops.

    The sender thread lets updates gather for ``redis_handle.LINGER_SECONDS`` and is a daemon:
    without this, the last transitions of a stopping process (an execution's final state
    among them) could be lost with it. Runs after the message threads were joined, so
    nothing is queued after it.
    """

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        if not flush_updates(timeout=5):
            log.warning("live updates still queued at shutdown were not all sent")


def pool_exporter() -> None:
    """The pool fork that serves a pool's summed metrics, ``/healthz`` and ``/readyz`` (imported
    by path, so it reads its own settings from the environment the pool was started with).

    The pool is ready when RabbitMQ accepts a connection and the database answers.
    """
    from shiftflow.kernel import readiness
    from shiftflow.kernel.db import make_database

    settings = Settings.from_env()
    database = make_database(settings.database_url)

    def ready() -> tuple[int, dict[str, Any]]:
        return readiness.answer(readiness.run_checks({
            "broker": lambda: readiness.broker_problem(settings.amqp_urls),
            "database": lambda: readiness.database_problem(database),
        }))

    metrics.serve_multiprocess(settings.metrics_dir, settings.metrics_host, settings.metrics_port, ready)


class Metrics(Middleware):
    """Per-message Prometheus metrics with fixed labels (queue, actor, outcome)."""

    def __init__(self, metrics_dir: str = "", port: int = 0) -> None:
        self.metrics_dir, self.port = metrics_dir, port
        self._started: dict[str, float] = {}

    @property
    def forks(self) -> list[Any]:
        """One exposition server per pool, summing every worker process's files."""
        return [pool_exporter] if self.metrics_dir and self.port else []

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        """Create the per-message series of every actor this worker consumes, at zero.

        In a pool a family is only as visible as the files of live processes: a worker
        process replaced after a crash (its live gauges dropped) must not make
        ``shiftflow_messages_in_progress`` vanish until its replacement takes a message,
        and a new pool shows every family before its first message.
        """
        consumed = getattr(worker, "consumer_whitelist", None)
        for name in broker.get_declared_actors():
            queue = broker.get_actor(name).queue_name
            if consumed and queue not in consumed:
                continue
            metrics.IN_PROGRESS.labels(queue, name)
            metrics.MESSAGE_SECONDS.labels(queue, name)
            for outcome in ("ok", "error", "skipped"):
                metrics.MESSAGES.labels(queue, name, outcome)

    def before_process_message(self, broker: dramatiq.Broker, message: Any) -> None:
        self._started[message.message_id] = time.perf_counter()
        metrics.IN_PROGRESS.labels(message.queue_name, message.actor_name).inc()

    def after_process_message(self, broker: dramatiq.Broker, message: Any, *,
                              result: Any = None, exception: BaseException | None = None) -> None:
        started = self._started.pop(message.message_id, None)
        labels = (message.queue_name, message.actor_name)
        if started is not None:
            metrics.MESSAGE_SECONDS.labels(*labels).observe(time.perf_counter() - started)
        metrics.IN_PROGRESS.labels(*labels).dec()
        metrics.MESSAGES.labels(*labels, "ok" if exception is None else "error").inc()

    def after_skip_message(self, broker: dramatiq.Broker, message: Any) -> None:
        self._started.pop(message.message_id, None)
        metrics.IN_PROGRESS.labels(message.queue_name, message.actor_name).dec()
        metrics.MESSAGES.labels(message.queue_name, message.actor_name, "skipped").inc()

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        metrics.mark_process_dead(self.metrics_dir)
