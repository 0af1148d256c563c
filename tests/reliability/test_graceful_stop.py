"""A worker pool stopped with SIGTERM, or recycling its processes, loses and repeats nothing.

Real RabbitMQ and PostgreSQL (the test's vhost and database), the two-call workflow of
tests/reliability (condition, http ``call``, transform, http ``confirm``, transform), and
an outside service that answers ``call`` only after 3 s, so SIGTERM lands while calls are
in flight. The checker (tests/reliability/checker.py) judges from PostgreSQL's own
transition log and the outside service's record of every call.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.waiting import wait_until

from .checker import check
from .rig import Rig
from .waiting import wait_terminal
from .workflows import two_call_definition

pytestmark = [pytest.mark.acceptance, pytest.mark.reliability]


@pytest.fixture
def rig(real_env: dict[str, str], pg_url: str, tmp_path: Path) -> Iterator[Rig]:
    with Rig(real_env, pg_url, tmp_path / "logs", step_delays={"call": 3.0}) as made:
        yield made


def _calls_per_step(rig: Rig) -> Counter[tuple[str, str]]:
    return Counter((c.execution_id, c.step_id) for c in rig.service.recorded())


@pytest.mark.timeout(300)
def test_sigterm_finishes_the_calls_in_flight_and_loses_nothing(rig: Rig) -> None:
    total = 16
    workflow = rig.workflow(two_call_definition("graceful", rig.service.url))
    pool = rig.pool(processes=1, threads=4)
    pool.start()
    pool.wait_ready()
    for n in range(total):
        assert rig.publisher.trigger(workflow, f"g-{n:03d}", {"n": n})
    # Four slow calls in flight (one per thread), the rest waiting behind them.
    wait_until(lambda: len(rig.service.recorded()) >= 4, timeout=60, interval=0.1,
               message="calls in flight\n" + pool.log_tail())
    in_flight = len(rig.service.recorded())
    stopped_at = time.monotonic()
    pool.stop()  # SIGTERM to the pool's group; SIGKILL only after 30 s
    took = time.monotonic() - stopped_at
    assert pool.proc is not None and pool.proc.returncode == 0, pool.log_tail()  # stopped, not killed
    assert took < 25, took
    before_restart = _calls_per_step(rig)
    assert sum(before_restart.values()) >= in_flight  # the calls in flight were finished, not dropped

    restarted = rig.pool(processes=1, threads=4)
    restarted.start()
    accepted = list(rig.publisher.accepted)
    assert len(accepted) == total
    wait_terminal(rig.pg_url, accepted, restarted, stall=60)
    report = check(rig.pg_url, accepted, rig.service.recorded())
    print(f"\nin flight at SIGTERM: {in_flight} calls; stop took {took:.1f} s; {report.summary()}")
    assert report.counts == {"completed_once": total, "lost": 0, "duplicated": 0, "unexpected": 0}, report.problems()
    assert report.statuses == {"SUCCEEDED": total}
    calls = _calls_per_step(rig)
    assert len(calls) == 2 * total and set(calls.values()) == {1}, calls  # every call happened once


@pytest.mark.timeout(300)
def test_a_worker_process_recycled_every_few_messages_loses_nothing(rig: Rig) -> None:
    # Two messages per execution (the trigger, then both calls chained on one step message):
    # 40 messages, so a process recycled every 10 is replaced at least three times.
    total = 20
    rig.service.step_delays.clear()
    env = {**rig.env, "SHIFTFLOW_WORKER_MAX_MESSAGES": "10"}
    workflow = rig.workflow(two_call_definition("recycled", rig.service.url))
    pool = rig.pool(env, processes=1, threads=2)
    pool.start()
    pool.wait_ready()
    for n in range(total):
        assert rig.publisher.trigger(workflow, f"r-{n:03d}", {"n": n})
    accepted = list(rig.publisher.accepted)
    wait_terminal(rig.pg_url, accepted, pool, stall=60)
    report = check(rig.pg_url, accepted, rig.service.recorded())
    recycled = re.findall(r"worker process 0 \(pid \d+\) recycled after", pool.logs())
    print(f"\nrecycled {len(recycled)} times; {report.summary()}")
    assert len(recycled) >= 2, pool.log_tail()
    assert pool.poll() is None  # the pool kept running
    assert report.counts == {"completed_once": total, "lost": 0, "duplicated": 0, "unexpected": 0}, report.problems()
    assert report.statuses == {"SUCCEEDED": total}
    assert set(_calls_per_step(rig).values()) == {1}
