"""Engine benchmark: workflows through ShiftFlow, bare Dramatiq and a Celery chain.

    .venv/bin/python bench/bench_engine.py                     # cheap steps, about 2-3 minutes
    .venv/bin/python bench/bench_engine.py --workload outside  # or fanout, wait, all
    .venv/bin/python bench/bench_engine.py --workload all --quick   # 2-3 minutes each, wait about 4
    .venv/bin/python bench/bench_engine.py --profile      # then where ShiftFlow's time goes

Workloads (``--workload``; ``all`` runs each in a process of its own, one after the other):

* ``cheap`` (default): transform → condition → transform (no outside calls); every step
  writes one row to PostgreSQL and one log document to the MongoDB-wire store, so the
  comparison measures the engines.
* ``outside``: three ``http`` steps, each a POST to a loopback echo service that the
  benchmark starts (``bench/echo_server.py``, asyncio in its own process, its CPU shown as
  ``echo``); the baselines make the same POST per step before recording it.
* ``fanout``: one ``http`` step with ``for_each`` over 20 items, then a join; against a
  Dramatiq group with a completion callback (Redis barrier) and a Celery chord (Redis
  result backend).
* ``wait``: ``--parked`` executions parked on a durable timer until one moment: the CPU
  (and, for ShiftFlow, the PostgreSQL rows and bytes) they cost while parked, against the
  same idle window with nothing parked, then how many per second the timer loop wakes.
  Baselines: Dramatiq's ``delay`` and Celery's ``countdown`` (held unacknowledged by the
  workers until due). See ``run_wait``.

Besides CPU by component, each phase reports what it made PostgreSQL do in the system's
own database (``pg_stat_database`` / ``pg_stat_user_tables`` deltas: transactions, rows
inserted and updated per execution), which other users of the shared server do not blur. All three run on the same RabbitMQ, PostgreSQL and
SecantusDB, each with its own vhost and databases (created here, removed at the end, also
on Ctrl-C), and with the same worker processes x threads (``--processes``, ``--threads``).
What each baseline does exactly is in the docstrings of ``bench/engine_baselines/``.

Two phases per system, run one system at a time on freshly started workers (after a
warm-up of ``--warmup`` executions that also waits for the workers to boot):

1. throughput: ``--executions`` triggers as fast as ``--producers`` threads send them, in
   batches of ``BURST_BATCH`` the way each system's producers publish (ShiftFlow: publisher
   confirms pipelined per batch, as its scheduler and ingress do; the baselines: one
   unconfirmed ``send``/``delay`` per trigger, their defaults);
   executions/s = completed / (last done - first trigger);
2. latency at moderate load: a fixed rate for ``--seconds``: ``--rate``, or by default 30%
   of the slowest system's phase-1 throughput (between 10 and 100 per second);
   trigger-to-done p50/p99 from the timestamps stored in PostgreSQL.

It prints one table with both phases, the CPU each component spent per execution in
phase 1, and the ratios against the targets (ShiftFlow >= 1.5x bare Dramatiq and >= 2x
Celery; p50 <= 15 ms, p99 <= 40 ms). Exit status 0 when the run completed (targets met or
not; ``--strict`` makes a missed target exit 1), 1 when it could not run.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import engine_services  # noqa: E402 - after the path fix above
from bench.engine_services import (  # noqa: E402
    CpuSnapshot,
    Resources,
    Workers,
    counter_delta,
    cpu_ms_per_execution,
    cpu_snapshot,
    pg_counters,
    versions,
)
from bench.engine_systems import SYSTEMS, WORKLOADS, System  # noqa: E402

TARGET_P50_MS, TARGET_P99_MS = 15.0, 40.0
#: Executions/s targets per workload: ShiftFlow / bare Dramatiq, ShiftFlow / Celery.
TARGETS: dict[str, tuple[float, float]] = {"cheap": (2.0, 2.5), "outside": (1.5, 2.0), "fanout": (0.0, 1.0)}
#: Phase-1 executions per workload (``--executions`` overrides): normal, ``--quick``.
EXECUTIONS: dict[str, tuple[int, int]] = {"cheap": (2000, 600), "outside": (1000, 300), "fanout": (150, 50)}
#: Triggers per ``trigger_many`` call of a phase-1 producer thread.
BURST_BATCH = 50


@dataclass
class Phase:
    """What one phase of one system measured."""

    sent: int = 0
    completed: int = 0
    failed: int = 0
    send_seconds: float = 0.0
    throughput: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)
    pg: dict[str, float] = field(default_factory=dict)
    timed_out: bool = False

    def close_pg(self, system: System, warmup: int) -> None:
        """PostgreSQL work per execution from the workers' start to their stop, warm-up
        included (a backend reports its counters when it exits, else at most once a second
        and, when idle, only after seconds: only a start-to-stop delta is exact). The
        benchmark's own polling transactions are taken out of the commits."""
        start = _pg_start.get(system.key)
        if start is None:
            return
        counters, queries = start
        after = pg_counters(system.pg_url)
        # Each pg_counters call is 3 autocommit statements, each poll one.
        after["xact_commit"] -= system.queries - queries + 3
        self.pg = counter_delta(counters, after, self.completed + warmup)

    def pct(self, q: float) -> float:
        """The ``q`` quantile (0..1) of the latencies in ms; NaN without data."""
        if not self.latencies_ms:
            return float("nan")
        data = sorted(self.latencies_ms)
        return data[min(len(data) - 1, max(0, math.ceil(q * len(data)) - 1))]  # nearest rank


