"""Boot a worker process: settings, broker with consumer middleware, actors, database."""

from __future__ import annotations

import dramatiq
import dramatiq.worker
from dramatiq.middleware import Middleware

from shiftflow import actors
from shiftflow.consumers import metric_labels
from shiftflow.consumers.dead_letters import DeadLetters
from shiftflow.consumers.timers import Timers
from shiftflow.kernel.broker import build_broker, install
from shiftflow.kernel.db import bind_database
from shiftflow.kernel.redis_handle import configure_redis
from shiftflow.kernel.settings import Settings


def consumer_middleware(settings: Settings) -> list[Middleware]:
    """The models-aware middleware of a worker pool: dead letters, and the timer loop's fork."""
    return [DeadLetters(), Timers(settings.timers)]


def boot(settings: Settings) -> dramatiq.Broker:
    """Build and install the worker broker, declare every actor, bind the database.

    Returns:
        The installed broker.
    """
    # Prefetch is read when the Worker is built, from this module global. Why above
    # Dramatiq's default: docs/architecture.md#messages-queues-and-pools.
    dramatiq.worker.QUEUE_PREFETCH = settings.prefetch
    broker = install(build_broker(settings, extra=consumer_middleware(settings)))
    actors.declare(broker)
    bind_database(settings.database_url)
    configure_redis(settings.redis_url)
    metric_labels.install()
    return broker
