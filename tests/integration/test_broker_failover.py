"""Several broker addresses: every connection tries them in order and keeps the first that opens.

``SHIFTFLOW_AMQP_URL`` lists a cluster's nodes, comma-separated. Here the first address is
dead (a loopback port nothing listens on) and the second is this test's vhost: the
workers' Dramatiq broker, the ingress's confirm publisher, the scheduler's batch publisher
and the readiness check all reach the second. Then a publisher connected to a node of its
own (tests/own_rabbitmq.py) loses that node and carries on on the next address.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import dramatiq
import pika
import pytest

from shiftflow.kernel import readiness
from shiftflow.kernel.batch_publisher import ConfirmedBatchPublisher
from shiftflow.kernel.broker import build_broker
from shiftflow.kernel.confirm_publisher import ConfirmPublisher
from shiftflow.kernel.contracts import TriggerPayload
from shiftflow.kernel.enqueue import Outgoing
from shiftflow.kernel.errors import BrokerUnavailable
from shiftflow.kernel.settings import Settings
from tests.own_rabbitmq import OwnRabbitMQ
from tests.support.ports import free_port

pytestmark = pytest.mark.integration


def _trigger(n: int) -> TriggerPayload:
    return TriggerPayload(workflow_id="00000000-0000-0000-0000-000000000001", dedup_key=f"standard:f{n}",
                          source="webhook", data={"n": n}, received_at=1_700_000_000.0)


def _depth(url: str, queue: str) -> int:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        return int(connection.channel().queue_declare(queue, passive=True).method.message_count)
    finally:
        connection.close()


@pytest.fixture
def dead_first(real_env: dict[str, str]) -> Iterator[dict[str, str]]:
    live = real_env["SHIFTFLOW_AMQP_URL"]
    dead = f"amqp://guest:guest@127.0.0.1:{free_port()}/{live.rsplit('/', 1)[1]}"
    yield {**real_env, "SHIFTFLOW_AMQP_URL": f"{dead},{live}"}


def test_every_connection_skips_a_dead_first_address(dead_first: dict[str, str], real_env: dict[str, str]) -> None:
    live = real_env["SHIFTFLOW_AMQP_URL"]
    settings = Settings.from_env(dead_first)
    assert len(settings.amqp_urls) == 2

    # The workers' broker (Dramatiq's RabbitmqBroker with a list of pika parameters).
    broker = build_broker(settings, worker=False)
    try:
        broker.declare_queue("triggers", ensure=True)
        broker.enqueue(dramatiq.Message(queue_name="triggers", actor_name="triggers.start", args=(),
                                        kwargs={"payload": {"n": 0}}, options={}))
        # The scheduler's pipelined publisher.
        dramatiq.set_broker(broker)
        batch = ConfirmedBatchPublisher(settings.amqp_urls, broker, timeout=10)
        try:
            batch.publish_all([Outgoing("triggers.start", _trigger(n)) for n in range(1, 4)])
        finally:
            batch.close()
    finally:
        broker.close()

    # The ingress's confirm publisher.
    async def publish() -> None:
        publisher = ConfirmPublisher(settings.amqp_urls, max_lengths={"triggers": settings.trigger_queue_max_length})
        try:
            for n in range(4, 6):
                await asyncio.wait_for(publisher.send("triggers.start", _trigger(n)), 30)
        finally:
            await publisher.close()

    asyncio.run(publish())
    assert _depth(live, "triggers") == 6
    assert readiness.broker_problem(settings.amqp_urls) is None
    assert readiness.broker_problem(settings.amqp_urls[:1]) is not None  # the dead one alone


@pytest.mark.timeout(240)
def test_the_publisher_moves_to_the_next_address_when_its_node_dies(real_env: dict[str, str]) -> None:
    live = real_env["SHIFTFLOW_AMQP_URL"]
    node = OwnRabbitMQ()
    try:
        first = node.start()

        async def main() -> tuple[int, int]:
            publisher = ConfirmPublisher([first, live], backoff=(0.1, 0.5), connect_timeout=3)
            try:
                for n in range(3):
                    await asyncio.wait_for(publisher.send("triggers.start", _trigger(n)), 30)
                assert _depth(first, "triggers") == 3  # on the first address while it lives
                node.stop()
                sent, failed = 0, 0
                for n in range(3, 13):
                    # What a webhook sender does with a 503: try the same message again.
                    while True:
                        try:
                            await asyncio.wait_for(publisher.send("triggers.start", _trigger(n)), 10)
                            sent += 1
                            break
                        except (BrokerUnavailable, TimeoutError):
                            failed += 1
                            await asyncio.sleep(0.2)
                return sent, failed
            finally:
                await publisher.close()

        sent, failed = asyncio.run(main())
        print(f"\nafter the first node died: {sent} confirmed on the next address, {failed} attempts refused meanwhile")
        assert sent == 10
        assert _depth(live, "triggers") == 10
    finally:
        node.close()