class Budget:
    """The whole run's time limit: phases shorten their waits to stay inside it."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        """Seconds left (never below zero)."""
        return max(0.0, self.deadline - time.monotonic())


def _wait_finished(system: System, workers: Workers, phase: str, count: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if system.finished(phase) >= count:
            return True
        workers.check_alive()
        time.sleep(0.05)
    return system.finished(phase) >= count


def run_phase(
    system: System,
    workers: Workers,
    mongo_pids: list[int],
    phase: str,
    count: int,
    rate: float | None,
    timeout: float,
    producers: int = 1,
) -> Phase:
    """Trigger ``count`` executions and wait for them; returns throughput, latencies and CPU
    per execution.

    With ``rate`` one thread paces the triggers; without, ``producers`` threads send as fast
    as they can (a confirmed publish waits for the broker, so one thread could be the
    bottleneck instead of the system under test).
    """
    result = Phase()
    system.begin_phase()
    before: CpuSnapshot = cpu_snapshot(workers.pids(), mongo_pids)
    start = time.monotonic()
    lock = threading.Lock()

    def produce(first: int, step: int) -> None:
        if not rate:
            # A burst: each producer thread sends its share in batches, as the system's own
            # producers would (ShiftFlow pipelines the confirms; the baselines send one by one).
            mine = list(range(first, count, step))
            for at in range(0, len(mine), BURST_BATCH):
                system.trigger_many(phase, mine[at : at + BURST_BATCH])
                with lock:
                    result.sent += len(mine[at : at + BURST_BATCH])
                if stop.is_set() or time.monotonic() - start > timeout:
                    break
            return
        for i in range(first, count, step):
            pause = start + i / rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            system.trigger(phase, i)
            with lock:
                result.sent += 1
            if stop.is_set() or time.monotonic() - start > timeout:
                break

    threads = 1 if rate else max(1, producers)
    stop = threading.Event()
    with ThreadPoolExecutor(threads, thread_name_prefix="bench-producer") as pool:
        try:
            for future in [pool.submit(produce, k, threads) for k in range(threads)]:
                future.result()
        except BaseException:
            stop.set()  # Ctrl-C or a failed send: the other producers stop too
            raise
    result.send_seconds = time.monotonic() - start
    result.timed_out = not _wait_finished(
        system, workers, phase, result.sent, max(1.0, timeout - result.send_seconds)
    )
    after = cpu_snapshot(workers.pids(), mongo_pids)
    timings = system.timings(phase)
    result.completed, result.failed = len(timings), system.failed(phase)
    if timings:
        first, last = min(t for t, _ in timings), max(d for _, d in timings)
        result.throughput = len(timings) / max(1e-6, last - first)
        result.latencies_ms = [max(0.0, (d - t) * 1000.0) for t, d in timings]
    result.cpu = cpu_ms_per_execution(before, after, result.completed)
    return result


_starts: dict[str, int] = {}
#: Per system: PostgreSQL counters and the benchmark's own query count when its workers started.
_pg_start: dict[str, tuple[dict[str, int], int]] = {}


@contextlib.contextmanager
def running(system: System, log_dir: Path, mongo_pids: list[int], warmup: int, budget: Budget) -> Any:
    """Start the system's workers, wait for a warm-up batch to finish, stop them on exit."""
    workers = system.workers(log_dir)
    # A new phase name per start: the same trigger ids again would be duplicates, finished at once.
    _starts[system.key] = _starts.get(system.key, 0) + 1
    warm = f"warm{_starts[system.key]}"
    try:
        _pg_start[system.key] = (pg_counters(system.pg_url), system.queries)
        workers.start()
        system.begin_phase()
        for i in range(warmup):
            system.trigger(warm, i)
        if not _wait_finished(system, workers, warm, warmup, min(90.0, budget.left())):
            raise RuntimeError(f"{system.label}: warm-up did not finish; worker log:\n{workers.log_tail()}")
        yield workers
    finally:
        workers.stop()


