"""Dead letters kept in PostgreSQL: RabbitMQ's dead-letter queue forgets after 7 days."""

from __future__ import annotations

import json
from typing import Any

import peewee

from shiftflow.kernel.db import JSONField
from shiftflow.kernel.storable import unstorable
from shiftflow.models.tables.base import BaseModel, utcnow


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


#: Longest message text kept in a stand-in (a webhook body is at most 16 MiB; escapes grow it).
MAX_TEXT_CHARS = 4 * 1024 * 1024
#: Identity fields of a trigger or step payload copied into a stand-in when they are
#: plain text: the workspace-scoped listing finds a letter by its ``workflow_id``.
_IDENTITY_FIELDS = ("workflow_id", "execution_id", "dedup_key", "step_id")


def storable_text(text: str) -> str:
    """``text`` with what a PostgreSQL text column refuses (NUL, lone surrogates) escaped."""
    if text.isascii():
        return text.replace("\x00", "\\x00")
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


def stand_in(payload: Any, problem: str) -> dict[str, Any]:
    """A storable record of a message PostgreSQL cannot store as it is.

    ``text`` is the message as JSON with every non-ASCII character escaped (``\\u0000``,
    ``\\ud800``, ``Infinity`` stay visible as text), ``unstorable`` says why the message
    itself was not stored, and the actor, queue, id and the payload's identity fields are
    copied when they are plain text, so listings and filters still find the letter.
    """
    try:
        text = json.dumps(payload, ensure_ascii=True, allow_nan=True, default=str, separators=(",", ":"))
    except (ValueError, TypeError, RecursionError) as exc:
        text = f"(the message could not be written as JSON either: {type(exc).__name__})"
    out: dict[str, Any] = {"unstorable": problem, "text": storable_text(text[:MAX_TEXT_CHARS])}
    if isinstance(payload, dict):
        for name in ("actor_name", "queue_name", "message_id", "message_timestamp"):
            if unstorable(payload.get(name)) is None and isinstance(payload.get(name), str | int):
                out[name] = payload[name]
        kwargs = payload.get("kwargs")
        inner = kwargs.get("payload") if isinstance(kwargs, dict) else None
        if isinstance(inner, dict):
            fields = {k: inner[k] for k in _IDENTITY_FIELDS if isinstance(inner.get(k), str)}
            out["kwargs"] = {"payload": {k: v for k, v in fields.items() if unstorable(v) is None}}
    return out


def record(message_id: str, queue: str, actor: str, payload: Any, error: str | None) -> None:
    """Store a dead letter once per message id (a redelivered nack does not duplicate it).

    Any payload is recorded: one PostgreSQL cannot store as JSON (a number it has no
    form for, NUL, a lone surrogate, too deep) is kept as a ``stand_in`` with its text,
    and the error text is escaped likewise.
    """
    problem = unstorable(payload)
    if problem is not None:
        payload = stand_in(payload, problem)
    execution_id = None
    inner = payload.get("kwargs", {}).get("payload", {}) if isinstance(payload, dict) else {}
    if isinstance(inner, dict) and isinstance(inner.get("execution_id"), str):
        execution_id = inner["execution_id"][:64]
    DeadLetter.insert(
        message_id=storable_text(str(message_id))[:64], queue=storable_text(str(queue))[:100],
        actor=storable_text(str(actor))[:100], payload=payload,
        error=storable_text(error) if error is not None else None,
        execution_id=execution_id, created_at=utcnow(),
    ).on_conflict_ignore().execute()
