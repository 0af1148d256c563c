"""Soak benchmark: worker memory over many messages of mixed cheap and outside-call steps.

    .venv/bin/python bench/bench_soak.py                     # 200,000 messages (about 25 minutes on 2 cores)
    .venv/bin/python bench/bench_soak.py --messages 20000    # a shorter run

One ShiftFlow worker pool (``--processes`` x ``--threads``, the timer loop on, as in
production) takes executions of two workflows in turn: the ``cheap`` workflow of
``bench_engine`` (three inline steps: one message per execution) and the ``outside`` one
(three ``http`` steps to the loopback echo service: four messages per execution, the
trigger and one per step). Triggers are sent in batches with at most ``--in-flight``
executions unfinished, so the broker's queues stay short and what grows is the workers,
not a backlog. Every ``--every`` seconds it samples the resident set size (VmRSS) of every
process of the pool (the dramatiq supervisor, its worker processes, the timer fork).

It prints the curve (total RSS of the worker processes against messages processed) at
its start, at the end of the warm-up (``--warmup-share`` of the messages, default 10 %),
in the middle and at the end, each process's RSS at those points, and the growth from the
end of the warm-up to the end. Target: at most 10 %. Exit 0 when the run
completed (``--strict``: 1 when the target is missed).
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import engine_services  # noqa: E402 - after the path fix above
from bench.engine_services import Resources, _descendants, _proc_table, cpu_ms_per_execution, cpu_snapshot  # noqa: E402
from bench.engine_systems import ShiftFlowSystem, definition  # noqa: E402

TARGET_GROWTH = 0.10
#: Messages per execution of each workflow (the trigger, plus one per step that is not inline).
MESSAGES = {"cheap": 1, "outside": 4}


class SoakSystem(ShiftFlowSystem):
    """ShiftFlow with both workflows applied; ``trigger_many`` alternates them."""

    def setup(self, res: Resources, mongo_url: str) -> None:
        """Apply the outside-call workflow (``super``) and the cheap one."""
        super().setup(res, mongo_url)
        from shiftflow.kernel.db import bind_database
        from shiftflow.models.manage import catalog

        db = bind_database(self.pg_url)
        try:
            workspace = catalog.ensure_workspace("bench")
            self.cheap_id = str(catalog.apply_definition(workspace, definition("cheap")).workflow.id)
        finally:
            with contextlib.suppress(Exception):
                db.close_all()  # type: ignore[attr-defined]

    def publish(self, first: int, count: int) -> None:
        """Trigger executions ``first`` .. ``first + count - 1``: even ones cheap, odd ones outside."""
        from shiftflow.kernel.batch_publisher import ConfirmedBatchPublisher
        from shiftflow.kernel.contracts import TriggerPayload
        from shiftflow.kernel.enqueue import Outgoing

        if not self._publishers:
            self._publishers.append(ConfirmedBatchPublisher(self.env["SHIFTFLOW_AMQP_URL"], self.broker))
        self._publishers[0].publish_all([
            Outgoing("triggers.start", TriggerPayload(
                workflow_id=self.cheap_id if i % 2 == 0 else self.workflow_id, dedup_key=f"soak-{i}",
                source="bench", data={"n": i}, received_at=time.time()))
            for i in range(first, first + count)
        ])

    def done(self) -> int:
        """Executions that reached an end."""
        return int(self.query("SELECT count(*) FROM execution WHERE completed_at IS NOT NULL")[0][0])


def messages_for(executions: int) -> int:
    """Messages the first ``executions`` executions make (alternating cheap, outside)."""
    cheap = (executions + 1) // 2
    return cheap * MESSAGES["cheap"] + (executions - cheap) * MESSAGES["outside"]


@dataclass
class Sample:
    """One RSS sample: when, messages processed so far, RSS (kB) per pid."""

    at: float
    messages: int
    rss: dict[int, int]

    def workers_kb(self, roots: set[int]) -> int:
        """Total RSS of the pool's processes, the supervisor(s) left out."""
        return sum(v for pid, v in self.rss.items() if pid not in roots)


