"""Enqueue by actor name: the one way producers and actors send messages.

Producers never import actors (docs/architecture.md#layers); they name them. The queue comes from the
contract table, so a message always lands where its actor listens.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any

import dramatiq
import pika.exceptions
from dramatiq.errors import BrokerConnectionError as DramatiqConnectionError

from shiftflow.kernel import tracing
from shiftflow.kernel.contracts import ACTORS, Priority, encode
from shiftflow.kernel.errors import BrokerUnavailable, QueueFull


@dataclass(frozen=True)
class Outgoing:
    """A message to send once the transaction that decided it has committed."""

    actor: str
    payload: Any
    priority: int = int(Priority.NORMAL)
    delay_ms: int | None = None


def build_message(actor: str, payload: Any, *, priority: int = int(Priority.NORMAL)) -> dramatiq.Message[Any]:
    """Build the Dramatiq message for ``actor`` with ``payload`` as its kwargs.

    Raises:
        KeyError: ``actor`` is not declared in ``contracts.ACTORS``.
    """
    spec = ACTORS[actor]
    return dramatiq.Message(
        queue_name=spec.queue,
        actor_name=spec.name,
        args=(),
        kwargs={"payload": encode(payload)},
        options=tracing.stamp({"broker_priority": priority}, actor, payload),
    )


def encode_message(
    actor: str, payload: Any, *, priority: int = int(Priority.NORMAL)
) -> tuple[str, str, bytes]:
    """``build_message(actor, payload, priority=priority)`` and its ``encode()``, made directly.

    The same bytes as the Dramatiq message would encode to (field order, separators, a
    uuid4 message id, the timestamp in milliseconds), without the ``Message`` dataclass and
    a JSON encoder per call: the ingress does this for every webhook.

    Returns:
        (queue name, message id, encoded message).

    Raises:
        KeyError: ``actor`` is not declared in ``contracts.ACTORS``.
    """
    spec = ACTORS[actor]
    if type(dramatiq.get_encoder()) is not dramatiq.JSONEncoder:
        message = build_message(actor, payload, priority=priority)  # someone chose another encoding
        return message.queue_name, message.message_id, message.encode()
    message_id = _uuid4()
    data = {
        "queue_name": spec.queue,
        "actor_name": spec.name,
        "args": (),
        "kwargs": {"payload": encode(payload)},
        "options": tracing.stamp({"broker_priority": priority}, actor, payload),
        "message_id": message_id,
        "message_timestamp": int(time.time() * 1000),
    }
    return spec.queue, message_id, _encode_json(data).encode("utf-8")


#: Dramatiq's ``JSONEncoder.encode`` makes this encoder on every call (``json.dumps`` with
#: separators); one made once gives the same output.
_encode_json = json.JSONEncoder(separators=(",", ":")).encode


def _uuid4() -> str:
    """``str(uuid.uuid4())``, made faster (docs/benchmarks.md#ingress-cpu): 122 random bits,
    version 4, RFC 4122 variant."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def send(actor: str, payload: Any, *, priority: int = int(Priority.NORMAL), delay_ms: int | None = None) -> str:
    """Publish one message and return its message id.

    With the RabbitMQ broker assembled by ``kernel.broker`` publisher confirms are on,
    so returning means RabbitMQ has the message on disk.

    Raises:
        QueueFull: RabbitMQ refused the message (nack): its queue is at its length limit.
        BrokerUnavailable: the broker could not be reached or did not confirm.
    """
    message = build_message(actor, payload, priority=priority)
    try:
        sent = dramatiq.get_broker().enqueue(message, delay=delay_ms)
    except (DramatiqConnectionError, pika.exceptions.AMQPError) as exc:
        # Dramatiq retries a nacked publish on a new connection a few times, then raises
        # ConnectionClosed carrying the NackError; a bare NackError means the same.
        cause = getattr(exc, "message", exc)
        if isinstance(cause, pika.exceptions.NackError):
            raise QueueFull(f"could not publish {actor}: queue {ACTORS[actor].queue!r} is full") from exc
        raise BrokerUnavailable(f"could not publish {actor}: {exc}") from exc
    return sent.message_id


def send_all(messages: list[Outgoing]) -> None:
    """Send messages in order (after the deciding transaction committed)."""
    for out in messages:
        send(out.actor, out.payload, priority=out.priority, delay_ms=out.delay_ms)
