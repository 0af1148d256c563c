"""The ``shiftflow`` command: run the processes and drive the engine.

Every command reads settings from ``SHIFTFLOW_*`` (``shiftflow config`` shows them).
Exit codes: 0 success, 1 the operation failed, 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import logging
import os
import shutil
import sys
from collections.abc import Sequence
from typing import Any

from shiftflow.kernel.errors import DefinitionError, SettingsError, ShiftFlowError
from shiftflow.kernel.settings import Settings, configure
from shiftflow.models.manage.problems import InvalidInput

#: First-generation GC threshold of the serving processes (Python's default is 700).
GC_YOUNG_THRESHOLD = 10_000

#: Modules of ``shiftflow.cli`` that add subcommands; each has ``register(subparsers)``.
COMMAND_MODULES: tuple[str, ...] = (
    "engine", "scheduler", "sideshift", "keys", "ops", "secrets", "quotas", "effects", "fakes", "retention",
    "pools", "analytics", "tools", "timeline", "prompts", "tasks",
)


def _read_env_file(path: str) -> dict[str, str]:
    out: dict[str, str] = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                key, value = line.split("=", 1)
                out[key.strip()] = value.strip()
    return out


def settings_from_args(args: argparse.Namespace, *, dev: bool = False) -> Settings:
    env: dict[str, str] = dict(os.environ)
    if getattr(args, "dev_dir", None):
        dev_dir = os.path.abspath(args.dev_dir)
        path = os.path.join(dev_dir, "dev.env")
        if not os.path.exists(path):
            raise SettingsError(f"{path} does not exist: start dev mode first with 'make run'")
        env.update(_read_env_file(path))
        # The data lives in the directory named, whatever directory this command runs in
        # (a dev.env of an older version held paths relative to where `make run` ran).
        env["SHIFTFLOW_DATA_DIR"] = dev_dir
        if env.get("SHIFTFLOW_DATABASE_URL", "").startswith("sqlite:"):
            env["SHIFTFLOW_DATABASE_URL"] = f"sqlite:///{os.path.join(dev_dir, 'shiftflow.db')}"
    if dev:
        env["SHIFTFLOW_MODE"] = "dev"
        if getattr(args, "port", None):
            env["SHIFTFLOW_INGRESS_PORT"] = str(args.port)
        if getattr(args, "host", None):
            env["SHIFTFLOW_INGRESS_HOST"] = args.host
    return configure(Settings.from_env(env))


def bind(settings: Settings) -> None:
    from shiftflow.kernel.db import bind_database

    bind_database(settings.database_url)


def cmd_config(args: argparse.Namespace) -> int:
    """Print the effective settings with secrets hidden, or every problem with them."""
    from shiftflow.kernel.settings import env_problems

    if not getattr(args, "dev_dir", None):
        problems = env_problems(os.environ)
        if problems:
            print("shiftflow: configuration errors:", file=sys.stderr)
            for problem in problems:
                print(f"  {problem}", file=sys.stderr)
            print(
                "Set them (see the README's Configuration table), or try everything without servers "
                "in dev mode: `make run` (SHIFTFLOW_MODE=dev needs none of them).",
                file=sys.stderr,
            )
            return 2
    print(json.dumps(settings_from_args(args).public_dict(), indent=2, default=str))
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    """Bring the database schema up to date."""
    settings = settings_from_args(args)
    from shiftflow.kernel.db import bind_database, is_postgres

    # SHIFTFLOW_DATABASE_DIRECT_URL when set: long DDL should not hold a pooler's server
    # connection (docs/scaling.md); the migration lock itself is transaction-scoped.
    db = bind_database(settings.migration_database_url)
    if is_postgres():
        from shiftflow.models.tables.migrations import pending, upgrade

        todo = pending(db)
        print(f"{len(todo)} migration(s) pending" + (": " + ", ".join(todo) if todo else ""))
        for name in upgrade(db):
            print(f"  applied {name}")
    else:
        from shiftflow.models.tables.registry import create_all

        create_all(db)
        print("SQLite schema created from the models (dev mode)")
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    """Validate a workflow definition and store it as a new version."""
    from shiftflow.kernel.definition import parse_file
    from shiftflow.models.manage import catalog
    from shiftflow.models.tables import webhook_secrets
    from shiftflow.models.tables.workflows import Webhook

    settings = settings_from_args(args)
    data = parse_file(args.file)
    bind(settings)
    workspace = catalog.ensure_workspace(args.workspace)
    try:
        applied = catalog.apply_definition(workspace, data, activate=not args.draft)
    except DefinitionError as exc:
        raise DefinitionError(f"{args.file}: {exc}") from None
    print(f"workflow {applied.workflow.name!r} ({applied.workflow.id}) version {applied.version}"
          + ("" if applied.changed else " (unchanged)"))
    if args.webhook:
        hook = Webhook.get_or_none(Webhook.workflow == applied.workflow.id)
        if hook is None:
            hook = catalog.create_webhook(applied.workflow, scheme=args.webhook)
            print(f"webhook secret (shown once): {webhook_secrets.reveal(hook)[0]}")
        base = settings.public_url or f"http://{settings.ingress_host}:{settings.ingress_port}"
        print(f"webhook URL: {base}/hooks/{hook.token}  (scheme {hook.scheme})")
    return 0


def _print_execution(detail: dict[str, Any], logs: list[dict[str, Any]] | None) -> None:
    print(f"execution {detail['id']}  {detail['status']}  workflow v{detail['workflow_version']}  "
          f"key {detail['dedup_key']}  {detail['duration_ms'] or '-'} ms")
    if detail["error"]:
        print(f"  error: {detail['error']}")
    print(f"  trigger: {json.dumps(detail['trigger'])}")
    for step in detail["steps"]:
        print(f"  step {step['step_id']:<16} {step['type']:<10} {step['status']:<10} "
              f"attempts={step['attempts']} {step['duration_ms'] or '-'} ms")
        if step["output"] is not None:
            print(f"      output: {json.dumps(step['output'])[:300]}")
        if step["error"]:
            print(f"      error: {step['error']}")
    if logs is not None:
        print(f"  log documents ({len(logs)}):")
        for doc in logs:
            print(f"    {doc['timestamp']:%H:%M:%S.%f} {doc['level']:<5} {doc.get('stepId') or '-':<16} {doc['message']}")


def _logs_for(settings: Settings, execution_id: str) -> list[dict[str, Any]] | None:
    if not settings.mongo_url:
        return None
    from shiftflow.kernel.mongo import EXECUTION_LOGS, MongoSink

    sink = MongoSink(settings.mongo_url, settings.mongo_db)
    try:
        cursor = sink.database()[EXECUTION_LOGS].find({"executionId": execution_id}).sort("timestamp", 1)
        return list(cursor)
    finally:
        sink.close(timeout=1)


def cmd_executions(args: argparse.Namespace) -> int:
    """List executions, or show one with its step timeline and log documents."""
    from shiftflow.models.manage import catalog

    settings = settings_from_args(args)
    bind(settings)
    if args.action == "list":
        for row in catalog.recent_executions(args.limit):
            print(f"{row.id}  {row.status:<10} {row.created_at:%Y-%m-%d %H:%M:%S}  {row.dedup_key}")
        return 0
    if not args.id and not args.latest:
        print("shiftflow: executions show needs an execution id (or its first hex digits) or --latest",
              file=sys.stderr)
        return 2
    from shiftflow.models.manage import queries

    if args.latest:
        row = catalog.latest_execution()
    else:
        from shiftflow.models.manage.access import Principal

        row = queries.get_execution(Principal.operator(None), args.id)
    detail = queries.detail_dict(row)
    if args.json:
        print(json.dumps(detail, indent=2, default=str))
    else:
        _print_execution(detail, _logs_for(settings, detail["id"]))
    return 0


def cmd_ingress(args: argparse.Namespace) -> int:
    """Run the webhook ingress and the management API (HTTP)."""
    import uvicorn

    from shiftflow.kernel.broker import build_broker, install
    from shiftflow.kernel.metrics import serve_registry
    from shiftflow.producers.app import create_app

    settings = settings_from_args(args)
    bind(settings)
    install(build_broker(settings, worker=False))
    print(f"ShiftFlow ingress on http://{settings.ingress_host}:{settings.ingress_port} "
          "(POST /hooks/{token}, GET /healthz, management API under /api/v1)", flush=True)
    if settings.ingress_metrics_port:
        # A listener of its own, not the public port (SHIFTFLOW_METRICS_HOST, loopback by default).
        serve_registry(settings.metrics_host, settings.ingress_metrics_port)
        print(f"  metrics on http://{settings.metrics_host}:{settings.ingress_metrics_port}/metrics", flush=True)
    app = create_app(settings)
    calm_garbage_collector()
    # Access lines are info-level: below that they would be built and dropped per request.
    uvicorn.run(app, host=settings.ingress_host, port=settings.ingress_port, log_level=args.log_level,
                access_log=args.log_level in ("debug", "info"))
    return 0


def calm_garbage_collector() -> None:
    """Keep Python's cyclic GC from pausing a long-running server for tens of milliseconds.

    In the ingress under load, every full (generation 2) collection walked every object of
    the imported modules and app, which was most of its p99 latency
    (docs/benchmarks.md#ingress-cpu). Objects alive after start-up live until exit, so
    ``gc.freeze`` moves them out of every later collection; the higher first threshold
    makes the young collections rarer (requests in flight survive them anyway).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def cmd_workers(args: argparse.Namespace) -> int:
    """Run a worker pool under its supervisor, which replaces a process that dies
    (``consumers.supervisor``); returns when the pool is stopped."""
    from shiftflow.consumers.pools import Pool, load_pools
    from shiftflow.consumers.supervisor import Supervisor
    from shiftflow.kernel.logsetup import configure_logging

    settings = settings_from_args(args)
    if args.queues:
        pool = Pool("cli", tuple(args.queues), args.processes or 1, args.threads or 8)
    else:
        pools = load_pools(args.pools)
        if args.pool not in pools:
            raise SettingsError(f"no pool named {args.pool!r}; pools: {', '.join(pools)}")
        pool = pools[args.pool]
        pool = Pool(pool.name, pool.queues, args.processes or pool.processes, args.threads or pool.threads,
                    pool.metrics_port)
    settings, scratch = _pool_metrics(settings, pool, args.metrics_port)
    print(f"pool {pool.name}: {pool.processes} process(es) x {pool.threads} threads on {', '.join(pool.queues)}; "
          + (f"metrics on http://{settings.metrics_host}:{settings.metrics_port}/metrics (and /healthz, /readyz)"
             if settings.metrics_port else "metrics off (metrics port 0)"),
          flush=True)
    configure_logging(settings.log_level, settings.log_repeat_seconds)
    logging.getLogger("shiftflow.workers").setLevel(logging.INFO)  # start, stop and replacement lines
    try:
        return Supervisor(pool, settings).run()
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)


