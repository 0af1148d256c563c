"""``shiftflow queues migrate``: classic queues with messages become quorum queues, none lost.

On this test's own vhost of the machine's RabbitMQ (quorum queues work on one node). The
classic queues are declared as a classic deployment's workers declare them and filled. With a
producer still publishing, the migration refuses and changes nothing; with the producers
stopped, every queue becomes a quorum queue with the quorum arguments and holds every
confirmed message exactly once.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import pika
import pika.exceptions
import pytest

from shiftflow.kernel.broker import build_broker, max_lengths
from shiftflow.kernel.confirm_publisher import queue_declarations
from shiftflow.kernel.queue_migration import MigrationError, migrate
from shiftflow.kernel.settings import Settings
from tests.support.rabbitmq import queue_info, queue_names

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-c", "import sys; from shiftflow.cli import main; sys.exit(main())"]
PRELOADED = {"triggers": 400, "steps": 300, "steps.DQ": 20, "steps.XQ": 10}


def _queue(amqp_url: str, name: str) -> dict[str, Any]:
    return queue_info(amqp_url, name)


def _publish(channel: object, queue: str, message_id: str, priority: int = 0) -> None:
    channel.basic_publish(  # type: ignore[attr-defined]
        "", queue, message_id.encode(),
        pika.BasicProperties(delivery_mode=2, priority=priority, message_id=message_id), mandatory=True,
    )


def _drain(amqp_url: str, queue: str) -> list[str]:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        ids = []
        while True:
            method, properties, _ = channel.basic_get(queue, auto_ack=True)
            if method is None:
                return ids
            ids.append(properties.message_id)
    finally:
        connection.close()


def _classic_deployment(real_env: dict[str, str]) -> None:
    settings = Settings.from_env({**real_env, "SHIFTFLOW_QUEUE_TYPE": "classic"})
    broker = build_broker(settings)
    try:
        broker.declare_queue("triggers", ensure=True)
        broker.declare_queue("steps", ensure=True)
    finally:
        broker.close()


def _preload(amqp_url: str) -> dict[str, set[str]]:
    expected: dict[str, set[str]] = {name: set() for name in PRELOADED}
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    channel.confirm_delivery()
    for name, count in PRELOADED.items():
        for i in range(count):
            message_id = f"{name}-{i}"
            _publish(channel, name, message_id, priority=i % 10)
            expected[name].add(message_id)
    connection.close()
    return expected


class _Producer(threading.Thread):
    """Publishes to ``triggers`` until stopped, confirmed and mandatory, retrying what was
    returned or refused, the way senders retry an ingress 503: what it counts as sent was
    confirmed exactly once."""

    def __init__(self, amqp_url: str) -> None:
        super().__init__(daemon=True)
        self.amqp_url = amqp_url
        self.stop = threading.Event()
        self.sent: list[str] = []
        self.retries = 0

    def run(self) -> None:
        conn = pika.BlockingConnection(pika.URLParameters(self.amqp_url))
        ch = conn.channel()
        ch.confirm_delivery()
        i = 0
        while not self.stop.is_set():
            message_id = f"during-{i}-{uuid.uuid4().hex[:6]}"
            while True:
                try:
                    _publish(ch, "triggers", message_id)
                    self.sent.append(message_id)
                    break
                except (pika.exceptions.UnroutableError, pika.exceptions.NackError):
                    self.retries += 1
                    time.sleep(0.005)
                except pika.exceptions.ChannelClosedByBroker:
                    self.retries += 1
                    ch = conn.channel()
                    ch.confirm_delivery()
            i += 1
            time.sleep(0.002)
        conn.close()


def _declarations(real_env: dict[str, str]) -> list[tuple[str, dict[str, Any]]]:
    limits = max_lengths(Settings.from_env(real_env))  # triggers is bounded (100,000 by default)
    return [d for q in ("triggers", "steps") for d in queue_declarations(q, limits.get(q, 0), "quorum")]


def _assert_holds_exactly(amqp_url: str, expected: dict[str, set[str]]) -> None:
    for name, ids in expected.items():
        got = _drain(amqp_url, name)
        assert len(got) == len(set(got)), f"{name}: duplicates"
        assert set(got) == ids, f"{name}: lost {len(ids - set(got))}, unexpected {len(set(got) - ids)}"


def test_a_migration_with_a_producer_still_publishing_is_refused_and_loses_nothing(
    real_env: dict[str, str],
) -> None:
    """Deleting a queue that a producer publishes to can lose a message the broker has
    already confirmed (a publish routed to the queue while it is being deleted is confirmed
    when the queue goes away). So a producer still publishing makes the migration refuse,
    with every queue as it was and every message in it."""
    amqp_url = real_env["SHIFTFLOW_AMQP_URL"]
    _classic_deployment(real_env)
    expected = _preload(amqp_url)
    producer = _Producer(amqp_url)
    producer.start()
    time.sleep(0.1)
    declarations = _declarations(real_env)
    try:
        with pytest.raises(MigrationError, match="still publishing to triggers"):
            migrate([amqp_url], declarations, quiet_seconds=0.5)
    finally:
        producer.stop.set()
        producer.join(30)
    assert producer.sent, "the producer published nothing: the test proves nothing"
    for name in PRELOADED:
        assert _queue(amqp_url, name)["type"] == "classic", name
    assert not [n for n in queue_names(amqp_url) if n.endswith(".migrating")]
    expected["triggers"] |= set(producer.sent)
    _assert_holds_exactly(amqp_url, expected)


def test_migrating_classic_queues_to_quorum_loses_no_message(real_env: dict[str, str]) -> None:
    amqp_url = real_env["SHIFTFLOW_AMQP_URL"]
    _classic_deployment(real_env)
    expected = _preload(amqp_url)
    declarations = _declarations(real_env)
    started = time.monotonic()
    results = migrate([amqp_url], declarations, quiet_seconds=0.3)
    took = time.monotonic() - started
    print(f"\nmigrated in {took:.2f}s; "
          + ", ".join(f"{r.name}: out {r.moved_out} back {r.moved_back}" for r in results))

    assert all(r.changed for r in results)
    for name, arguments in declarations:
        queue = _queue(amqp_url, name)
        assert queue["type"] == "quorum", name
        assert queue["arguments"] == arguments, name
        assert "x-max-priority" not in arguments
    # The quorum workers' broker declares them without PRECONDITION_FAILED.
    quorum = build_broker(Settings.from_env({**real_env, "SHIFTFLOW_QUEUE_TYPE": "quorum"}))
    try:
        quorum.declare_queue("triggers", ensure=True)
        quorum.declare_queue("steps", ensure=True)
    finally:
        quorum.close()
    _assert_holds_exactly(amqp_url, expected)
    # Nothing left behind in the temporary queues (deleted).
    assert not [n for n in queue_names(amqp_url) if n.endswith(".migrating")]

    # Running it again changes nothing.
    again = migrate([amqp_url], declarations, quiet_seconds=0.3)
    assert not any(r.changed or r.moved_out or r.moved_back for r in again)


def test_a_queue_with_consumers_is_refused_and_keeps_its_messages(real_env: dict[str, str]) -> None:
    amqp_url = real_env["SHIFTFLOW_AMQP_URL"]
    _classic_deployment(real_env)
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    channel.confirm_delivery()
    for i in range(5):
        _publish(channel, "steps", f"m{i}")
    channel.basic_qos(prefetch_count=0)
    channel.basic_consume("steps", lambda *a: None)  # a worker still running
    channel.connection.process_data_events(time_limit=0.2)
    with pytest.raises(MigrationError, match="consumers"):
        migrate([amqp_url], queue_declarations("steps", 0, "quorum"), quiet_seconds=0.3)
    connection.close()
    assert _queue(amqp_url, "steps")["type"] == "classic"
    assert sorted(_drain(amqp_url, "steps")) == [f"m{i}" for i in range(5)]


def test_the_cli_migrates_every_queue(real_env: dict[str, str]) -> None:
    amqp_url = real_env["SHIFTFLOW_AMQP_URL"]
    _classic_deployment(real_env)
    env = {**real_env, "PATH": "/usr/bin:/bin"}
    done = subprocess.run([*CLI, "queues", "migrate", "--to", "quorum"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "triggers: re-declared as quorum" in done.stdout
    assert "sideshift.XQ: " in done.stdout
    assert _queue(amqp_url, "triggers.XQ")["type"] == "quorum"
    bad = subprocess.run([*CLI, "queues", "migrate", "--to", "quorum", "--queue", "nope"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown queue nope" in bad.stdout
