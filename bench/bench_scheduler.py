"""Scheduler: fire lag and double fires with 10,000 schedules and scheduler replicas.

One run, one machine. A fresh PostgreSQL database and RabbitMQ vhost get ``--schedules``
interval schedules (default 10,000 every ``--every`` seconds). ``--phase spread`` gives
them evenly spread phases (a steady ``schedules / every`` fires per second);
``--phase aligned`` gives them all the same phase (every slot is a burst of 10,000 fires
due in the same instant: the thundering herd of ``0 * * * *``).

Two measurements of ``--seconds`` each, by real ``shiftflow scheduler run`` processes:

1. **baseline**: one replica;
2. **replicas**: ``--replicas`` replicas (default 2) at once.

A consumer in this process reads the ``triggers`` queue as messages arrive and records,
per fire, the lag from the slot's due time to its arrival (an upper bound of the
publish lag: it includes the delivery to the consumer), and counts dedup keys seen more
than once (double fires) and slots inside the window that never arrived (lost).

Prints fires/s, lag p50/p99/max, double fires and lost slots for each, and the ratio of
the replicas' p99 to the baseline's. Targets (issue 5): p99 <= 1 s, 0 double fires.
Exit status 1 on a double fire or a lost slot, not on a missed latency target (a shared
2-core machine varies).

Usage: ``.venv/bin/python bench/bench_scheduler.py [--schedules 10000] [--every 10]
[--phase spread|aligned] [--seconds 20] [--replicas 2]`` (about a minute in all).
Creates and removes its own database and vhost.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pika  # noqa: E402

from tests.support.ownership import OWNER, token  # noqa: E402 - after the path fix above
from tests.support.ports import free_port  # noqa: E402
from tests.support.postgres import PG_ADMIN_URL, drop_pg_database, migrate, pg_admin, with_database  # noqa: E402
from tests.support.rabbitmq import VhostAdmin  # noqa: E402

SHIFTFLOW = str(Path(sys.executable).with_name("shiftflow"))
PG_ADMIN = os.environ.get("SHIFTFLOW_TEST_PG_ADMIN_URL") or PG_ADMIN_URL
UTC = dt.UTC
#: Seconds the replicas get to start before the measured window opens.
WARMUP = 4.0
#: Longest wait after the window for its last slots to arrive (then they count as lost).
DRAIN = 30.0


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Consumer:
    """Reads the triggers queue in a thread; records (schedule, slot) -> arrival time."""

    def __init__(self, amqp_url: str) -> None:
        self.amqp_url = amqp_url
        self.arrivals: dict[str, float] = {}
        self.doubles = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        connection = pika.BlockingConnection(pika.URLParameters(self.amqp_url))
        channel = connection.channel()
        channel.basic_qos(prefetch_count=2000)

        def on_message(_ch: Any, _method: Any, _props: Any, body: bytes) -> None:
            now = time.time()
            key = json.loads(body)["kwargs"]["payload"]["dedup_key"]
            if key in self.arrivals:
                self.doubles += 1
            else:
                self.arrivals[key] = now

        channel.basic_consume("triggers", on_message, auto_ack=True)
        while not self.stop.is_set():
            connection.process_data_events(time_limit=0.1)
        connection.close()


def _setup(
    pg_url: str, amqp_url: str, count: int, every: int, aligned: bool
) -> tuple[list[str], dt.datetime]:
    """Insert the schedules; return their ids and the common start (first slots after it)."""
    from shiftflow.kernel.broker import build_broker
    from shiftflow.kernel.db import bind_database
    from shiftflow.kernel.settings import Settings
    from shiftflow.models.manage import catalog
    from shiftflow.models.tables.schedules import Schedule

    db = bind_database(pg_url)
    settings = Settings.from_env(
        {
            "SHIFTFLOW_AMQP_URL": amqp_url,
            "SHIFTFLOW_DATABASE_URL": pg_url,
            "SHIFTFLOW_MONGO_URL": "mongodb://unused",
            "SHIFTFLOW_METRICS_PORT": "0",
        }
    )
    broker = build_broker(settings, worker=False)
    broker.declare_queue("triggers", ensure=True)  # so the consumer can attach before any publish
    broker.close()
    workspace = catalog.ensure_workspace("bench")
    workflow = catalog.apply_definition(
        workspace,
        {
            "name": "bench",
            "trigger": {"type": "manual"},
            "steps": [{"id": "noop", "type": "transform", "with": {"output": {}}}],
        },
    ).workflow
    now = dt.datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    ids, rows = [], []
    for i in range(count):
        # Phases in milliseconds: spread evenly over the interval, or all the same.
        anchor = dt.datetime(2020, 1, 1) + dt.timedelta(
            milliseconds=0 if aligned else (i * every * 1000) // count
        )
        sid = uuid.uuid4()
        ids.append(str(sid))
        rows.append(
            {
                "id": sid,
                "workspace": workspace.id,
                "workflow": workflow.id,
                "key": f"b{i}",
                "kind": "INTERVAL",
                "interval_seconds": every,
                "start_at": anchor,
                "timezone": "UTC",
                "catch_up": "NONE",
                "overlap": "ALLOW",
                "next_fire_at": None,
                "created_at": now,
                "updated_at": now,
            }
        )
    with db.atomic():
        for start in range(0, len(rows), 1000):
            Schedule.insert_many(rows[start : start + 1000]).execute()
    db.close()
    return ids, dt.datetime.now(UTC)


def _arm(pg_url: str, after: dt.datetime) -> None:
    """Point every schedule's next_fire_at at its first slot after ``after``."""
    import psycopg2

    with psycopg2.connect(pg_url) as conn, conn.cursor() as cur:
        # Slot arithmetic in SQL: anchor + ceil((after - anchor) / every) * every.
        cur.execute(
            "UPDATE schedule SET is_active = true, pending_fire_at = NULL, next_fire_at = start_at + "
            "interval_seconds * interval '1 second' * "
            "ceil(extract(epoch from (%s::timestamp - start_at)) / interval_seconds)",
            (after.replace(tzinfo=None),),
        )


