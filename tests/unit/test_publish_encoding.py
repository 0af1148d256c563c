"""The ingress's hand-made encodings are byte-identical to Dramatiq's and pika's own."""

from __future__ import annotations

import uuid

import dramatiq
import pika
import pika.frame
import pika.spec
import pytest

from shiftflow.kernel.confirm_publisher import publish_frames
from shiftflow.kernel.contracts import TriggerPayload
from shiftflow.kernel.enqueue import build_message, encode_message

PAYLOAD = TriggerPayload(
    "wf-1", "standard:d-1", "webhook", {"amount": 125.5, "name": "Zoë", "tags": ["a", None]}, 1.7e9, "NORMAL"
)


def test_encode_message_matches_the_dramatiq_message() -> None:
    queue, message_id, body = encode_message("triggers.start", PAYLOAD, priority=6)
    decoded = dramatiq.Message.decode(body)
    reference = build_message("triggers.start", PAYLOAD, priority=6)
    # Same message apart from the two fields made per message: then the same bytes.
    same = dramatiq.Message(
        **{**reference.asdict(), "message_id": message_id, "message_timestamp": decoded.message_timestamp}
    )
    assert same.encode() == body
    assert queue == "triggers" and decoded.queue_name == "triggers"
    parsed = uuid.UUID(message_id)
    assert str(parsed) == message_id and parsed.version == 4 and parsed.variant == uuid.RFC_4122


def test_encode_message_ids_differ() -> None:
    ids = {encode_message("triggers.start", PAYLOAD)[1] for _ in range(1000)}
    assert len(ids) == 1000


@pytest.mark.parametrize(
    ("body", "message_id", "priority", "body_max"),
    [
        (b"x" * 500, "3f2b-id", 3, 131_064),
        (b"y" * 70_000, "", 9, 30_000),  # split into three body frames; no message id
        (b"", "m", 0, 100),  # an empty body has no body frame
        (b"z" * 200, "\u00e9" * 100, 10, 200),  # a non-ASCII id: its length in bytes
    ],
)
def test_publish_frames_match_pikas_basic_publish(
    body: bytes, message_id: str, priority: int, body_max: int
) -> None:
    properties = pika.BasicProperties(delivery_mode=2, priority=priority, message_id=message_id or None)
    method = pika.spec.Basic.Publish(exchange="", routing_key="triggers", mandatory=True)
    expected = [pika.frame.Method(7, method).marshal(), pika.frame.Header(7, len(body), properties).marshal()]
    expected += [pika.frame.Body(7, body[i : i + body_max]).marshal() for i in range(0, len(body), body_max)]
    assert publish_frames(7, "triggers", body, priority, message_id, body_max) == expected