def _pool_metrics(settings: Settings, pool: Any, flag_port: int | None) -> tuple[Settings, str | None]:
    """The pool's metrics port and directory, checked before anything starts.

    The port: ``--metrics-port``, else the pool's ``metrics_port``, else
    ``SHIFTFLOW_METRICS_PORT``. Without ``SHIFTFLOW_METRICS_DIR`` the pool gets a
    directory of its own for this run (returned, to be removed at the end): a pool started
    as the README shows serves its metrics with no more setup.

    Raises:
        SettingsError: the port is taken (another pool on this machine, most likely).
    """
    import dataclasses
    import socket
    import tempfile

    port = flag_port if flag_port is not None else pool.metrics_port
    if port is not None:
        settings = dataclasses.replace(settings, metrics_port=port)
    if not settings.metrics_port:
        return settings, None
    with socket.socket() as probe:
        try:
            probe.bind((settings.metrics_host, settings.metrics_port))
        except OSError as exc:
            raise SettingsError(
                f"pool {pool.name}: metrics port {settings.metrics_host}:{settings.metrics_port} is taken "
                f"({exc.strerror}); another pool on this machine? Give each pool its own port: metrics_port "
                "in the pools file, --metrics-port, or SHIFTFLOW_METRICS_PORT (0 turns the exporter off)"
            ) from None
    scratch = None
    if not settings.metrics_dir:
        scratch = tempfile.mkdtemp(prefix=f"shiftflow-metrics-{pool.name}-")
        settings = dataclasses.replace(settings, metrics_dir=scratch)
    else:
        # A fresh directory per pool start: files of another run's processes would be summed
        # forever. Within this run, a replaced process's counters stay (see the supervisor).
        shutil.rmtree(settings.metrics_dir, ignore_errors=True)
        os.makedirs(settings.metrics_dir, exist_ok=True)
    return configure(settings), scratch


