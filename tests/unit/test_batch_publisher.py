"""kernel.batch_publisher: the bodies it publishes are the messages ``send`` would publish."""

from __future__ import annotations

import json

from shiftflow.kernel.batch_publisher import encode_message
from shiftflow.kernel.contracts import TriggerPayload
from shiftflow.kernel.enqueue import Outgoing, build_message


def test_encoded_message_matches_build_message():
    payload = TriggerPayload(
        "wf",
        "schedule:1:2030-01-01T00:00:00Z",
        "schedule",
        data={"nested": {"list": [1, {"a": None}]}, "scheduled_for": "x"},
        received_at=1.5,
        priority="HIGH",
    )
    queue, body = encode_message(Outgoing("triggers.start", payload, priority=6))
    ours = json.loads(body)
    theirs = json.loads(build_message("triggers.start", payload, priority=6).encode())
    for generated in ("message_id", "message_timestamp"):
        assert ours.pop(generated) and theirs.pop(generated)
    assert queue == "triggers"
    assert ours == theirs