def _fmt(value: float, digits: int = 1) -> str:
    return "n/a" if value != value else f"{value:,.{digits}f}"


def print_pg_work(systems: list[System], thr: dict[str, Phase]) -> None:
    """Per execution in phase 1: transactions, rows inserted/updated (HOT among them) per
    table of the system's own database."""
    print()
    print(
        "PostgreSQL work per execution in phase 1 with its warm-up (the system's own database, workers' start to"
        " stop;\n buffer hits include the benchmark's polling):"
    )
    for s in systems:
        pg = thr.get(s.key, Phase()).pg
        if not pg:
            continue
        tables = sorted({k.rsplit(".", 1)[0] for k in pg if "." in k})
        parts = [
            f"{t} +{pg.get(t + '.ins', 0):.1f} ins {pg.get(t + '.upd', 0):.1f} upd ({pg.get(t + '.hot', 0):.1f} HOT)"
            for t in tables
        ]
        print(
            f"  {s.label:<14} {pg.get('xact_commit', 0):5.1f} commits, {pg.get('tup_inserted', 0):5.1f} rows inserted, "
            f"{pg.get('tup_updated', 0):5.1f} updated, {pg.get('blks_hit', 0):6.0f} buffer hits"
        )
        if parts:
            print("      " + "; ".join(parts))


