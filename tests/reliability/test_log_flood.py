"""A worker pool whose database is unreachable writes about one line per retry, not a
traceback per retry.

A 30-second PostgreSQL outage once grew a pool's log by 72 MB (1.1 million lines): every
failed message was logged with its whole payload and a full traceback, once per retry,
and the timer loop did the same four times a second. Here the pool's database URL names
a port nothing listens on, so every message fails on connect exactly as in an outage;
RabbitMQ is real. The test waits until the pool has retried a few hundred times, then
counts its log: no traceback, the connection error itself a handful of times (once per
``SHIFTFLOW_LOG_REPEAT_SECONDS`` per kind of line, with a count of those left out), and
about one line per retry in all.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.ports import free_port
from tests.support.waiting import wait_until

from .rig import Rig

pytestmark = [pytest.mark.acceptance, pytest.mark.reliability]

TRIGGERS = 200
RETRIES = 400


@pytest.fixture
def rig(real_env: dict[str, str], pg_url: str, tmp_path: Path) -> Iterator[Rig]:
    with Rig(real_env, pg_url, tmp_path / "logs") as made:
        yield made


@pytest.mark.timeout(240)
def test_an_unreachable_database_costs_one_line_per_retry(rig: Rig) -> None:
    env = {
        **rig.env,
        "SHIFTFLOW_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/nothing",
        "SHIFTFLOW_LOG_LEVEL": "INFO",  # the default: Dramatiq's retry lines are info lines
    }
    pool = rig.pool(env, queues=("triggers", "steps"), processes=1, threads=4)
    pool.start()
    pool.wait_ready()
    started = time.monotonic()
    for n in range(TRIGGERS):
        assert rig.publisher.trigger("00000000-0000-0000-0000-000000000001", f"f-{n}", {"n": n, "pad": "x" * 500})

    def retried() -> int:
        count = pool.logs().count("Retrying message")
        return count if count >= RETRIES else 0

    wait_until(retried, timeout=180, interval=0.5, message=f"{RETRIES} retries")
    elapsed = time.monotonic() - started
    text = pool.logs()
    retries = text.count("Retrying message")
    lines = text.splitlines()
    errors = [line for line in lines if "OperationalError" in line]
    print(f"\n{len(lines)} lines, {len(text)} bytes, {retries} retries, {len(errors)} lines naming the error, "
          f"in {elapsed:.0f} s")
    assert "Traceback" not in text, text[:3000]
    assert "x" * 100 not in text  # no payload in the log
    # The error itself: once per 10 s per kind of line (the worker's, the timer loop's),
    # plus a few for the window the count was read in.
    assert len(errors) <= 2 * (elapsed / 10 + 2), "\n".join(errors)
    assert any(re.search(r"\(\d+ more like this in the last \d+ s not logged\)", e) for e in errors) or \
        elapsed < 10, "\n".join(errors)
    # About one line per retry (Dramatiq's "Retrying message ... in N milliseconds"), and
    # a few dozen for start-up and the rest.
    assert len(lines) <= retries * 1.1 + 50, "\n".join(lines[:200])
