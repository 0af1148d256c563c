"""``consumers.supervisor``: which process is replaced, when, and what happens to its metrics.

Real processes are killed in tests/reliability/test_worker_supervisor.py; here the
processes are stand-ins, so the decisions can be checked one by one with a fake clock.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shiftflow.consumers import supervisor
from shiftflow.consumers.pools import Pool
from shiftflow.consumers.supervisor import Supervisor
from shiftflow.kernel.settings import Settings


class FakeProcess:
    """A started child: ``code`` is what ``poll`` answers (None while it runs)."""

    started: list[FakeProcess] = []
    next_pid = 1000

    def __init__(self, argv: list[str], **kwargs: Any) -> None:
        self.argv = argv
        self.code: int | None = None
        FakeProcess.next_pid += 1
        self.pid = FakeProcess.next_pid
        FakeProcess.started.append(self)

    def poll(self) -> int | None:
        return self.code


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def made(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[Supervisor, Clock]:
    FakeProcess.started = []
    monkeypatch.setattr(supervisor.subprocess, "Popen", FakeProcess)
    settings = Settings(timers=True, metrics_dir=str(tmp_path), metrics_port=9999)
    clock = Clock()
    made = Supervisor(Pool("p", ("steps",), 2, 4), settings, python="python", env={}, clock=clock)
    for child in made.children:
        made._start(child)
    return made, clock


def test_the_pool_runs_its_workers_and_the_forks_its_middleware_asks_for(made: tuple[Supervisor, Clock]) -> None:
    sup, _ = made
    assert [c.name for c in sup.children] == [
        "worker process 0", "worker process 1",
        "fork shiftflow.kernel.middleware:pool_exporter", "fork shiftflow.consumers.timers:timer_fork",
    ]
    assert sup.children[0].argv[-6:] == ["--queues", "steps", "--threads", "4", "--shutdown-timeout", "600"]
    assert sup.env["PROMETHEUS_MULTIPROC_DIR"] == sup.settings.metrics_dir


def test_a_dead_process_is_replaced_alone_and_one_that_keeps_dying_young_waits(
    made: tuple[Supervisor, Clock],
) -> None:
    sup, clock = made
    first, other = sup.children[0], sup.children[1]
    other_proc = other.proc
    delays = []
    for _ in range(5):
        clock.now += 3  # dies 3 s after its start, again and again
        assert first.proc is not None
        first.proc.code = -9
        sup.step()
        delays.append(first.delay)
        clock.now += first.delay
        sup.step()  # the replacement is due now
        assert first.proc is not None and first.proc.code is None
    assert delays == [0.0, 1.0, 2.0, 4.0, 8.0]
    assert other.proc is other_proc  # the other processes were never touched
    clock.now += supervisor.STABLE_SECONDS  # this one lived: the next death is replaced at once
    first.proc.code = 137
    sup.step()
    assert first.delay == 0.0 and first.exits == [-9] * 5 + [137] and first.replaced == 6
    assert sup.exit_code == 0


def test_a_process_that_cannot_run_with_its_settings_stops_the_pool(made: tuple[Supervisor, Clock]) -> None:
    sup, _ = made
    sup.children[3].proc.code = 2  # type: ignore[union-attr]
    sup.step()
    assert sup.exit_code == 2 and sup.children[3].proc is None
    sup.step()
    assert sup.children[3].proc is None  # not started again


def test_a_dead_worker_leaves_its_counters_and_drops_its_live_gauges(made: tuple[Supervisor, Clock]) -> None:
    sup, _ = made
    worker = sup.children[0]
    assert worker.proc is not None
    files = Path(sup.settings.metrics_dir)
    for name in (f"counter_{worker.proc.pid}.db", f"histogram_{worker.proc.pid}.db",
                 f"gauge_livesum_{worker.proc.pid}.db", f"gauge_livesum_{sup.children[1].proc.pid}.db"):  # type: ignore[union-attr]
        (files / name).write_bytes(b"")
    worker.proc.code = -9
    sup.step()
    assert sorted(p.name for p in files.iterdir()) == sorted([
        f"counter_{FakeProcess.started[0].pid}.db", f"histogram_{FakeProcess.started[0].pid}.db",
        f"gauge_livesum_{sup.children[1].proc.pid}.db",  # type: ignore[union-attr]
    ])


def test_a_recycled_worker_is_replaced_at_once_however_young(made: tuple[Supervisor, Clock]) -> None:
    from shiftflow.consumers.recycle import EXIT_RECYCLED

    sup, clock = made
    child = sup.children[0]
    for _ in range(4):  # recycled every second: never a backoff, never counted as dying young
        clock.now += 1
        assert child.proc is not None
        child.proc.code = EXIT_RECYCLED
        sup.step()
        assert (child.delay, child.young) == (0.0, 0)
        sup.step()  # due now: started again
        assert child.proc is not None and child.proc.code is None
    assert child.replaced == 4 and sup.exit_code == 0
