"""Priorities (LOW/NORMAL/HIGH/CRITICAL) become RabbitMQ message priorities on real queues."""

from __future__ import annotations

import pika
import pytest

from shiftflow.kernel.broker import build_broker
from shiftflow.kernel.contracts import Priority, StepPayload
from shiftflow.kernel.enqueue import build_message
from shiftflow.kernel.settings import Settings

pytestmark = pytest.mark.integration


def test_waiting_messages_are_delivered_by_priority(real_env, amqp_url):
    broker = build_broker(Settings.from_env(real_env), worker=False)
    try:
        order = [Priority.LOW, Priority.NORMAL, Priority.CRITICAL, Priority.HIGH, Priority.LOW]
        for n, priority in enumerate(order):
            broker.enqueue(build_message("steps.run", StepPayload("e", f"s{n}"), priority=int(priority)))
    finally:
        broker.close()
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        seen = []
        for _ in order:
            method, properties, body = channel.basic_get("steps", auto_ack=True)
            assert method is not None
            seen.append(properties.priority)
    finally:
        connection.close()
    assert seen == sorted((int(p) for p in order), reverse=True)
