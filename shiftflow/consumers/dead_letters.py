"""Dead-letter handling: copy every message Dramatiq nacks into PostgreSQL."""

from __future__ import annotations

import logging
from typing import Any

import dramatiq
import peewee
from dramatiq.middleware import Middleware

from shiftflow.kernel.db import database
from shiftflow.models import dead_letters

log = logging.getLogger(__name__)


class DeadLetters(Middleware):
    """Record nacked messages in Postgres before they reach the 7-day ``.XQ`` queue.

    Runs in ``after_nack``; if Postgres is down the message still reaches ``.XQ`` and
    the failure is logged, so nothing is lost silently.
    """

    def after_nack(self, broker: dramatiq.Broker, message: Any) -> None:
        error = message.options.get("traceback") or message.options.get("error")
        try:
            with database.connection_context():
                dead_letters.record(message.message_id, message.queue_name, message.actor_name,
                                    dict(message.asdict()), str(error)[-4000:] if error else None)
        except peewee.PeeweeException as exc:
            log.error("could not record dead letter %s in PostgreSQL: %s", message.message_id, exc)
