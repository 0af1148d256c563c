"""``kernel.enqueue.encode_message``: the ingress's hand-made Dramatiq message is byte-identical to Dramatiq's own."""

from __future__ import annotations

import uuid

import dramatiq

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
