"""A message that kills its worker is quarantined after SHIFTFLOW_DELIVERY_LIMIT deliveries.

The poison is a real process death: the failpoint ``step.before_work:boom=exit`` makes the
worker ``os._exit(137)`` every time it starts step ``boom``, after the delivery was
counted in PostgreSQL. The pool's supervisor replaces the dead process (the test would
also restart the whole pool, as systemd ``Restart=always`` does, should it exit).

``test_poison_message_is_quarantined``: with a delivery limit of 3 a worker process dies
three times; the fourth delivery marks ``boom`` FAILED ("quarantined ...") and its execution
FAILED with that reason, acks the message, and the pool stays up. Executions of another
workflow, published before, during and after, all complete once.

``test_poison_does_not_quarantine_its_neighbours``: a worker process running several
threads dies with every step it has in flight. An innocent step that happens to be
running beside the poison on each of its deliveries must not be quarantined with it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from tests.support.waiting import wait_until

from .checker import check
from .rig import Rig, run_beside_poison
from .waiting import wait_terminal
from .workflows import http_step

pytestmark = [pytest.mark.acceptance, pytest.mark.reliability]

LIMIT = 3


def _poison(url: str) -> dict[str, Any]:
    return {
        "name": "poison",
        "trigger": {"type": "manual"},
        "vars": {"url": url},
        "steps": [
            {"id": "check", "type": "condition", "with": {"left": 1, "op": "==", "right": 1}},
            http_step("boom", "{{ trigger.n }}"),
        ],
    }


def _steady(url: str, step: str = "call") -> dict[str, Any]:
    return {
        "name": f"steady-{step}",
        "trigger": {"type": "manual"},
        "vars": {"url": url},
        "steps": [
            {"id": "check", "type": "condition", "with": {"left": "{{ trigger.n }}", "op": ">=", "right": 0}},
            http_step(step, "{{ trigger.n }}"),
            {
                "id": "done",
                "type": "transform",
                "with": {"output": {"n": "{{ steps." + step + ".output.json.echo.n }}"}},
            },
        ],
    }


def _step(pg_url: str, key: str, step_id: str) -> dict[str, Any] | None:
    conn = psycopg2.connect(pg_url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(
                "SELECT s.status, s.attempts, s.error, e.status, e.error FROM step_execution s "
                "JOIN execution e ON e.id = s.execution_id WHERE e.dedup_key = %s AND s.step_id = %s",
                (key, step_id),
            )
            row = cur.fetchone()
    finally:
        conn.close()
    if row is None:
        return None
    return dict(zip(("status", "attempts", "error", "execution_status", "execution_error"), row, strict=True))


@pytest.fixture
def rig(real_env: dict[str, str], pg_url: str, tmp_path: Path) -> Iterator[Rig]:
    extra = {"SHIFTFLOW_DELIVERY_LIMIT": str(LIMIT), "SHIFTFLOW_FAILPOINTS": "step.before_work:boom=exit"}
    with Rig(real_env, pg_url, tmp_path / "logs", extra_env=extra) as made:
        yield made


@pytest.mark.timeout(240)
def test_poison_message_is_quarantined(rig: Rig) -> None:
    poison = rig.workflow(_poison(rig.service.url))
    steady = rig.workflow(_steady(rig.service.url))
    # One thread per process: the poison's death then takes no other step's delivery
    # with it (the next test is about that case).
    pool = rig.pool(processes=2, threads=1)
    pool.start()
    pool.wait_ready()
    keys, quarantined = run_beside_poison(
        rig, pool, steady, poison, "poison-1",
        lambda: (r := _step(rig.pg_url, "poison-1", "boom")) and r["status"] == "FAILED" and r or {},
    )
    report = check(rig.pg_url, [*keys, "poison-1"], rig.service.recorded())
    print(
        f"\nprocess deaths={pool.deaths()} boot_seconds={pool.boot_seconds} quarantined={quarantined}\n{report.summary()}"
    )

    # Each of the first LIMIT deliveries killed a worker process; a second process of the
    # pool may take the requeued poison before the master notices the first death, so
    # one pool exit can stand for two deaths.
    assert 1 <= len(pool.deaths()) <= LIMIT and set(pool.deaths()) == {137}, pool.deaths()
    assert quarantined["attempts"] == LIMIT + 1
    assert "quarantined" in quarantined["error"] and f"limit {LIMIT}" in quarantined["error"]
    assert quarantined["execution_status"] == "FAILED"
    assert "boom" in quarantined["execution_error"] and "quarantined" in quarantined["execution_error"]
    # The poison was never redelivered after its quarantine, and never reached its call.
    assert _step(rig.pg_url, "poison-1", "boom")["attempts"] == LIMIT + 1  # type: ignore[index]
    assert [c for c in rig.service.recorded() if c.step_id == "boom"] == []
    assert report.counts == {"completed_once": len(keys) + 1, "lost": 0, "duplicated": 0, "unexpected": 0}, (
        report.problems()
    )
    assert report.statuses == {"SUCCEEDED": len(keys), "FAILED": 1}
    assert report.late_calls == []


@pytest.mark.timeout(240)
def test_poison_does_not_quarantine_its_neighbours(
    real_env: dict[str, str], pg_url: str, tmp_path: Path
) -> None:
    """Engine bug reproduction (see the module docstring).

    One process, two threads. The innocent step ``slow`` is claimed and held 4 s (a
    failpoint sleep before its work); meanwhile the poison ``boom`` is claimed, calls the
    outside service (0.5 s) and dies after its work. Both messages were unacknowledged in
    the dead process, so both are redelivered, together, to the restarted pool, and the
    same thing happens again: ``slow`` is charged one "delivery without outcome" per
    death of ``boom``. On the poison's fourth delivery both exceed the limit of 3, and the
    innocent execution fails as "quarantined" although its step never killed anything.
    """
    extra = {
        "SHIFTFLOW_DELIVERY_LIMIT": str(LIMIT),
        "SHIFTFLOW_FAILPOINTS": "step.after_work:boom=exit,step.before_work:slow=sleep=4",
    }
    with Rig(real_env, pg_url, tmp_path / "logs", step_delays={"boom": 0.5}, extra_env=extra) as rig:
        poison = rig.workflow(_poison(rig.service.url))
        innocent = rig.workflow(_steady(rig.service.url, step="slow"))
        pool = rig.pool(processes=1, threads=2)
        pool.start()
        pool.wait_ready()
        with pool.supervised():
            assert rig.publisher.trigger(innocent, "innocent-1", {"n": 1})
            wait_until(
                lambda: (r := _step(pg_url, "innocent-1", "slow")) and r["status"] == "RUNNING", timeout=60
            )
            assert rig.publisher.trigger(poison, "poison-1", {"n": 1})
            wait_terminal(pg_url, ["poison-1", "innocent-1"], pool, stall=120)
        boom, slow = _step(pg_url, "poison-1", "boom"), _step(pg_url, "innocent-1", "slow")
        print(f"\nprocess deaths={pool.deaths()}\nboom={boom}\nslow={slow}")

    assert boom is not None and slow is not None
    assert boom["status"] == "FAILED" and "quarantined" in boom["error"]
    assert slow["execution_status"] == "SUCCEEDED", (
        f"the innocent step was quarantined with the poison: {slow}"
    )


@pytest.mark.timeout(240)
def test_poison_on_a_quorum_queue_is_quarantined_by_shiftflow_not_dropped_by_the_broker(
    real_env: dict[str, str], pg_url: str, tmp_path: Path
) -> None:
    """Quorum queues count deliveries themselves (``x-delivery-limit``) and dead-letter a
    message past the limit. ShiftFlow's queues set it above SHIFTFLOW_DELIVERY_LIMIT, so
    the poison is still quarantined by ShiftFlow (a FAILED step saying why) and never sits
    forgotten in ``steps.XQ``: with a broker limit at or below LIMIT this test fails."""
    from shiftflow.kernel.broker import QUORUM_DELIVERY_LIMIT

    extra = {
        "SHIFTFLOW_DELIVERY_LIMIT": str(LIMIT),
        "SHIFTFLOW_FAILPOINTS": "step.before_work:boom=exit",
        "SHIFTFLOW_QUEUE_TYPE": "quorum",
    }
    with Rig(real_env, pg_url, tmp_path / "logs", extra_env=extra) as rig:
        poison = rig.workflow(_poison(rig.service.url))
        steady = rig.workflow(_steady(rig.service.url))
        pool = rig.pool(processes=2, threads=1)
        pool.start()
        pool.wait_ready()
        keys, quarantined = run_beside_poison(
            rig, pool, steady, poison, "poison-q",
            lambda: (r := _step(rig.pg_url, "poison-q", "boom")) and r["status"] == "FAILED" and r or {},
        )
        report = check(rig.pg_url, [*keys, "poison-q"], rig.service.recorded())
        amqp_url = real_env["SHIFTFLOW_AMQP_URL"]
        steps = _broker_queue(amqp_url, "steps")
        dead = _broker_queue(amqp_url, "steps.XQ")
        dead_letters = _depth(amqp_url, "steps.XQ")
    print(f"\nprocess deaths={pool.deaths()} quarantined={quarantined}\n{report.summary()}")

    assert steps["type"] == "quorum" and dead["type"] == "quorum"
    assert steps["arguments"]["x-delivery-limit"] == QUORUM_DELIVERY_LIMIT > LIMIT + 1
    assert quarantined["attempts"] == LIMIT + 1
    assert "quarantined" in quarantined["error"] and f"limit {LIMIT}" in quarantined["error"]
    assert dead_letters == 0  # nothing dead-lettered by the broker
    assert report.counts == {"completed_once": len(keys) + 1, "lost": 0, "duplicated": 0, "unexpected": 0}, (
        report.problems()
    )


def _broker_queue(amqp_url: str, name: str) -> dict[str, Any]:
    from tests.support.rabbitmq import queue_info

    return queue_info(amqp_url, name)


def _depth(amqp_url: str, name: str) -> int:
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        return int(connection.channel().queue_declare(name, passive=True).method.message_count)
    finally:
        connection.close()