def _pause(pg_url: str) -> None:
    import psycopg2

    with psycopg2.connect(pg_url) as conn, conn.cursor() as cur:
        cur.execute("UPDATE schedule SET is_active = false")


def _slot(key: str) -> dt.datetime:
    """The slot of a dedup key ``schedule:{id}:{slot}Z``."""
    return dt.datetime.fromisoformat(key.split(":", 2)[2].rstrip("Z")).replace(tzinfo=UTC)


def _lag_histogram(urls: list[str]) -> tuple[dict[float, float], float]:
    """The replicas' ``shiftflow_schedule_fire_lag_seconds`` buckets, summed: ({le: count}, total)."""
    import httpx

    buckets: dict[float, float] = {}
    for url in urls:
        for line in httpx.get(url, timeout=5).text.splitlines():
            if line.startswith("shiftflow_schedule_fire_lag_seconds_bucket{"):
                le = line.split('le="', 1)[1].split('"', 1)[0]
                bound = float("inf") if le == "+Inf" else float(le)
                buckets[bound] = buckets.get(bound, 0.0) + float(line.split()[-1])
    return buckets, buckets.get(float("inf"), 0.0)


def _bucket_quantile(buckets: dict[float, float], total: float, q: float) -> float:
    """The upper bound of the histogram bucket holding quantile ``q``."""
    for bound in sorted(buckets):
        if total and buckets[bound] >= q * total:
            return bound
    return float("nan")