def rss_kb(pid: int) -> int:
    """VmRSS of ``pid`` in kB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


#: glibc maps each thread arena's heap at an address aligned to its maximum size (64 MiB).
_ARENA_ALIGN = 64 * 1024 * 1024


def heap_breakdown(pid: int) -> dict[str, int]:
    """Resident kB of ``pid`` by kind of mapping: glibc's main arena (``[heap]``), its thread
    arenas (anonymous mappings at a 64 MiB-aligned address), other anonymous memory (Python's
    object arenas, large blocks, thread stacks) and files. Empty when it is gone."""
    kinds: dict[str, int] = {"main arena": 0, "thread arenas": 0, "other anonymous": 0, "files": 0}
    kind = ""
    try:
        lines = Path(f"/proc/{pid}/smaps").read_text().splitlines()
    except OSError:
        return {}
    for line in lines:
        head = line.split()
        if head and "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
            name = head[5] if len(head) > 5 else ""
            if name == "[heap]":
                kind = "main arena"
            elif name.startswith("/"):
                kind = "files"
            elif name:
                kind = ""
            else:
                kind = "thread arenas" if int(head[0].split("-")[0], 16) % _ARENA_ALIGN == 0 else "other anonymous"
        elif head and head[0] == "Rss:" and kind:
            kinds[kind] += int(head[1])
    return kinds


def pool_rss(roots: list[int]) -> dict[int, int]:
    """RSS per process of the pool (the roots and every descendant)."""
    return {pid: rss_kb(pid) for pid in sorted(_descendants(_proc_table(), roots))}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=200_000, help="messages to process (default 200,000)")
    parser.add_argument("--processes", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--threads", type=int, default=8, help="threads per worker process (default 8)")
    parser.add_argument("--in-flight", type=int, default=300, help="unfinished executions at most (default 300)")
    parser.add_argument("--every", type=float, default=2.0, help="seconds between RSS samples (default 2)")
    parser.add_argument("--warmup-share", type=float, default=0.10, help="warm-up share of the messages (0.10)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when the growth target is missed")
    parser.add_argument("--tracemalloc-dir", default="", help="worker processes write tracemalloc snapshots here "
                        "(SHIFTFLOW_TRACEMALLOC_DIR; compare them with bench/memdiff.py); tracing slows them")
    parser.add_argument("--tracemalloc-seconds", type=float, default=30.0, help="seconds between snapshots (30)")
    parser.add_argument("--tracemalloc-frames", type=int, default=12,
                        help="frames per traceback (12); 0: no tracing, only RSS, object counts and the Mongo backlog")
    return parser.parse_args(argv)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _at(samples: list[Sample], messages: float) -> Sample:
    return min(samples, key=lambda s: abs(s.messages - messages))


def report(samples: list[Sample], roots: set[int], total: int, warmup: int) -> float:
    """Print the curve's points and the growth after warm-up; return the growth (0.05 = 5 %)."""
    first = next((s for s in samples if s.messages > 0), samples[0])  # the pool has booted
    points = [("start", first), ("warm-up end", _at(samples, warmup)),
              ("middle", _at(samples, (warmup + total) / 2)), ("end", samples[-1])]
    pids = sorted({pid for _, s in points for pid in s.rss})
    print()
    print(f"{'point':<12} {'messages':>9} {'seconds':>8} {'workers MB':>11}  " + " ".join(f"{p:>9}" for p in pids))
    for name, s in points:
        print(
            f"{name:<12} {s.messages:>9,} {s.at - first.at:>8.0f} {s.workers_kb(roots) / 1024:>11.1f}  "
            + " ".join(f"{s.rss.get(p, 0) / 1024:>9.1f}" for p in pids)
        )
    print("(per-process columns: RSS in MB by pid; the supervisor, " + ", ".join(map(str, sorted(roots)))
          + ", is left out of 'workers MB')")
    base, end = _at(samples, warmup), samples[-1]
    growth = end.workers_kb(roots) / max(1, base.workers_kb(roots)) - 1
    per = []
    for pid in pids:
        if pid in roots or not base.rss.get(pid) or not end.rss.get(pid):
            continue
        per.append(f"{pid} {end.rss[pid] / base.rss[pid] - 1:+.1%}")
    middle = _at(samples, (warmup + total) / 2)
    print(f"second half ({middle.messages:,} -> {end.messages:,} messages): "
          f"{end.workers_kb(roots) / max(1, middle.workers_kb(roots)) - 1:+.1%}")
    print(f"growth after warm-up ({base.messages:,} -> {end.messages:,} messages): {growth:+.1%} "
          f"(target <= {TARGET_GROWTH:.0%}: {'met' if growth <= TARGET_GROWTH else 'MISSED'}); per process: "
          + ", ".join(per))
    return growth


