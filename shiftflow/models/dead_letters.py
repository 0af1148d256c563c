"""Dead letters kept in PostgreSQL: RabbitMQ's dead-letter queue forgets after 7 days."""

from __future__ import annotations

from typing import Any

import peewee

from shiftflow.kernel.db import JSONField
from shiftflow.models.base import BaseModel, utcnow


class DeadLetter(BaseModel):
    """A message Dramatiq gave up on (retries exhausted, undecodable, permanent error).

    ``replayed_at`` is set when an operator re-enqueued it (``shiftflow dead-letters replay``).
    """

    message_id = peewee.CharField(max_length=64, unique=True)
    queue = peewee.CharField(max_length=100)
    actor = peewee.CharField(max_length=100)
    payload = JSONField()
    error = peewee.TextField(null=True)
    execution_id = peewee.CharField(max_length=64, null=True, index=True)
    created_at = peewee.DateTimeField(default=utcnow, index=True)
    replayed_at = peewee.DateTimeField(null=True)


def record(message_id: str, queue: str, actor: str, payload: dict[str, Any], error: str | None) -> None:
    """Store a dead letter once per message id (a redelivered nack does not duplicate it)."""
    execution_id = None
    inner = payload.get("kwargs", {}).get("payload", {}) if isinstance(payload, dict) else {}
    if isinstance(inner, dict):
        execution_id = inner.get("execution_id")
    DeadLetter.insert(
        message_id=message_id, queue=queue, actor=actor, payload=payload, error=error,
        execution_id=execution_id, created_at=utcnow(),
    ).on_conflict_ignore().execute()