def report(
    systems: list[System],
    thr: dict[str, Phase],
    lat: dict[str, Phase],
    rate: float,
    seconds: float,
    workload: str = "cheap",
) -> list[str]:
    """Print the results table, CPU per execution and ratios; return the missed targets."""
    print()
    print(
        f"{'system':<14} {'exec/s':>8} {'burst p50':>10} {'burst p99':>10} | {'rate/s':>6} {'p50 ms':>7} "
        f"{'p99 ms':>7} {'max ms':>7} | {'done':>11} {'failed':>6}"
    )
    for s in systems:
        t, latency = thr.get(s.key, Phase()), lat.get(s.key, Phase())
        done = f"{t.completed + latency.completed}/{t.sent + latency.sent}"
        print(
            f"{s.label:<14} {_fmt(t.throughput):>8} {_fmt(t.pct(0.5), 0):>10} {_fmt(t.pct(0.99), 0):>10} | "
            f"{_fmt(latency.sent / max(1e-6, latency.send_seconds), 0):>6} {_fmt(latency.pct(0.5)):>7} "
            f"{_fmt(latency.pct(0.99)):>7} {_fmt(max(latency.latencies_ms or [float('nan')])):>7} | "
            f"{done:>11} {t.failed + latency.failed:>6}"
            + ("  (timed out)" if t.timed_out or latency.timed_out else "")
        )
    print(f"(burst = phase 1, all triggers at once; p50/p99 = phase 2, {rate:g}/s for {seconds:g} s)")
    print()
    print("CPU ms per execution in phase 1 (user+system; postgres = every backend on the server):")
    keys = ["workers", "postgres", "rabbitmq", "mongo", "bench", "echo", "machine"]
    print(f"{'system':<14} " + " ".join(f"{k:>9}" for k in keys) + f" {'busy':>6} {'alone/s':>8}")
    for s in systems:
        cpu = thr.get(s.key, Phase()).cpu
        if cpu:
            own = sum(cpu[k] for k in keys[:6])
            print(
                f"{s.label:<14} " + " ".join(f"{cpu[k]:>9.2f}" for k in keys) + f" {cpu['utilisation']:>6.0%}"
                f" {(os.cpu_count() or 1) * 1000.0 / max(own, 1e-6):>8.0f}"
            )
    print(
        "(machine = every process on the box: well above the sum when others load it; alone/s = CPUs x 1000 /"
        " the six components' ms,\n the rate the box could sustain if this run had it to itself: the figure"
        " to compare when the load average is high)"
    )
    missed: list[str] = []
    print_pg_work(systems, thr)
    sf = thr.get("sf")
    if sf is None:
        return missed
    print()
    for key, target in zip(("dq", "cel"), TARGETS[workload], strict=True):
        other = thr.get(key)
        if other is None or not other.throughput:
            continue
        ratio = sf.throughput / other.throughput
        ok = ratio >= target
        label = SYSTEMS[key].label
        verdict = f"target >= {target:g}x: {'met' if ok else 'MISSED'}" if target else "no target"
        print(f"ShiftFlow / {label:<13} executions/s: {ratio:5.2f}x  ({verdict})")
        if not ok:
            missed.append(f"vs {label}")
    sf_lat = lat.get("sf")
    if sf_lat is not None and workload != "fanout":
        for q, target in ((0.5, TARGET_P50_MS), (0.99, TARGET_P99_MS)):
            value = sf_lat.pct(q)
            ok = value <= target
            print(
                f"ShiftFlow p{int(q * 100):<2} at {rate:g}/s: {_fmt(value)} ms  (target <= {target:g} ms: "
                f"{'met' if ok else 'MISSED'})"
            )
            if not ok:
                missed.append(f"p{int(q * 100)}")
        for s in systems:
            other_lat = lat.get(s.key)
            if s.key != "sf" and other_lat is not None and other_lat.latencies_ms:
                print(
                    f"ShiftFlow / {s.label:<13} p50: {sf_lat.pct(0.5) / other_lat.pct(0.5):5.2f}x   "
                    f"p99: {sf_lat.pct(0.99) / other_lat.pct(0.99):5.2f}x  (lower is better)"
                )
    return missed


#: Seconds for idle PostgreSQL backends' counters to land (they report after 10 s idle).
SETTLE_S = 11.0


@dataclass
class IdleWindow:
    """CPU per second by component, and the system database's work per second, over a window."""

    cpu_per_s: dict[str, float] = field(default_factory=dict)
    pg_per_s: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def idle_window(system: System, workers: Workers, mongo_pids: list[int], seconds: float) -> IdleWindow:
    """Measure ``seconds`` of doing nothing but what is running (timer loops, heartbeats,
    workers holding delayed messages)."""
    pg_before = pg_counters(system.pg_url)
    before = cpu_snapshot(workers.pids(), mongo_pids)
    time.sleep(seconds)
    after = cpu_snapshot(workers.pids(), mongo_pids)
    pg_after = pg_counters(system.pg_url)
    spent = after.at - before.at
    cpu = cpu_ms_per_execution(before, after, 1)
    return IdleWindow(
        {k: v / spent for k, v in cpu.items() if k != "utilisation"},
        counter_delta(pg_before, pg_after, spent),
        spent,
    )


@dataclass
class WaitResult:
    """What the wait workload measured for one system."""

    parked: int = 0
    woken: int = 0
    empty: IdleWindow = field(default_factory=IdleWindow)
    loaded: IdleWindow = field(default_factory=IdleWindow)
    wake_per_s: float = 0.0
    delays_ms: list[float] = field(default_factory=list)
    bytes_per_row: float = float("nan")
    send_per_s: float = 0.0