def main(argv: list[str] | None = None) -> int:
    """Run the soak; returns the exit status."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    executions = 0
    while messages_for(executions) < args.messages:
        executions += 1
    warmup = int(args.messages * args.warmup_share)
    import os

    print(f"bench_soak: {args.messages:,} messages ({executions:,} executions, cheap and outside-call in turn) "
          f"through {args.processes} worker processes x {args.threads} threads; at most {args.in_flight} in flight; "
          f"load average before {os.getloadavg()[0]:.2f}; MALLOC_ARENA_MAX={os.environ.get('MALLOC_ARENA_MAX', '')!r}; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    samples: list[Sample] = []
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory(prefix="sf-soak-") as tmp:
        try:
            res = Resources(stack)
            mongo_url, mongo = res.mongo()
            echo_url, echo_pid = res.echo()
            engine_services.ECHO_PIDS[:] = [echo_pid]
            system = SoakSystem(args.processes, args.threads, "outside", echo_url)
            system.setup(res, mongo_url)
            if args.tracemalloc_dir:
                system.env["SHIFTFLOW_TRACEMALLOC_DIR"] = str(Path(args.tracemalloc_dir).resolve())
                system.env["SHIFTFLOW_TRACEMALLOC_SECONDS"] = str(args.tracemalloc_seconds)
                system.env["SHIFTFLOW_TRACEMALLOC_FRAMES"] = str(args.tracemalloc_frames)
            stack.callback(system.close)
            workers = system.workers(Path(tmp))
            workers.start()
            stack.callback(workers.stop)
            system.begin_phase()
            roots = set(workers.pids())
            mongo_pids = [mongo.proc.pid] if mongo.proc else []
            before = cpu_snapshot(workers.pids(), mongo_pids)
            sent = done = 0
            next_sample = time.monotonic()
            last_print = time.monotonic()
            while done < executions:
                workers.check_alive()
                if sent < executions and sent - done < args.in_flight:
                    batch = min(50, executions - sent, args.in_flight - (sent - done))
                    system.publish(sent, batch)
                    sent += batch
                if time.monotonic() >= next_sample:
                    done = system.done()
                    samples.append(Sample(time.time(), messages_for(done), pool_rss(workers.pids())))
                    next_sample = time.monotonic() + args.every
                    if time.monotonic() - last_print > 30:
                        print(f"  {samples[-1].messages:,} messages, workers "
                              f"{samples[-1].workers_kb(roots) / 1024:.0f} MB", flush=True)
                        last_print = time.monotonic()
                elif sent - done >= args.in_flight or sent >= executions:
                    time.sleep(0.1)
                    done = system.done()
            samples.append(Sample(time.time(), messages_for(done), pool_rss(workers.pids())))
            after = cpu_snapshot(workers.pids(), mongo_pids)
            growth = report(samples, roots, args.messages, warmup)
            for pid in sorted(samples[-1].rss):
                if pid not in roots and (kinds := heap_breakdown(pid)):
                    print(f"  {pid} resident MB at the end: " + ", ".join(f"{k} {v / 1024:.1f}" for k, v in kinds.items()))
            cpu = cpu_ms_per_execution(before, after, executions)
            spent = samples[-1].at - samples[0].at
            print(f"{executions / spent:.1f} executions/s, {args.messages / spent:.0f} messages/s; CPU ms per "
                  "execution: " + ", ".join(f"{k} {cpu[k]:.2f}" for k in ("workers", "postgres", "rabbitmq",
                                                                            "mongo", "echo")))
            print(f"load average after {os.getloadavg()[0]:.2f}")
        except KeyboardInterrupt:
            print("\ninterrupted: cleaning up", file=sys.stderr)
            return 130
        except Exception as exc:
            print(f"bench_soak: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
    return 1 if (args.strict and growth > TARGET_GROWTH) else 0


if __name__ == "__main__":
    sys.exit(main())
