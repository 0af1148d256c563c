"""Engine benchmark: one 3-step workflow through ShiftFlow, bare Dramatiq and a Celery chain.

    .venv/bin/python bench/bench_engine.py                # the comparison, about 2-3 minutes
    .venv/bin/python bench/bench_engine.py --profile      # then where ShiftFlow's time goes

The workflow is transform → condition → transform (cheap steps, no outside calls); every
step writes one row to PostgreSQL and one log document to the MongoDB-wire store, so the
comparison measures the engines. All three run on the same RabbitMQ, PostgreSQL and
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
import math
import os
import signal
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

from bench.engine_services import (  # noqa: E402 - after the path fix above
    CpuSnapshot,
    Resources,
    Workers,
    cpu_ms_per_execution,
    cpu_snapshot,
    versions,
)
from bench.engine_systems import SYSTEMS, System  # noqa: E402

TARGET_VS_DRAMATIQ, TARGET_VS_CELERY, TARGET_P50_MS, TARGET_P99_MS = 1.5, 2.0, 15.0, 40.0
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
    timed_out: bool = False

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


@contextlib.contextmanager
def running(system: System, log_dir: Path, mongo_pids: list[int], warmup: int, budget: Budget) -> Any:
    """Start the system's workers, wait for a warm-up batch to finish, stop them on exit."""
    workers = system.workers(log_dir)
    # A new phase name per start: the same trigger ids again would be duplicates, finished at once.
    _starts[system.key] = _starts.get(system.key, 0) + 1
    warm = f"warm{_starts[system.key]}"
    try:
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


def report(
    systems: list[System], thr: dict[str, Phase], lat: dict[str, Phase], rate: float, seconds: float
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
    keys = ["workers", "postgres", "rabbitmq", "mongo", "bench", "machine"]
    print(f"{'system':<14} " + " ".join(f"{k:>9}" for k in keys) + f" {'busy':>6} {'alone/s':>8}")
    for s in systems:
        cpu = thr.get(s.key, Phase()).cpu
        if cpu:
            own = sum(cpu[k] for k in keys[:5])
            print(
                f"{s.label:<14} " + " ".join(f"{cpu[k]:>9.2f}" for k in keys) + f" {cpu['utilisation']:>6.0%}"
                f" {(os.cpu_count() or 1) * 1000.0 / max(own, 1e-6):>8.0f}"
            )
    print(
        "(machine = every process on the box: well above the sum when others load it; alone/s = CPUs x 1000 /"
        " the five components' ms,\n the rate the box could sustain if this run had it to itself: the figure"
        " to compare when the load average is high)"
    )
    missed: list[str] = []
    sf = thr.get("sf")
    if sf is None:
        return missed
    print()
    for key, target in (("dq", TARGET_VS_DRAMATIQ), ("cel", TARGET_VS_CELERY)):
        other = thr.get(key)
        if other is None or not other.throughput:
            continue
        ratio = sf.throughput / other.throughput
        ok = ratio >= target
        label = SYSTEMS[key].label
        print(
            f"ShiftFlow / {label:<13} executions/s: {ratio:5.2f}x  (target >= {target:g}x: {'met' if ok else 'MISSED'})"
        )
        if not ok:
            missed.append(f"vs {label}")
    sf_lat = lat.get("sf")
    if sf_lat is not None:
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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--systems", default="sf,dq,cel", help="comma-separated: sf, dq, cel (default all)")
    parser.add_argument("--processes", type=int, default=2, help="worker processes per system (default 2)")
    parser.add_argument("--threads", type=int, default=8, help="threads per worker process (default 8)")
    parser.add_argument("--executions", type=int, default=2000, help="phase 1 executions (default 2000)")
    parser.add_argument(
        "--producers", type=int, default=4, help="phase 1 producer threads, all systems (default 4)"
    )
    parser.add_argument("--rate", type=float, default=0.0, help="phase 2 rate per second (default: auto)")
    parser.add_argument("--seconds", type=float, default=10.0, help="phase 2 duration (default 10)")
    parser.add_argument("--warmup", type=int, default=30, help="warm-up executions per start (default 30)")
    parser.add_argument(
        "--budget", type=float, default=280.0, help="whole run limit in seconds (default 280)"
    )
    parser.add_argument("--profile", action="store_true", help="then profile ShiftFlow (py-spy + a trace)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    unknown = set(args.systems.split(",")) - set(SYSTEMS)
    if unknown:
        parser.error(f"--systems: unknown {', '.join(sorted(unknown))}; expected sf, dq, cel")
    return args


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit status."""
    args = parse_args(argv)
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
    systems = [SYSTEMS[k](args.processes, args.threads) for k in wanted]
    print("bench_engine: transform → condition → transform; 1 PG row + 1 Mongo document per step")
    print(
        f"config: {len(systems)} systems x {args.processes} worker processes x {args.threads} threads on "
        f"{os.cpu_count()} CPUs; phase 1 {args.executions} executions from {args.producers} producer threads; "
        f"phase 2 {args.seconds:g} s; "
        f"load average before {os.getloadavg()[0]:.2f}"
    )
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()))
    thr: dict[str, Phase] = {}
    lat: dict[str, Phase] = {}
    rate = args.rate
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory(prefix="sf-bench-") as tmp:
        try:
            res = Resources(stack)
            mongo_url, mongo = res.mongo()
            mongo_pids = [mongo.proc.pid] if mongo.proc else []
            for system in systems:
                system.setup(res, mongo_url)
                stack.callback(system.close)
            log_dir = Path(tmp)
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
                print(
                    f"  phase 1 {system.label}: {p.completed}/{p.sent} in {p.send_seconds:.1f} s sending, "
                    f"{p.throughput:.1f} executions/s",
                    flush=True,
                )
            peaks = [p.throughput for p in thr.values() if p.throughput]
            if not rate:
                rate = float(max(10, min(100, round(0.3 * min(peaks or [33.0])))))
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
            missed = report(systems, thr, lat, rate, args.seconds)
            runs = {
                s.key: sum(ph.completed for ph in (thr.get(s.key), lat.get(s.key)) if ph) + 2 * args.warmup
                for s in systems
            }
            print(
                "Mongo documents per execution: "
                + ", ".join(f"{s.label} {docs[s.key] / max(1, runs[s.key]):.1f}" for s in systems)
            )
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