def cmd_dev(args: argparse.Namespace) -> int:
    """Run everything in one process on embedded defaults."""
    from shiftflow.cli import dev

    dev.run(settings_from_args(args, dev=True))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand (core ones here, others from ``COMMAND_MODULES``)."""
    parser = argparse.ArgumentParser(
        prog="shiftflow",
        description="ShiftFlow: queue-centric workflow workers on RabbitMQ, PostgreSQL and Dramatiq. "
                    "Settings come from SHIFTFLOW_* environment variables (see README).",
    )
    parser.add_argument("--dev-dir", metavar="DIR",
                        help="talk to a running dev mode whose data directory is DIR (e.g. .shiftflow-dev)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "dev",
        help="run everything in one process on embedded defaults (make run)",
        description="Run ShiftFlow in one process with nothing installed: a SQLite file, an in-process "
        "broker with worker threads, an embedded MongoDB-wire store, the webhook ingress and the "
        "management API, the scheduler and poller, the timer loop and a local echo service. Loads the "
        "example workflow and prints a signed curl command, the dev workspace's API key and the "
        "commands to inspect what ran. Data stays in SHIFTFLOW_DATA_DIR (default .shiftflow-dev).",
    )
    p.add_argument("--port", type=int, help="port of the ingress and API (default 8080, SHIFTFLOW_INGRESS_PORT)")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1, SHIFTFLOW_INGRESS_HOST)")
    p.set_defaults(func=cmd_dev)

    p = sub.add_parser(
        "config",
        help="print the effective settings (secrets hidden)",
        description="Print every setting as this process would read it from SHIFTFLOW_* variables (or from "
        "a running dev mode with --dev-dir), passwords and keys hidden. With something missing or "
        "malformed it lists every problem, each naming its variable, and exits 2.",
    )
    p.set_defaults(func=cmd_config)

    p = sub.add_parser(
        "migrate",
        help="create or upgrade the database schema",
        description="Apply the pending PostgreSQL migrations in order, each once, each in its own "
        "transaction (safe to run twice, and from two processes at once). In dev mode (SQLite) it "
        "creates the tables from the models.",
    )
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("apply", help="validate a workflow definition (YAML/JSON) and store a new version")
    p.add_argument("file", help="the definition file")
    p.add_argument("--workspace", default="default", help="workspace slug (created if missing; default: default)")
    p.add_argument("--draft", action="store_true", help="store without activating")
    p.add_argument("--webhook", choices=("standard", "stripe", "github"),
                   help="also create a webhook endpoint with this signature scheme")
    p.set_defaults(func=cmd_apply)

    p = sub.add_parser("executions", help="list executions or show one with its steps and logs")
    p.add_argument("action", choices=("list", "show"))
    p.add_argument("id", nargs="?", help="execution id (for show)")
    p.add_argument("--latest", action="store_true", help="show the newest execution")
    p.add_argument("--limit", type=int, default=20, help="how many to list (default 20)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_executions)

    p = sub.add_parser("ingress", help="run the webhook ingress and the management API (/api/v1)")
    p.add_argument("--log-level", default="warning", choices=("debug", "info", "warning", "error"))
    p.set_defaults(func=cmd_ingress)

    p = sub.add_parser("workers", help="run a worker pool (a supervisor that replaces a dead process)")
    p.add_argument("--pool", default="default", help="pool name in the pools file (default: default)")
    p.add_argument("--pools", default=None, help="pools YAML file (default: built-in: one pool, all queues)")
    p.add_argument("--queues", nargs="+", help="consume these queues instead of a named pool")
    p.add_argument("--processes", type=int, help="override the pool's process count")
    p.add_argument("--threads", type=int, help="override the pool's threads per process")
    p.add_argument("--metrics-port", type=int, help="port of the pool's Prometheus exporter (default: the pool's "
                   "metrics_port, else SHIFTFLOW_METRICS_PORT; 0 = off)")
    p.set_defaults(func=cmd_workers)

    for name in COMMAND_MODULES:
        importlib.import_module(f"shiftflow.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``shiftflow`` command."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except SettingsError as exc:
        print(f"shiftflow: configuration error: {exc}", file=sys.stderr)
        return 2
    except DefinitionError as exc:
        print(f"shiftflow: invalid workflow definition: {exc}", file=sys.stderr)
        return 2
    except InvalidInput as exc:  # what a person typed: a usage error, naming the argument
        from shiftflow.cli.operator import usage_error

        return usage_error(exc.field, exc.reason)
    except FileNotFoundError as exc:
        print(f"shiftflow: {exc.strerror}: {exc.filename}", file=sys.stderr)
        return 2
    except ShiftFlowError as exc:
        print(f"shiftflow: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
