"""``shiftflow queues exporter`` and ``shiftflow pools plan``.

The exporter serves per-queue depth, consumers, arrival and delivery counters and the
oldest message's age (``consumers.queue_exporter``), and state gauges from PostgreSQL
(``consumers.state_metrics``: orders to reconcile, parked steps). The plan reads the same queue
numbers straight from RabbitMQ's management API (two samples ``--window`` seconds apart:
arrival rate, backlog, oldest age) and each pool's service time from its own metrics
endpoint (``shiftflow_message_duration_seconds``, the pool's ``metrics_port``), then
applies ``consumers.pool_plan``. It reads the processes directly, not Prometheus, so it
works on a stack without one and sees the queues as they are now.
"""

from __future__ import annotations

import argparse
import threading
import time
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from shiftflow.consumers.pool_plan import UTILISATION, QueueLoad, plan_pool
from shiftflow.consumers.pools import Pool, load_pools
from shiftflow.consumers.queue_exporter import QueueCollector, QueueSampler, management_from_amqp
from shiftflow.kernel.settings import Settings

#: Service time assumed for a queue whose pool has not processed a message yet.
DEFAULT_SERVICE_SECONDS = 1.0


def _sampler(settings: Settings, args: argparse.Namespace) -> QueueSampler:
    base, vhost, auth = management_from_amqp(settings.amqp_url)
    return QueueSampler(args.management_url or base, vhost, auth, interval=getattr(args, "interval", 1.0))


def _exporter(args: argparse.Namespace) -> int:
    from prometheus_client import CollectorRegistry, start_http_server

    settings = Settings.from_env()
    sampler = _sampler(settings, args)
    registry = CollectorRegistry()
    registry.register(QueueCollector(sampler))
    if not args.no_state:
        from shiftflow.consumers.state_metrics import StateCollector
        from shiftflow.kernel.db import bind_database

        bind_database(settings.database_url)
        registry.register(StateCollector())
    start_http_server(args.port, addr=args.host, registry=registry)
    print(f"queue exporter on http://{args.host}:{args.port}/metrics ({sampler.url})", flush=True)
    sampler.run(threading.Event())
    return 0


def service_seconds(text: str) -> dict[str, float]:
    """Mean seconds per message by queue, from a pool's exposition (its histogram's sum/count)."""
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "shiftflow_message_duration_seconds":
            continue
        for sample in family.samples:
            queue = sample.labels.get("queue", "")
            if sample.name.endswith("_sum"):
                sums[queue] = sums.get(queue, 0.0) + sample.value
            elif sample.name.endswith("_count"):
                counts[queue] = counts.get(queue, 0.0) + sample.value
    return {queue: sums.get(queue, 0.0) / count for queue, count in counts.items() if count > 0}


def _pool_service(pool: Pool, host: str) -> dict[str, float]:
    if not pool.metrics_port:
        return {}
    try:
        return service_seconds(httpx.get(f"http://{host}:{pool.metrics_port}/metrics", timeout=5).text)
    except httpx.HTTPError:
        return {}


def measure(sampler: QueueSampler, window: float) -> dict[str, tuple[float, float, float]]:
    """(arrival rate, backlog, oldest age) by queue, from two samples ``window`` seconds apart."""
    sampler.sample()
    _, first_at, first = sampler.snapshot()
    time.sleep(window)
    sampler.sample()
    up, now, last = sampler.snapshot()
    if not up:
        raise SystemExit("shiftflow pools plan: RabbitMQ's management API does not answer " + sampler.url)
    elapsed = max(1e-3, now - first_at)
    return {name: (max(0, state.published - first[name].published) / elapsed, float(state.ready),
                   state.oldest_age(now)) for name, state in last.items()}


def _plan(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    pools = load_pools(args.pools)
    queues = measure(_sampler(settings, args), args.window)
    print(f"target: oldest message under {args.target_age:g} s; threads {UTILISATION:.0%} busy; "
          f"rates over {args.window:g} s")
    changes: list[str] = []
    for pool in pools.values():
        service = _pool_service(pool, args.metrics_host)
        loads = {q: QueueLoad(queues[q][0], queues[q][1], service.get(q, args.service_seconds), queues[q][2])
                 for q in pool.queues if q in queues}
        plan = plan_pool(pool, loads, args.target_age)
        detail = ", ".join(f"{q}: {load.arrival_rate:.2f}/s in, {load.backlog:g} waiting, "
                           f"{load.service_seconds:.3f} s each" + ("" if q in service else " (assumed)")
                           + f", oldest {load.oldest_age:.0f} s" for q, load in loads.items())
        print(f"pool {pool.name}: needs {plan.threads_needed:g} threads -> {plan.processes} process(es) x "
              f"{plan.threads} threads (has {pool.processes}: {plan.change}); KEDA queue length per replica "
              f"{plan.queue_length_per_replica}\n  {detail}")
        if plan.change != "keep" or plan.queue_length_per_replica != pool.queue_length_per_replica:
            changes.append(f"  {pool.name}:\n    processes: {plan.processes}   # was {pool.processes}\n"
                           f"    queue_length_per_replica: {plan.queue_length_per_replica}   # was "
                           f"{pool.queue_length_per_replica or 'unset'} (KEDA, scripts/render_k8s_pools.py)")
    print("change in pools.yaml:" if changes else "pools.yaml: no change")
    for change in changes:
        print(change)
    return 0


def register(sub: Any) -> None:
    """Add ``queues`` and ``pools`` to the ``shiftflow`` parser."""
    parser = sub.add_parser("queues", help="the queue exporter (depth, consumers, oldest message age); "
                            "migrating the queues to another type")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = actions.add_parser("exporter", help="serve per-queue metrics read from RabbitMQ's management API",
                           description=__doc__)
    p.add_argument("--port", type=int, default=9199, help="metrics port (default 9199)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--management-url", help="RabbitMQ management API (default: the AMQP host, port 15672, "
                   "the AMQP URL's user and vhost)")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between samples (default 1)")
    p.add_argument("--no-state", action="store_true",
                   help="leave out the state gauges read from PostgreSQL (orders to reconcile, parked steps)")
    p.set_defaults(func=_exporter)
    from shiftflow.cli import queue_migrate

    queue_migrate.add_to(actions)

    parser = sub.add_parser("pools", help="size the worker pools from the queues' load")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    from shiftflow.consumers import pool_plan

    p = actions.add_parser(
        "plan", help="print the processes and threads each pool needs, and what to change in pools.yaml",
        description=(pool_plan.__doc__ or "") + "\n" + (__doc__ or ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--pools", default=None, help="pools YAML file (default: built-in: one pool, all queues)")
    p.add_argument("--target-age", type=float, default=60.0,
                   help="seconds the oldest message may wait (T; default 60)")
    p.add_argument("--window", type=float, default=10.0, help="seconds between the two samples (default 10)")
    p.add_argument("--service-seconds", type=float, default=DEFAULT_SERVICE_SECONDS,
                   help="service time assumed where a pool reports none yet (default 1)")
    p.add_argument("--metrics-host", default="127.0.0.1", help="host of the pools' metrics endpoints")
    p.add_argument("--management-url", help="RabbitMQ management API (default: from SHIFTFLOW_AMQP_URL)")
    p.set_defaults(func=_plan)
