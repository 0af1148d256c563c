"""Capacity model: cores of each component for a load of executions per second.

Inputs are CPU milliseconds per execution by component (workers, PostgreSQL, RabbitMQ,
Mongo), as ``bench/bench_engine.py`` measures them (its ``cpu_ms_per_execution``: the
same keys), per workload. Defaults are the latest measured figures of docs/engine-cost.md
(the mean of its two runs). ``--figures FILE.json`` replaces them: ``{"outside": {"workers": 15.5,
"postgres": 8.7, "rabbitmq": 3.0, "mongo": 2.5, "messages": 4, "busiest_queue": 3,
"commits": 11.4, "bare_dramatiq": {"workers": 5.6, ...}}, ...}`` (any subset of workloads
and keys). ``bench_engine.py --figures-out FILE.json`` writes that file from its run
(ShiftFlow's and bare Dramatiq's CPU by component, commits and documents per execution), so

    .venv/bin/python bench/bench_engine.py --workload outside --quick --figures-out run.json
    .venv/bin/python bench/bench_engine.py --workload fanout --quick --figures-out run.json
    .venv/bin/python bench/capacity.py --figures run.json

gives tables that move when the engine gets faster.

For each workload and rate it prints the cores each component needs at a target
utilisation, the messages per second of the busiest queue, PostgreSQL's commits per
second, and which component saturates first: the ones that do not scale out by adding
machines (one PostgreSQL primary, one queue's leader process) against their ceilings
(``--pg-max-cores``, ``--queue-max-rate``). Then what changes the answer: fewer log
documents, partitioning executions by workspace across PostgreSQL primaries, read
replicas. Ratios against bare Dramatiq's measured CPU (same page, same runs) come last.

    .venv/bin/python bench/capacity.py                     # 1,000 and 10,000 executions/s
    .venv/bin/python bench/capacity.py --rates 500,5000 --utilisation 0.6
    .venv/bin/python bench/capacity.py --figures my-run.json --json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass, field, replace
from typing import Any

COMPONENTS = ("workers", "postgres", "rabbitmq", "mongo")


@dataclass(frozen=True)
class Workload:
    """CPU ms per execution by component, and what an execution moves."""

    name: str
    workers: float
    postgres: float
    rabbitmq: float
    mongo: float
    #: messages published and consumed per execution, all queues
    messages: float
    #: of which on the busiest queue (one queue's leader is one Erlang process)
    busiest_queue: float
    #: PostgreSQL commits per execution
    commits: float
    #: Mongo documents per execution
    documents: float
    #: what in these figures is estimated rather than measured
    estimated: tuple[str, ...] = field(default_factory=tuple)

    def cpu(self, component: str) -> float:
        """CPU ms per execution of ``component``."""
        return float(getattr(self, component))


#: docs/engine-cost.md, "After the lean step, on a quiet machine" (2026-12-06, --quick, the
#: mean of two runs at load average 0.7-2.7; ``bench_engine.py --figures-out`` writes these).
DEFAULTS: dict[str, Workload] = {
    # Three http steps; the chain runs on one tools message after the trigger.
    "outside": Workload("outside", workers=8.47, postgres=4.80, rabbitmq=0.89, mongo=2.94,
                        messages=2, busiest_queue=1, commits=8.15, documents=12.95),
    # Three inline steps in the trigger's message.
    "cheap": Workload("cheap", workers=2.26, postgres=0.70, rabbitmq=0.29, mongo=0.82,
                      messages=1, busiest_queue=1, commits=2.0, documents=7.3),
    # for_each over 20 http calls then a join: each item is a tools message of its own.
    "fanout": Workload("fanout", workers=87.0, postgres=36.5, rabbitmq=10.1, mongo=20.6,
                       messages=23, busiest_queue=21, commits=45.3, documents=67.75),
}

#: Bare Dramatiq doing the same work (same runs), for the ratios.
BASELINE: dict[str, dict[str, float]] = {
    "outside": {"workers": 5.15, "postgres": 0.54, "rabbitmq": 0.88, "mongo": 1.42},
    "cheap": {"workers": 2.27, "postgres": 0.51, "rabbitmq": 0.76, "mongo": 1.34},
    "fanout": {"workers": 45.9, "postgres": 4.9, "rabbitmq": 5.9, "mongo": 9.2},
}


@dataclass
class Need:
    """What one workload at one rate needs."""

    workload: str
    rate: float
    cores: dict[str, float]
    busiest_queue_rate: float
    commits_per_second: float
    documents_per_second: float
    ceilings: dict[str, float]
    saturates_first: str


def need(w: Workload, rate: float, *, utilisation: float, pg_max_cores: float, queue_max_rate: float,
         pg_partitions: int = 1) -> Need:
    """Cores per component for ``rate`` executions/s of ``w`` at ``utilisation``, and the
    rate at which each non-scaling part hits its ceiling."""
    cores = {c: rate * w.cpu(c) / 1000.0 / utilisation for c in COMPONENTS}
    # Workers and Mongo (sharded, or log batching) scale out; one PostgreSQL primary per
    # partition scales up to pg_max_cores; one queue's leader is one process (about one core).
    ceilings = {
        "postgres": pg_partitions * pg_max_cores * utilisation * 1000.0 / w.postgres if w.postgres else math.inf,
        "busiest queue": queue_max_rate / w.busiest_queue if w.busiest_queue else math.inf,
    }
    first = min(ceilings, key=lambda k: ceilings[k])
    return Need(w.name, rate, cores, rate * w.busiest_queue, rate * w.commits, rate * w.documents,
                ceilings, first)


def scenarios(w: Workload, partitions: int, read_share: float, documents_after: float) -> dict[str, Workload]:
    """The workload as each change would make it (PostgreSQL partitioning is a ceiling, not a cost)."""
    fewer_docs = documents_after / w.documents if w.documents else 1.0
    return {
        "as measured": w,
        f"log documents {w.documents:g} -> {documents_after:g} per execution": replace(
            w, mongo=w.mongo * fewer_docs, workers=w.workers - 0.1 * w.mongo * (1 - fewer_docs),
            documents=documents_after),
        f"read replicas take {read_share:.0%} of the primary's work": replace(w, postgres=w.postgres * (1 - read_share)),
        f"{partitions} PostgreSQL primaries, executions partitioned by workspace": w,
    }


def _fmt_rate(value: float) -> str:
    return "unbounded" if math.isinf(value) else f"{value:,.0f}/s"


def report(args: argparse.Namespace, workloads: dict[str, Workload]) -> list[dict[str, Any]]:
    """Print the tables; return the rows (for ``--json``)."""
    rows: list[dict[str, Any]] = []
    print(f"Target utilisation {args.utilisation:.0%}; PostgreSQL primary up to {args.pg_max_cores:g} cores; "
          f"one queue up to {args.queue_max_rate:,.0f} messages/s.\n")
    for w in workloads.values():
        note = f" (estimated: {', '.join(w.estimated)})" if w.estimated else ""
        print(f"## {w.name}: CPU ms per execution " + ", ".join(f"{c} {w.cpu(c):g}" for c in COMPONENTS) + note)
        print(f"{'executions/s':>12} | " + " | ".join(f"{c + ' cores':>14}" for c in COMPONENTS)
              + f" | {'busiest queue':>14} | {'PG commits/s':>12} | saturates first (its ceiling)")
        for rate in args.rates:
            n = need(w, rate, utilisation=args.utilisation, pg_max_cores=args.pg_max_cores,
                     queue_max_rate=args.queue_max_rate)
            over = "  OVER" if rate > n.ceilings[n.saturates_first] else ""
            print(f"{rate:>12,.0f} | " + " | ".join(f"{n.cores[c]:>14,.1f}" for c in COMPONENTS)
                  + f" | {n.busiest_queue_rate:>12,.0f}/s | {n.commits_per_second:>12,.0f} | "
                  f"{n.saturates_first} at {_fmt_rate(n.ceilings[n.saturates_first])}{over}")
            rows.append(asdict(n))
        print("what changes the answer (ceiling of the first part to saturate, and PostgreSQL cores at "
              f"{args.rates[-1]:,.0f}/s):")
        for label, changed in scenarios(w, args.partitions, args.read_share, args.documents_after.get(w.name, w.documents)).items():
            parts = args.partitions if "primaries" in label else 1
            n = need(changed, args.rates[-1], utilisation=args.utilisation, pg_max_cores=args.pg_max_cores,
                     queue_max_rate=args.queue_max_rate, pg_partitions=parts)
            print(f"  - {label}: {n.saturates_first} first at {_fmt_rate(n.ceilings[n.saturates_first])}; "
                  f"PostgreSQL {n.cores['postgres'] / parts:,.1f} cores per primary, Mongo {n.cores['mongo']:,.1f}")
        base = args.baselines.get(w.name)
        if base:
            ratios = ", ".join(f"{c} {w.cpu(c) / base[c]:.1f}x" for c in COMPONENTS if base.get(c))
            print(f"ShiftFlow / bare Dramatiq CPU per execution (same runs): {ratios}")
        print()
    return rows


def read_figures(path: str) -> dict[str, dict[str, Any]]:
    """The JSON of ``path`` (workload -> key -> value), with a message naming what is wrong."""
    try:
        with open(path, encoding="utf-8") as handle:
            given = json.load(handle)
    except (OSError, json.JSONDecodeError) as exc:
        raise SystemExit(f"capacity: --figures {path}: {exc}") from None
    if not isinstance(given, dict) or not all(isinstance(v, dict) for v in given.values()):
        raise SystemExit(f"capacity: --figures {path}: expected an object of workload -> figures")
    return given


def load_baselines(given: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """The bare Dramatiq figures, with what ``given`` measured replacing the defaults."""
    out = dict(BASELINE)
    for name, values in given.items():
        if isinstance(values.get("bare_dramatiq"), dict):
            out[name] = {k: float(v) for k, v in values["bare_dramatiq"].items() if k in COMPONENTS}
    return out


def load_figures(given: dict[str, dict[str, Any]]) -> dict[str, Workload]:
    """The defaults with what ``given`` (workload -> component -> ms) replaces."""
    out = dict(DEFAULTS)
    for name, values in given.items():
        known = {k: float(v) for k, v in values.items() if k in Workload.__dataclass_fields__ and k != "name"}
        base = out.get(name, Workload(name, 0, 0, 0, 0, messages=1, busiest_queue=1, commits=0, documents=0))
        out[name] = replace(base, **known, estimated=tuple(e for e in base.estimated if e not in known))
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="1000,10000", help="executions/s, comma-separated (default 1000,10000)")
    parser.add_argument("--workloads", default="cheap,outside,fanout", help="which workloads (default all three)")
    parser.add_argument("--figures", default="", help="JSON of CPU ms per execution by workload and component")
    parser.add_argument("--utilisation", type=float, default=0.7, help="target busy share of a core (default 0.7)")
    parser.add_argument("--pg-max-cores", type=float, default=64, help="cores of the largest PostgreSQL primary")
    parser.add_argument("--queue-max-rate", type=float, default=20_000,
                        help="messages/s one queue takes with confirms and acks (default 20,000; quorum lower)")
    parser.add_argument("--partitions", type=int, default=4, help="PostgreSQL primaries when partitioned (default 4)")
    parser.add_argument("--read-share", type=float, default=0.1,
                        help="share of PostgreSQL work read replicas could take (default 0.1: API and "
                             "analytics reads; the engine reads inside its write transactions)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON after the tables")
    args = parser.parse_args(argv)
    args.rates = [float(r) for r in args.rates.split(",") if r.strip()]
    if not args.rates or min(args.rates) <= 0:
        parser.error("--rates: expected positive numbers")
    if not 0 < args.utilisation <= 1:
        parser.error("--utilisation: expected a share from 0 (excluded) to 1")
    # One document per step outcome (docs/engine-cost.md, "What is avoidable").
    args.documents_after = {"outside": 7.0, "cheap": 4.0, "fanout": 25.0}
    return args


def main(argv: list[str] | None = None) -> int:
    """Print the capacity tables."""
    args = parse_args(argv)
    given = read_figures(args.figures) if args.figures else {}
    workloads = load_figures(given)
    args.baselines = load_baselines(given)
    chosen = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = [w for w in chosen if w not in workloads]
    if unknown:
        print(f"capacity: unknown workload {', '.join(unknown)}; known: {', '.join(workloads)}", file=sys.stderr)
        return 2
    rows = report(args, {w: workloads[w] for w in chosen})
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