def _sf_parked_bytes(system: System) -> int:
    rows = system.query(
        "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
        "WHERE c.relname IN ('execution', 'step_execution') AND c.relkind = 'r'"
    )
    return int(rows[0][0])


def run_wait(
    system: System, workers: Workers, mongo_pids: list[int], parked: int, idle: float, producers: int
) -> WaitResult:
    """The long-wait workload on one system (workers running):

    1. an idle window with nothing parked (``idle`` seconds);
    2. park ``parked`` executions until one moment (``wake_at``), sent as fast as the
       producers go; ShiftFlow's are WAITING rows, the baselines' delayed messages held by
       their workers;
    3. the same idle window with them parked: the difference is what parked executions cost
       while nothing happens (CPU per second by component; for ShiftFlow also the bytes of
       its execution tables per parked execution and the rows PostgreSQL reads per second);
    4. at ``wake_at`` every one is due at once: woken per second = completed / (last done -
       ``wake_at``), and the delay of each behind ``wake_at``.
    """
    out = WaitResult(parked=parked)
    # An idle backend reports its counters only after 10 s (PGSTAT_IDLE_INTERVAL): the
    # warm-up's, and later the parking's, must land before a window starts.
    time.sleep(SETTLE_S)
    out.empty = idle_window(system, workers, mongo_pids, idle)
    size_before = _sf_parked_bytes(system) if system.key == "sf" else 0
    # Parking 1000 took ShiftFlow's workers about 13 s on a loaded 2-core box: leave room for
    # the parking and the loaded window before the wake-up time.
    system.wake_at = time.time() + parked / 40.0 + idle + SETTLE_S + 8.0
    system.begin_phase()
    start = time.monotonic()
    indices = list(range(parked))
    with ThreadPoolExecutor(producers, thread_name_prefix="bench-producer") as pool:
        list(pool.map(lambda k: system.trigger_many("wait", indices[k::producers]), range(producers)))
    out.send_per_s = parked / max(1e-6, time.monotonic() - start)
    if system.key == "sf":  # every execution reached its wait step (the baselines' are sent delayed)
        while time.time() < system.wake_at - 3 and system.query(
            "SELECT count(*) FROM step_execution WHERE status = 'WAITING'"
        )[0][0] < parked:
            time.sleep(0.2)
    time.sleep(SETTLE_S)  # the last messages reach the workers holding them; the counters land
    if system.key == "sf":
        out.bytes_per_row = (_sf_parked_bytes(system) - size_before) / parked
    left = system.wake_at - time.time() - 1.0
    out.loaded = idle_window(system, workers, mongo_pids, max(1.0, min(idle, left)))
    if time.time() > system.wake_at:
        print(f"  warning: {system.label}: parking took past the wake-up time; wake rate is understated")
    _wait_finished(system, workers, "wait", parked, max(30.0, parked / 20.0))
    timings = system.timings("wait")
    out.woken = len(timings)
    if timings:
        last = max(d for _, d in timings)
        out.wake_per_s = len(timings) / max(1e-6, last - system.wake_at)
        out.delays_ms = sorted(max(0.0, (d - system.wake_at) * 1000.0) for _, d in timings)
    return out


