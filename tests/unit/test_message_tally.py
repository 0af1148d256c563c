"""The barrier of the tests that show something did not happen (``tests/support/message_tally.py``).

On Dramatiq's stub broker with a real worker: ``settled`` must stay false while a message
waits on a delay queue or for its retry, so a test cannot look before the suspect ran.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker

from tests.support.message_tally import MessageTally
from tests.support.waiting import wait_until


@pytest.fixture
def stub() -> Iterator[tuple[StubBroker, MessageTally]]:
    broker = StubBroker()
    tally = MessageTally()
    broker.add_middleware(tally)
    previous = dramatiq.get_broker()
    dramatiq.set_broker(broker)
    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=50)
    worker.start()
    try:
        yield broker, tally
    finally:
        worker.stop()
        broker.close()
        dramatiq.set_broker(previous)


def test_a_delayed_message_keeps_the_tally_unsettled_until_it_ran(stub: tuple[StubBroker, MessageTally]) -> None:
    broker, tally = stub
    ran = threading.Event()

    @dramatiq.actor(broker=broker)
    def later() -> None:
        ran.set()

    message = later.send_with_options(delay=400)
    assert not tally.settled() and not tally.handled(message.message_id)
    wait_until(tally.settled, timeout=10)
    assert ran.is_set() and tally.handled(message.message_id) and tally.finished("later") == 1


def test_a_retried_message_is_awaited_until_its_last_attempt(stub: tuple[StubBroker, MessageTally]) -> None:
    broker, tally = stub
    attempts: list[int] = []

    @dramatiq.actor(broker=broker, max_retries=1, min_backoff=300, max_backoff=300)
    def flaky() -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("first attempt fails")

    flaky.send()
    wait_until(lambda: attempts, timeout=10)
    wait_until(tally.settled, timeout=10)
    assert len(attempts) == 2 and tally.finished("flaky") == 2


def test_a_message_sent_by_an_actor_is_awaited_too(stub: tuple[StubBroker, MessageTally]) -> None:
    broker, tally = stub
    done: list[str] = []

    @dramatiq.actor(broker=broker)
    def second() -> None:
        done.append("second")

    @dramatiq.actor(broker=broker)
    def first() -> None:
        second.send_with_options(delay=200)
        done.append("first")

    first.send()
    wait_until(tally.settled, timeout=10)
    assert done == ["first", "second"]