def _measure(
    name: str,
    replicas: int,
    env: dict[str, str],
    pg_url: str,
    amqp_url: str,
    seconds: float,
    every: int,
    count: int,
    logs: Path,
) -> dict[str, Any]:
    consumer = Consumer(amqp_url)
    consumer.thread.start()
    start = dt.datetime.now(UTC) + dt.timedelta(seconds=WARMUP)
    end = start + dt.timedelta(seconds=seconds)
    expected = count * int(seconds // every)  # slots in [start, end): exactly this many per schedule
    _arm(pg_url, start)
    ports = [free_port() for _ in range(replicas)]
    procs = [
        subprocess.Popen(
            [SHIFTFLOW, "scheduler", "run", "--no-polling", "--replica-name", f"{name}{i}"],
            env={**env, "SHIFTFLOW_SCHEDULER_METRICS_PORT": str(port)},
            stdout=open(logs / f"{name}{i}.log", "w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        for i, port in enumerate(ports)
    ]
    urls = [f"http://127.0.0.1:{port}/metrics" for port in ports]

    def in_window() -> int:
        lo, hi = start.timestamp(), end.timestamp()
        return sum(1 for key in list(consumer.arrivals) if lo <= _slot(key).timestamp() < hi)

    try:
        time.sleep(max(0.0, (end - dt.datetime.now(UTC)).total_seconds()))
        # Let the replicas finish the window (bounded), then read their own lag histograms.
        deadline = time.monotonic() + DRAIN
        while in_window() < expected and time.monotonic() < deadline:
            time.sleep(0.5)
        buckets, total = _lag_histogram(urls)
        _pause(pg_url)
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
    time.sleep(1.0)
    consumer.stop.set()
    consumer.thread.join(10)
    lags = []
    for key, arrived in consumer.arrivals.items():
        slot = _slot(key)
        if start <= slot < end:
            lags.append(arrived - slot.timestamp())
    return {
        "name": name,
        "replicas": replicas,
        "fires": len(lags),
        "fires_per_s": len(lags) / seconds,
        "p50": _percentile(lags, 0.50),
        "p99": _percentile(lags, 0.99),
        "max": max(lags, default=float("nan")),
        "mean": statistics.fmean(lags) if lags else float("nan"),
        "doubles": consumer.doubles,
        "lost": expected - len(lags),
        "hist_p99": _bucket_quantile(buckets, total, 0.99),
        "hist_p50": _bucket_quantile(buckets, total, 0.50),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--schedules", type=int, default=10_000)
    parser.add_argument("--every", type=int, default=10, help="interval of every schedule, seconds")
    parser.add_argument("--phase", choices=("spread", "aligned"), default="spread")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured window per run")
    parser.add_argument("--replicas", type=int, default=2)
    args = parser.parse_args()

    vhosts = VhostAdmin()
    name = f"sf_t_b{token()[:8]}_sched"
    with contextlib.ExitStack() as stack:
        with pg_admin(PG_ADMIN) as conn, conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
            cur.execute(f"COMMENT ON DATABASE \"{name}\" IS '{OWNER}'")
        stack.callback(drop_pg_database, PG_ADMIN, name)
        pg_url = with_database(PG_ADMIN, name)
        migrate(pg_url)
        vhosts.create(name)
        stack.callback(vhosts.delete, name)
        from tests.support.rabbitmq import amqp_url_for

        amqp_url = amqp_url_for(name)
        logs = Path(os.environ.get("TMPDIR", "/tmp")) / f"{name}-logs"
        logs.mkdir(exist_ok=True)
        _setup(pg_url, amqp_url, args.schedules, args.every, args.phase == "aligned")
        env = {
            **os.environ,
            "SHIFTFLOW_MODE": "production",
            "SHIFTFLOW_AMQP_URL": amqp_url,
            "SHIFTFLOW_DATABASE_URL": pg_url,
            "SHIFTFLOW_MONGO_URL": "mongodb://unused",
            "SHIFTFLOW_LOG_LEVEL": "WARNING",
        }
        print(
            f"{args.schedules} schedules every {args.every} s, {args.phase} phases "
            f"({args.schedules / args.every:,.0f} fires/s{' in bursts' if args.phase == 'aligned' else ''}); "
            f"{args.seconds:g} s measured per run",
            flush=True,
        )
        results = [
            _measure("baseline", 1, env, pg_url, amqp_url, args.seconds, args.every, args.schedules, logs),
            _measure(
                "replicas",
                args.replicas,
                env,
                pg_url,
                amqp_url,
                args.seconds,
                args.every,
                args.schedules,
                logs,
            ),
        ]
    for r in results:
        print(
            f"{r['name']:<9} replicas={r['replicas']}  fires={r['fires']:>7} ({r['fires_per_s']:,.0f}/s)  "
            f"lag at the consumer p50={r['p50'] * 1000:.0f} ms p99={r['p99'] * 1000:.0f} ms "
            f"max={r['max'] * 1000:.0f} ms  publish lag (replicas' histogram) p50<={r['hist_p50']:g} s "
            f"p99<={r['hist_p99']:g} s  double fires={r['doubles']}  lost={r['lost']}"
        )
    base, multi = results
    print(
        f"p99 ratio (replicas / baseline): {multi['p99'] / base['p99']:.2f}; target p99 <= 1000 ms: "
        f"{'met' if multi['p99'] <= 1.0 else 'MISSED'}; double fires: {multi['doubles'] + base['doubles']}"
    )
    return 1 if any(r["doubles"] or r["lost"] for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
