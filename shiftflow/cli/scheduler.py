"""Scheduler commands: ``shiftflow scheduler run`` and ``shiftflow schedules add|list|pause|resume|remove``.

Any number of ``scheduler run`` processes may run against one database and broker: they
split the due schedules between them (``SELECT ... FOR UPDATE SKIP LOCKED``) and every
slot fires once (``producers.scheduler.loop``). Each process also polls the polling triggers
(``producers.poller.loop``) and keeps the schedules that definitions declare in step.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import signal
import socket
import sys
import threading
import uuid
from collections.abc import Callable
from typing import Any

from shiftflow.cli.main import bind, settings_from_args
from shiftflow.kernel.cron import ScheduleError
from shiftflow.kernel.errors import SettingsError

log = logging.getLogger("shiftflow.scheduler")
_FLAGS = (
    "cron",
    "every",
    "at",
    "timezone",
    "catch-up",
    "overlap",
    "start-at",
    "end-at",
    "jitter",
    "key",
    "workflow",
)
#: Positional arguments a message may name.
_ARGUMENTS = {"id": "ID"}


def _usage_error(exc: ScheduleError) -> int:
    """Print a validation error naming the flag (``--cron: minute: 61 is out of range 0-59``); exit 2."""
    text = str(exc)
    field = text.split(":", 1)[0]
    if field in _ARGUMENTS:
        text = _ARGUMENTS[field] + text[len(field):]
    print(f"shiftflow: {'--' if field in _FLAGS else ''}{text}", file=sys.stderr)
    return 2


def _guard(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except ScheduleError as exc:
            return _usage_error(exc)

    run.__doc__ = func.__doc__
    return run


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# --------------------------------------------------------------------------- scheduler run


def stop_on_signals(stop: threading.Event) -> None:
    """Set ``stop`` on SIGTERM and SIGINT, safely.

    A Python signal handler runs in the main thread between two bytecodes, possibly while
    that thread holds ``stop``'s internal lock inside ``stop.wait()``; calling
    ``stop.set()`` there would wait for that same lock forever (a replica that ignored
    SIGTERM until SIGKILL). The handler hands ``set`` to a short-lived thread instead,
    which takes the lock once the main thread lets go of it.
    """

    def handler(signum: int, frame: Any) -> None:
        threading.Thread(target=stop.set, name="stop-signal", daemon=True).start()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)


def _run(args: argparse.Namespace) -> int:
    """Run one scheduler replica until SIGTERM or SIGINT."""
    from prometheus_client import start_http_server

    from shiftflow.kernel.batch_publisher import ConfirmedBatchPublisher
    from shiftflow.kernel.broker import build_broker, install
    from shiftflow.producers.scheduler.replica import run_replica

    settings = settings_from_args(args)
    if settings.dev:
        raise SettingsError(
            "dev mode runs its scheduler inside `shiftflow dev` (make run): schedules you add fire there "
            "while it runs. A separate `scheduler run` needs SHIFTFLOW_MODE=production and SHIFTFLOW_AMQP_URL"
        )
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    bind(settings)
    broker = install(build_broker(settings, worker=False))
    replica = args.replica_name or f"{socket.gethostname()}-{os.getpid()}"
    if settings.scheduler_metrics_port:
        start_http_server(settings.scheduler_metrics_port, addr=settings.metrics_host)
    stop = threading.Event()
    stop_on_signals(stop)
    timeout = settings.publish_timeout_seconds
    print(
        f"shiftflow scheduler {replica}: batch {settings.scheduler_batch_size}, tick "
        f"{settings.scheduler_tick_ms} ms, grace {settings.scheduler_misfire_grace_seconds} s, polling "
        f"{'off' if args.no_polling else 'on'}, metrics "
        f"{settings.scheduler_metrics_port or 'off'}",
        flush=True,
    )
    run_replica(
        settings,
        lambda: ConfirmedBatchPublisher(settings.amqp_urls, broker, timeout=timeout),
        stop,
        polling=not args.no_polling,
    )
    print(f"shiftflow scheduler {replica}: stopped", flush=True)
    return 0


# --------------------------------------------------------------------------- schedules


def _workflow(args: argparse.Namespace) -> Any:
    from shiftflow.models.tables.tenancy import Workspace
    from shiftflow.models.tables.workflows import Workflow

    try:
        by_id = Workflow.get_or_none(Workflow.id == uuid.UUID(args.workflow))
    except ValueError:
        by_id = None
    if by_id is not None:
        return by_id
    workspace = Workspace.get_or_none(Workspace.slug == args.workspace)
    found = (
        None
        if workspace is None
        else Workflow.get_or_none((Workflow.workspace == workspace.id) & (Workflow.name == args.workflow))
    )
    if found is None:
        raise ScheduleError(f"workflow: no workflow {args.workflow!r} in workspace {args.workspace!r}")
    return found


def _schedule(args: argparse.Namespace) -> Any:
    from shiftflow.models.tables.schedules import Schedule

    try:
        row = Schedule.get_or_none(Schedule.id == uuid.UUID(args.id))
    except ValueError:
        row = None
    if row is None:
        raise ScheduleError(f"id: no schedule with id {args.id!r} (see `shiftflow schedules list`)")
    return row


def _describe(row: Any) -> dict[str, Any]:
    spec = {
        "CRON": row.cron_expression,
        "INTERVAL": f"every {row.interval_seconds}s",
        "ONCE": f"at {row.run_at.isoformat() if row.run_at else '-'}Z",
    }.get(row.kind, "?")
    return {
        "id": str(row.id),
        "workflow": row.workflow.name,
        "workflow_id": str(row.workflow_id),
        "key": row.key,
        "kind": row.kind,
        "spec": spec,
        "timezone": row.timezone,
        "catch_up": row.catch_up,
        "max_catch_up": row.max_catch_up,
        "overlap": row.overlap,
        "active": row.is_active,
        "next_fire_at": row.next_fire_at.isoformat() + "Z" if row.next_fire_at else None,
        "pending_fire_at": row.pending_fire_at.isoformat() + "Z" if row.pending_fire_at else None,
        "last_fired_at": row.last_fired_at.isoformat() + "Z" if row.last_fired_at else None,
        "fire_count": row.fire_count,
    }


def _add(args: argparse.Namespace) -> int:
    """Add a schedule to a workflow."""
    from shiftflow.producers.scheduler.config import add_schedule, build_config

    now = _now()
    config = build_config(
        cron=args.cron,
        every=args.every,
        at=args.at,
        timezone=args.timezone,
        catch_up=args.catch_up,
        overlap=args.overlap,
        start_at=args.start_at,
        end_at=args.end_at,
        jitter=args.jitter,
        now=now,
    )
    settings = settings_from_args(args)
    bind(settings)
    row = add_schedule(_workflow(args), config, key=args.key, now=now)
    info = _describe(row)
    if args.json:
        print(json.dumps(info))
        return 0
    print(
        f"schedule {info['id']} for {info['workflow']!r} ({info['spec']}, {info['timezone']}); "
        f"next fire {info['next_fire_at'] or 'never'}"
    )
    # A schedule is a row: it fires only while a scheduler runs against this database.
    where = (
        "while dev mode (`make run`) is running" if settings.dev
        else "while a `shiftflow scheduler run` replica is running against this database and broker"
    )
    print(f"it fires {where}", file=sys.stderr)
    return 0


def _list(args: argparse.Namespace) -> int:
    """List schedules (of one workflow with --workflow)."""
    from shiftflow.kernel.triggers import catch_up_text, overlap_text
    from shiftflow.models.tables.schedules import Schedule

    bind(settings_from_args(args))
    query = Schedule.select().order_by(Schedule.next_fire_at.asc(nulls="LAST"), Schedule.id)
    if args.workflow:
        query = query.where(Schedule.workflow == _workflow(args).id)
    rows = [_describe(row) for row in query.limit(args.limit)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        print(
            f"{r['id']}  {'active' if r['active'] else 'paused'}  {r['workflow']}/{r['key']}  {r['spec']} "
            f"({r['timezone']})  next {r['next_fire_at'] or '-'}  "
            f"catch-up {catch_up_text(r['catch_up'], r['max_catch_up'])}  "
            f"overlap {overlap_text(r['overlap'])}  fired {r['fire_count']}"
        )
    return 0


def _set_active(active: bool) -> Callable[[argparse.Namespace], int]:
    def command(args: argparse.Namespace) -> int:
        from shiftflow.producers.scheduler.config import set_active

        bind(settings_from_args(args))
        row = set_active(_schedule(args), active, now=_now())
        print(
            f"schedule {row.id} {'resumed; next fire ' + (_describe(row)['next_fire_at'] or 'never') if active else 'paused'}"
        )
        return 0

    command.__doc__ = "Resume a paused schedule." if active else "Pause a schedule."
    return command


def _remove(args: argparse.Namespace) -> int:
    """Delete a schedule."""
    bind(settings_from_args(args))
    row = _schedule(args)
    row.delete_instance()
    print(f"schedule {row.id} removed")
    return 0


def register(sub: Any) -> None:
    """Add ``scheduler`` and ``schedules`` to the ``shiftflow`` parser."""
    p = sub.add_parser("scheduler", help="run the scheduler (cron, intervals, one-off times, polling)")
    run = p.add_subparsers(dest="scheduler_command", required=True, metavar="ACTION")
    r = run.add_parser("run", help="run one scheduler replica (run as many as you like)")
    r.add_argument("--replica-name", help="name in logs (default: host-pid)")
    r.add_argument("--no-polling", action="store_true", help="do not poll polling triggers in this replica")
    r.set_defaults(func=_guard(_run))

    p = sub.add_parser("schedules", help="add, list, pause, resume or remove schedules")
    actions = p.add_subparsers(dest="schedules_command", required=True, metavar="ACTION")
    a = actions.add_parser("add", help="add a schedule to a workflow")
    a.add_argument("--workflow", required=True, help="workflow name (in --workspace) or id")
    a.add_argument("--workspace", default="default", help="workspace slug (default: default)")
    a.add_argument(
        "--key", default="default", help="name of this schedule within the workflow (default: default)"
    )
    when = a.add_mutually_exclusive_group(required=True)
    when.add_argument("--cron", help="cron expression: 5 fields, 6 with seconds first, or @hourly/@daily/...")
    when.add_argument("--every", help="interval: 90, 90s, 5m, 1h30m, 2d")
    when.add_argument("--at", help="one-off time, ISO 8601 (local to --timezone unless it has an offset)")
    a.add_argument("--timezone", default="UTC", help="IANA time zone of the cron times (default UTC)")
    a.add_argument(
        "--catch-up",
        default="once",
        help="after downtime: skip, once (one fire for the missed period; default), all, or N "
        "(fire at most the N most recent missed slots)",
    )
    a.add_argument(
        "--overlap",
        default="allow",
        help="while the previous run is going: allow (default), skip, buffer-one",
    )
    a.add_argument("--start-at", help="no slot before this time (ISO 8601); also the phase of --every")
    a.add_argument("--end-at", help="no slot after this time (ISO 8601)")
    a.add_argument("--jitter", help="spread fires by a stable random delay up to this duration (e.g. 30s)")
    a.add_argument("--json", action="store_true", help="print the schedule as JSON")
    a.set_defaults(func=_guard(_add))

    ls = actions.add_parser("list", help="list schedules")
    ls.add_argument("--workflow", help="only this workflow (name in --workspace, or id)")
    ls.add_argument("--workspace", default="default")
    ls.add_argument("--limit", type=int, default=100)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=_guard(_list))

    for name, func in (("pause", _set_active(False)), ("resume", _set_active(True)), ("remove", _remove)):
        c = actions.add_parser(name, help=f"{name} a schedule")
        c.add_argument("id", help="schedule id")
        c.set_defaults(func=_guard(func))