def report_wait(systems: list[System], results: dict[str, WaitResult]) -> None:
    """Print the wait workload's table."""
    print()
    print(f"{'system':<14} {'parked':>7} {'woken':>6} {'wake/s':>8} {'delay p50':>10} {'p99 ms':>8} {'send/s':>7}")
    for s in systems:
        r = results.get(s.key)
        if r is None:
            continue
        p50 = r.delays_ms[len(r.delays_ms) // 2] if r.delays_ms else float("nan")
        p99 = r.delays_ms[min(len(r.delays_ms) - 1, int(0.99 * len(r.delays_ms)))] if r.delays_ms else float("nan")
        print(
            f"{s.label:<14} {r.parked:>7} {r.woken:>6} {_fmt(r.wake_per_s):>8} {_fmt(p50, 0):>10} {_fmt(p99, 0):>8}"
            f" {_fmt(r.send_per_s, 0):>7}"
        )
    print("(delay = done - wake-up time; wake/s = woken / (last done - wake-up time))")
    print()
    print("CPU ms per second while idle: nothing parked -> N parked (postgres = every backend on the server):")
    keys = ["workers", "postgres", "rabbitmq", "mongo", "machine"]
    print(f"{'system':<14} " + " ".join(f"{k:>17}" for k in keys))
    for s in systems:
        r = results.get(s.key)
        if r is None:
            continue
        print(
            f"{s.label:<14} "
            + " ".join(f"{r.empty.cpu_per_s.get(k, 0):>7.1f} -> {r.loaded.cpu_per_s.get(k, 0):>6.1f}" for k in keys)
        )
    print()
    print("The system's own database per second while idle: nothing parked -> N parked:")
    for s in systems:
        r = results.get(s.key)
        if r is None:
            continue
        parts = [
            f"{k} {r.empty.pg_per_s.get(k, 0):.0f} -> {r.loaded.pg_per_s.get(k, 0):.0f}"
            for k in ("xact_commit", "tup_returned", "tup_fetched", "blks_hit")
        ]
        extra = f"; {r.bytes_per_row:,.0f} bytes of execution tables per parked execution" if s.key == "sf" else ""
        print(f"  {s.label:<14} " + ", ".join(parts) + extra)
    sf = results.get("sf")
    if sf is not None and sf.wake_per_s:
        for s in systems:
            other = results.get(s.key)
            if s.key != "sf" and other is not None and other.wake_per_s:
                print(f"ShiftFlow / {s.label:<13} wake/s: {sf.wake_per_s / other.wake_per_s:5.2f}x")


#: The components bench/capacity.py models (the rest, e.g. the echo service, are the work itself).
CAPACITY_COMPONENTS = ("workers", "postgres", "rabbitmq", "mongo")


def write_figures(
    path: Path, workload: str, thr: dict[str, Phase], docs: dict[str, int], runs: dict[str, int]
) -> None:
    """Merge the burst phase's figures for ``workload`` into ``path`` (bench/capacity.py's
    ``--figures``): ShiftFlow's CPU ms per execution by component, commits and Mongo
    documents per execution, and bare Dramatiq's CPU as ``bare_dramatiq``."""
    sf = thr.get("sf")
    if sf is None or not sf.cpu:
        print(f"  --figures-out: no ShiftFlow burst figures for {workload}; {path} unchanged")
        return
    figures: dict[str, Any] = {c: round(sf.cpu.get(c, 0.0), 3) for c in CAPACITY_COMPONENTS}
    if sf.pg.get("xact_commit"):
        figures["commits"] = round(sf.pg["xact_commit"], 2)
    if runs.get("sf"):
        figures["documents"] = round(docs.get("sf", 0) / runs["sf"], 2)
    dq = thr.get("dq")
    if dq is not None and dq.cpu:
        figures["bare_dramatiq"] = {c: round(dq.cpu.get(c, 0.0), 3) for c in CAPACITY_COMPONENTS}
    existing = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    existing[workload] = figures
    path.write_text(json.dumps(existing, indent=2) + "\n", encoding="utf-8")
    print(f"  --figures-out: {workload} written to {path} (bench/capacity.py --figures {path})")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--workload", default="cheap", choices=[*WORKLOADS, "all"], help="what to run (default cheap)"
    )
    parser.add_argument("--quick", action="store_true", help="fewer executions, shorter phases (< ~3 min each)")
    parser.add_argument("--systems", default="sf,dq,cel", help="comma-separated: sf, dq, cel (default all)")
    parser.add_argument("--processes", type=int, default=2, help="worker processes per system (default 2)")
    parser.add_argument("--threads", type=int, default=8, help="threads per worker process (default 8)")
    parser.add_argument(
        "--executions", type=int, default=0, help="phase 1 executions (default per workload: 2000, 1000, 150)"
    )
    parser.add_argument(
        "--producers", type=int, default=4, help="phase 1 producer threads, all systems (default 4)"
    )
    parser.add_argument("--rate", type=float, default=0.0, help="phase 2 rate per second (default: auto)")
    parser.add_argument("--seconds", type=float, default=0.0, help="phase 2 duration (default 10; quick 5)")
    parser.add_argument("--warmup", type=int, default=0, help="warm-up executions per start (default 30; quick 10)")
    parser.add_argument("--parked", type=int, default=0, help="wait: parked executions (default 3000; quick 1000)")
    parser.add_argument("--idle", type=float, default=0.0, help="wait: idle window seconds (default 15; quick 8)")
    parser.add_argument(
        "--budget", type=float, default=280.0, help="whole run limit in seconds (default 280)"
    )
    parser.add_argument("--log-dir", default="", help="keep the workers' logs there (default: a temporary folder)")
    parser.add_argument("--profile", action="store_true", help="then profile ShiftFlow (py-spy + a trace)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--figures-out", default="", metavar="FILE",
                        help="merge this workload's CPU by component into FILE, the input of bench/capacity.py")
    args = parser.parse_args(argv)
    unknown = set(args.systems.split(",")) - set(SYSTEMS)
    if unknown:
        parser.error(f"--systems: unknown {', '.join(sorted(unknown))}; expected sf, dq, cel")
    quick = int(args.quick)
    if args.workload in EXECUTIONS and not args.executions:
        args.executions = EXECUTIONS[args.workload][quick]
    args.seconds = args.seconds or (5.0 if quick else 10.0)
    args.warmup = args.warmup or (10 if quick else 30)
    args.parked = args.parked or (1000 if quick else 3000)
    args.idle = args.idle or (8.0 if quick else 15.0)
    return args


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_all(argv: list[str]) -> int:
    """``--workload all``: each workload in a process of its own (the baseline app modules
    read their broker at import, one workload per process)."""
    rest = [a for a in argv if not a.startswith("--workload")]
    if "--workload" in argv:
        at = argv.index("--workload")
        rest = argv[:at] + argv[at + 2 :]
    status = 0
    for workload in WORKLOADS:
        print(f"\n===== workload {workload} =====", flush=True)
        status = max(status, subprocess.call([sys.executable, __file__, *rest, "--workload", workload]))
    return status


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit status."""
    args = parse_args(argv)
    if args.workload == "all":
        return run_all(list(sys.argv[1:] if argv is None else argv))
    # Both explicitly: a shell starts background jobs with SIGINT ignored.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    budget = Budget(args.budget)
    wanted = [k for k in SYSTEMS if k in args.systems.split(",")]
    if "cel" in wanted and importlib.util.find_spec("celery") is None:
        print(
            "Celery is not installed (pip install -e '.[bench]'): the Celery chain is left out",
            file=sys.stderr,
        )
        wanted.remove("cel")
    headline = {
        "cheap": "transform → condition → transform; 1 PG row + 1 Mongo document per step",
        "outside": "three HTTP POSTs to a loopback echo service, one per step; 1 PG row + 1 Mongo document per step",
        "fanout": "for_each over 20 HTTP POSTs, then a join (Dramatiq group + callback, Celery chord)",
        "wait": f"{args.parked} executions parked on a durable timer, then all due at once",
    }[args.workload]
    print(f"bench_engine --workload {args.workload}: {headline}")
    print(
        f"config: {len(wanted)} systems x {args.processes} worker processes x {args.threads} threads on "
        f"{os.cpu_count()} CPUs; "
        + (
            f"phase 1 {args.executions} executions from {args.producers} producer threads; phase 2 {args.seconds:g} s; "
            if args.workload != "wait"
            else f"idle windows {args.idle:g} s; "
        )
        + f"load average before {os.getloadavg()[0]:.2f}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()))
    thr: dict[str, Phase] = {}
    lat: dict[str, Phase] = {}
    waits: dict[str, WaitResult] = {}
    rate = args.rate
    missed: list[str] = []
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory(prefix="sf-bench-") as tmp:
        try:
            res = Resources(stack)
            mongo_url, mongo = res.mongo()
            mongo_pids = [mongo.proc.pid] if mongo.proc else []
            echo_url = ""
            if args.workload in ("outside", "fanout"):
                echo_url, echo_pid = res.echo()
                engine_services.ECHO_PIDS[:] = [echo_pid]
            systems = [SYSTEMS[k](args.processes, args.threads, args.workload, echo_url) for k in wanted]
            for system in systems:
                system.setup(res, mongo_url)
                stack.callback(system.close)
            log_dir = Path(args.log_dir or tmp)
            if args.workload == "wait":
                for system in systems:
                    with running(system, log_dir, mongo_pids, args.warmup, budget) as workers:
                        waits[system.key] = w = run_wait(
                            system, workers, mongo_pids, args.parked, args.idle, args.producers
                        )
                    print(f"  {system.label}: {w.woken}/{w.parked} woken, {w.wake_per_s:.1f}/s", flush=True)
                report_wait(systems, waits)
                print(f"load average after {os.getloadavg()[0]:.2f}")
                return 0
            for system in systems:
                with running(system, log_dir, mongo_pids, args.warmup, budget) as workers:
                    thr[system.key] = p = run_phase(
                        system,
                        workers,
                        mongo_pids,
                        "thr",
                        args.executions,
                        None,
                        min(120.0, budget.left() - 60),
                        args.producers,
                    )
                time.sleep(0.5)  # the exited backends' counters land
                p.close_pg(system, args.warmup)
                print(
                    f"  phase 1 {system.label}: {p.completed}/{p.sent} in {p.send_seconds:.1f} s sending, "
                    f"{p.throughput:.1f} executions/s",
                    flush=True,
                )
            peaks = [p.throughput for p in thr.values() if p.throughput]
            if not rate:
                rate = float(max(10, min(100, round(0.3 * min(peaks or [33.0])))))
                if args.workload == "fanout":
                    rate = float(max(2, min(100, round(0.3 * min(peaks or [10.0])))))
            for system in systems:
                if budget.left() < args.seconds + 20:
                    print(f"  phase 2 {system.label}: skipped, the time budget is spent")
                    continue
                with running(system, log_dir, mongo_pids, args.warmup, budget) as workers:
                    lat[system.key] = p = run_phase(
                        system,
                        workers,
                        mongo_pids,
                        "lat",
                        int(rate * args.seconds),
                        rate,
                        min(args.seconds + 30, budget.left() - 5),
                    )
                print(
                    f"  phase 2 {system.label}: {p.completed}/{p.sent} at {rate:g}/s, p50 {_fmt(p.pct(0.5))} ms",
                    flush=True,
                )
            docs = {s.key: s.mongo_docs(mongo_url) for s in systems}
            missed = report(systems, thr, lat, rate, args.seconds, args.workload)
            runs = {
                s.key: sum(ph.completed for ph in (thr.get(s.key), lat.get(s.key)) if ph) + 2 * args.warmup
                for s in systems
            }
            print(
                "Mongo documents per execution: "
                + ", ".join(f"{s.label} {docs[s.key] / max(1, runs[s.key]):.1f}" for s in systems)
            )
            print(f"load average after {os.getloadavg()[0]:.2f}")
            if args.figures_out:
                write_figures(Path(args.figures_out), args.workload, thr, docs, runs)
            if args.profile and any(s.key == "sf" for s in systems):
                from bench.engine_profile import profile_shiftflow

                sf = next(s for s in systems if s.key == "sf")
                profile_shiftflow(
                    sf,
                    lambda: running(sf, log_dir, mongo_pids, args.warmup, Budget(120)),
                    args.executions,
                    log_dir,
                )
        except KeyboardInterrupt:
            print("\ninterrupted: cleaning up", file=sys.stderr)
            return 130
        except Exception as exc:
            print(f"bench_engine: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
    if missed:
        print(f"targets missed: {', '.join(missed)}")
    return 1 if (missed and args.strict) else 0


if __name__ == "__main__":
    sys.exit(main())
