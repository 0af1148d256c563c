"""``kernel.confirm_publisher.publish_frames``: the hand-made AMQP frames are byte-identical to pika's own."""

from __future__ import annotations

import pika
import pika.frame
import pika.spec
import pytest

from shiftflow.kernel.confirm_publisher import publish_frames


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
