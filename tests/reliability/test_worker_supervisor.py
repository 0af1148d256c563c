"""SIGKILL one worker process of a pool, again and again, while messages flow.

``shiftflow workers`` supervises its processes (``consumers.supervisor``): a worker process
that dies is replaced, alone; the other processes keep consuming and the supervisor never
exits. Dramatiq's own master stopped the whole pool after the dead process's siblings
drained, so only an outside supervisor brought it back.

``test_a_killed_worker_process_is_replaced_and_the_pool_keeps_running``: a publisher sends
confirmed triggers of a two-call workflow while the test SIGKILLs one worker process
(chosen at random) six times, then the metrics exporter fork once, then, the work done,
each worker process once more. The supervisor (the pool's main process) stays up
throughout, every kill is followed by a replacement, every trigger completes once, and
the pool's ``/metrics`` keeps every family with counters that never go back, even when
only fresh processes are alive; the killed processes' in-progress gauges are dropped, so
nothing stays "in progress" once the work is done.
"""

from __future__ import annotations

import os
import random
import re
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from shiftflow.consumers.supervisor import MAX_BACKOFF_SECONDS
from tests.support.ports import free_port
from tests.support.waiting import wait_until

from .checker import check
from .rig import Rig
from .waiting import wait_terminal
from .worker_pool import WorkerPool
from .workflows import two_call_definition

pytestmark = [pytest.mark.acceptance, pytest.mark.reliability]

TOTAL, KILLS = 150, 6
# A slot whose processes keep dying young is refilled after a back-off of up to
# MAX_BACKOFF_SECONDS (by design: a crash loop must not spin), then the process starts.
REPLACED_WITHIN = MAX_BACKOFF_SECONDS + 30


@pytest.fixture
def rig(real_env: dict[str, str], pg_url: str, tmp_path: Path) -> Iterator[Rig]:
    with Rig(real_env, pg_url, tmp_path / "logs") as made:
        yield made


def children(pid: int) -> dict[int, list[str]]:
    """The child processes of ``pid`` with their command lines."""
    found: dict[int, list[str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
            if int(fields[1]) != pid or fields[0] == b"Z":
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                found[int(entry)] = cmdline.read().decode(errors="replace").split("\0")
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
    return found


def roles(pool: WorkerPool) -> tuple[list[int], list[int]]:
    """(worker process pids, fork pids) under the pool's supervisor."""
    assert pool.proc is not None
    kids = children(pool.proc.pid)
    workers = sorted(p for p, argv in kids.items() if "worker" in argv)
    forks = sorted(p for p, argv in kids.items() if "fork" in argv)
    return workers, forks


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def total(text: str, family: str, **labels: str) -> float:
    """The sum of ``family``'s samples whose labels include ``labels``."""
    out = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{family}\{{(.*)\}} (\S+)$", line)
        if match and all(f'{k}="{v}"' in match.group(1) for k, v in labels.items()):
            out += float(match.group(2))
    return out


FAMILIES = ("shiftflow_messages_total", "shiftflow_message_duration_seconds", "shiftflow_messages_in_progress",
            "shiftflow_steps_total", "shiftflow_executions_total")


@pytest.mark.timeout(600)  # replacements may each wait out a back-off (REPLACED_WITHIN)
def test_a_killed_worker_process_is_replaced_and_the_pool_keeps_running(rig: Rig, tmp_path: Path) -> None:
    rnd = random.Random(int(os.environ.get("SHIFTFLOW_TEST_SEED") or time.time_ns() % 1_000_000))
    port = free_port()
    env = {
        **rig.env,
        "SHIFTFLOW_METRICS_DIR": str(tmp_path / "metrics"),
        "SHIFTFLOW_METRICS_PORT": str(port),
        # A step in flight at a kill is redelivered; this test is not about the delivery limit.
        "SHIFTFLOW_DELIVERY_LIMIT": str(KILLS + 2),
    }
    workflow = rig.workflow(two_call_definition("supervised", rig.service.url))
    pool = rig.pool(env, processes=2, threads=4)
    pool.start()
    pool.wait_ready()
    wait_until(lambda: scrape(port) is not None, timeout=30, message="the pool's metrics endpoint")

    def publish() -> None:
        for n in range(TOTAL):
            rig.publisher.trigger(workflow, f"s-{n:04d}", {"n": n})
            time.sleep(0.05)

    sender = threading.Thread(target=publish, name="publisher")
    sender.start()
    killed: list[int] = []
    seen_total = 0.0
    try:
        for _ in range(KILLS):
            time.sleep(rnd.uniform(0.4, 1.2))
            workers, _ = roles(pool)
            assert len(workers) == 2, (workers, pool.log_tail())
            victim = rnd.choice(workers)
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)
            # Replaced, while the supervisor itself stays up.
            wait_until(lambda v=victim: (lambda w: len(w) == 2 and v not in w)(roles(pool)[0]),
                       timeout=REPLACED_WITHIN, message=f"a replacement for worker process {victim}")
            assert pool.poll() is None, pool.log_tail()
            text = scrape(port)
            now_total = total(text, "shiftflow_messages_total")
            assert now_total >= seen_total, (now_total, seen_total)  # counters never go back
            seen_total = now_total
    finally:
        sender.join(120)

    # The exporter fork too: it comes back, and the sums with it.
    _, forks = roles(pool)
    exporter = [p for p in forks if any("pool_exporter" in a for a in children(pool.proc.pid)[p])]  # type: ignore[union-attr]
    assert len(exporter) == 1, forks
    os.kill(exporter[0], signal.SIGKILL)
    wait_until(lambda: total(scrape(port), "shiftflow_messages_total") >= seen_total, timeout=30,
               message="the exporter's replacement serving the same sums")

    accepted = list(rig.publisher.accepted)
    assert len(accepted) == TOTAL, len(accepted)
    wait_terminal(rig.pg_url, accepted, pool, stall=60)
    report = check(rig.pg_url, accepted, rig.service.recorded())
    print(f"\nkilled={killed} {report.summary()}")
    assert report.counts == {"completed_once": TOTAL, "lost": 0, "duplicated": 0, "unexpected": 0}, (
        report.problems()
    )
    assert report.statuses == {"SUCCEEDED": TOTAL}, report.problems()

    # Once more for each worker process, now that the work is done: only processes that
    # never took a message are left, and the pool's families must not vanish with the dead.
    for victim in roles(pool)[0]:
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda v=victim: (lambda w: len(w) == 2 and v not in w)(roles(pool)[0]),
                   timeout=REPLACED_WITHIN, message=f"a replacement for worker process {victim}")

    # The supervisor never exited, and says what it replaced.
    assert pool.poll() is None and pool.exits == []
    logs = pool.logs()
    assert len(re.findall(r"worker process \d \(pid \d+\) exited with code -9", logs)) == KILLS + 2, logs[-3000:]
    assert "pool_exporter (pid" in logs

    # Every family is still there; counters carry every message, including those of the
    # killed processes; nothing is left "in progress" by a process that died mid-message.
    def settled() -> str | None:
        text = scrape(port)
        if not all(f"# TYPE {family} " in text for family in FAMILIES):
            return None
        done = total(text, "shiftflow_executions_total", outcome="succeeded") >= TOTAL
        return text if done and total(text, "shiftflow_messages_in_progress") == 0 else None

    text = wait_until(settled, timeout=30, message="every family, and in-progress gauges back to zero")
    assert total(text, "shiftflow_messages_total", outcome="ok") >= TOTAL  # a trigger message each, at least
    assert total(text, "shiftflow_messages_total") >= seen_total
