"""Dead-letter handling: copy every message Dramatiq nacks into PostgreSQL, whatever it holds."""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import dramatiq
import peewee
from dramatiq.middleware import Middleware

from shiftflow.kernel import observe
from shiftflow.kernel.contracts import Queue
from shiftflow.kernel.db import database
from shiftflow.models.tables import dead_letters

log = logging.getLogger(__name__)


class DeadLetters(Middleware):
    """Record nacked messages in Postgres before they reach the 7-day ``.XQ`` queue.

    Runs in ``after_nack``; if Postgres is down the message still reaches ``.XQ`` and
    the failure is logged, so nothing is lost silently. A message PostgreSQL cannot store
    as JSON is recorded as a stand-in with its text (``models.tables.dead_letters.record``), and
    a body that is not a Dramatiq message at all (``after_undecodable_message``, from the
    broker's consumer) with its bytes as text.
    """

    def after_nack(self, broker: dramatiq.Broker, message: Any) -> None:
        error = message.options.get("traceback") or message.options.get("error")
        self._record(message.message_id, message.queue_name, message.actor_name, dict(message.asdict()),
                     str(error)[-4000:] if error else None)

    def after_undecodable_message(self, broker: dramatiq.Broker, queue_name: str, body: bytes,
                                  properties: Any) -> None:
        """Record a body Dramatiq could not decode (nacked already) under its AMQP message id,
        or a digest of its bytes when it has none."""
        message_id = getattr(properties, "message_id", None) or (
            "undecodable-" + hashlib.sha256(body).hexdigest()[:40])
        payload = {
            "unstorable": "not a Dramatiq message (the body is kept as text, undecodable bytes escaped)",
            "text": dead_letters.storable_text(body[: dead_letters.MAX_TEXT_CHARS].decode("utf-8", "backslashreplace")),
            "queue_name": queue_name,
        }
        self._record(str(message_id), queue_name, "(undecodable)", payload, "the body is not a Dramatiq message")

    @staticmethod
    def _record(message_id: str, queue: str, actor: str, payload: dict[str, Any], error: str | None) -> None:
        observe.DEAD_LETTERS.labels(queue if queue in Queue.ALL else observe.OTHER).inc()
        try:
            with database.connection_context():
                dead_letters.record(message_id, queue, actor, payload, error)
        except peewee.PeeweeException as exc:
            log.error("could not record dead letter %s in PostgreSQL: %s", message_id, exc)
