"""Operating commands: ``run``, ``cancel``, ``rerun``, ``logs``, ``dead-letters``, ``workflows``.

They call the same functions as the management API (``models.manage.control``, ``replay``,
``lifecycle``, ``queries``) as the operator, write the same audit entries, and publish
after the commit. With ``--wait`` they follow the execution step by step. Where the
broker cannot be reached (or in dev mode, whose broker lives inside the dev process)
step messages are handed to the timer loop, which publishes them; a manual trigger
in dev mode starts its execution directly.

Exit codes: 0 done (with ``--wait``: the execution SUCCEEDED), 1 it failed or the
object does not allow it, 2 bad usage (the message names the flag).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from shiftflow.cli.operator import connect, guarded, json_object, operator, print_json, when
from shiftflow.kernel.contracts import Priority
from shiftflow.kernel.enqueue import Outgoing
from shiftflow.kernel.errors import SettingsError, TransientError
from shiftflow.kernel.settings import Settings
from shiftflow.kernel.steps import TERMINAL
from shiftflow.models.manage.paging import MAX_LIMIT

_PRIORITIES = [p.name for p in Priority]


def _install_broker(settings: Settings) -> None:
    from shiftflow.kernel.broker import build_broker, install

    install(build_broker(settings, worker=False))


def _publish(settings: Settings, outgoing: list[Outgoing]) -> None:
    """Send step messages after the commit, or hand them to the timer loop."""
    from shiftflow.kernel.enqueue import send_all
    from shiftflow.models.manage import control

    if not outgoing:
        return
    if not settings.dev:
        try:
            send_all(outgoing)
            return
        except TransientError as exc:
            print(
                f"broker unavailable ({exc}); the timer loop will publish {len(outgoing)} message(s)",
                flush=True,
            )
    control.defer_to_timers(outgoing)


def _follow(
    execution_id: Any = None, *, workflow_id: Any = None, key: str | None = None, timeout: float
) -> int:
    """Print an execution's steps as they change, until it finishes; 0 when it SUCCEEDED, else 1.

    The execution is found by id, or (a trigger a worker has yet to pick up) by workflow and key.
    """
    from shiftflow.models.tables.executions import Execution, StepExecution

    deadline = time.monotonic() + timeout
    seen: dict[tuple[str, int], str] = {}
    row = None
    if execution_id is None:
        print("waiting for a worker to create the execution...", flush=True)
    while time.monotonic() < deadline:
        if execution_id is None:
            row = Execution.get_or_none((Execution.workflow == workflow_id) & (Execution.dedup_key == key))
            if row is None:
                time.sleep(0.2)
                continue
            execution_id = row.id
        row = Execution.get_by_id(execution_id)
        if not seen:
            print(f"execution {row.id} {row.status}", flush=True)
        steps = (
            StepExecution.select().where(StepExecution.execution == row.id).order_by(StepExecution.created_at)
        )
        for step in steps:
            if seen.get((step.step_id, step.iteration)) != step.status:
                seen[(step.step_id, step.iteration)] = step.status
                name = step.step_id + (f"#{step.iteration}" if step.iteration else "")
                error = f"  {step.error}" if step.error and step.status != "SUCCEEDED" else ""
                print(f"  step {name:<20} {step.status}{error}", flush=True)
        seen.setdefault(("", -1), row.status)  # the header is printed once
        if row.status in TERMINAL:
            took = f" in {row.duration_ms} ms" if row.duration_ms else ""
            error = f": {row.error}" if row.error and row.status != "SUCCEEDED" else ""
            print(f"execution {row.id} {row.status}{took}{error}", flush=True)
            return 0 if row.status == "SUCCEEDED" else 1
        time.sleep(0.2)
    state = row.status if row is not None else "not created yet"
    print(
        f"execution still {state} after {timeout:g} s; it goes on "
        f"(shiftflow executions show {execution_id or '--latest'})",
        flush=True,
    )
    return 1


def _run(args: argparse.Namespace) -> int:
    from shiftflow.kernel.db import database
    from shiftflow.kernel.enqueue import send
    from shiftflow.models.engine.start import start_execution
    from shiftflow.models.manage import control, queries

    settings = connect(args)
    actor = operator(args)
    data = json_object(args.input, "input")
    workflow = queries.find_workflow(actor, args.workflow)
    payload = control.manual_trigger(
        actor, workflow.id, data, priority=args.priority, idempotency_key=args.idempotency_key
    )
    if settings.dev:
        _publish(settings, start_execution(payload).outgoing)
    else:
        _install_broker(settings)
        send("triggers.start", payload, priority=int(Priority.parse(payload.priority)))
    with database.atomic():
        control.record_trigger(actor, payload)
    print(f"triggered workflow {workflow.name!r}: execution key {payload.dedup_key}", flush=True)
    if args.wait:
        return _follow(workflow_id=workflow.id, key=payload.dedup_key, timeout=args.timeout)
    return 0


def _cancel(args: argparse.Namespace) -> int:
    from shiftflow.models.manage import control

    settings = connect(args)
    if not settings.dev:
        _install_broker(settings)
    execution, outgoing = control.cancel(operator(args), args.execution)
    _publish(settings, outgoing)
    print(f"execution {execution.id} cancelled")
    return 0


def _rerun(args: argparse.Namespace) -> int:
    from shiftflow.models.manage import control

    settings = connect(args)
    if not settings.dev:
        _install_broker(settings)
    made = control.start_rerun(operator(args), args.execution, idempotency_key=args.idempotency_key)
    _publish(settings, made.outgoing)
    execution = made.execution
    if made.created:
        print(
            f"re-run of {args.execution}: execution {execution.id} (key {execution.dedup_key}), "
            f"starting from the failed step",
            flush=True,
        )
    else:
        print(
            f"re-run of {args.execution} already started with this idempotency key: execution "
            f"{execution.id} ({execution.status})",
            flush=True,
        )
    if args.wait:
        return _follow(execution.id, timeout=args.timeout)
    return 0


def _logs(args: argparse.Namespace) -> int:
    from shiftflow.kernel.mongo import get_sink
    from shiftflow.models.manage import queries

    connect(args)
    sink = get_sink()
    if sink is None:
        raise SettingsError("SHIFTFLOW_MONGO_URL is not set: there is no log store to read")
    docs: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:  # every page, to the last line (the outcome), unless --limit says fewer
        want = MAX_LIMIT if args.limit is None else min(MAX_LIMIT, args.limit - len(docs))
        page = queries.execution_logs(operator(args), args.execution, sink.database(), want, cursor)
        docs += page.items
        cursor = page.next_cursor
        if cursor is None or (args.limit is not None and len(docs) >= args.limit):
            break
    if args.json:
        print_json(docs)
        return 0
    for doc in docs:
        print(f"{doc['timestamp']}  {doc['level'] or '-':<5} {doc['step_id'] or '-':<16} {doc['message']}")
        error = (doc.get("metadata") or {}).get("error")
        if error:
            print(f"{'':>40}error: {error}")
    if not docs:
        print("no log documents for this execution (yet)")
    execution = queries.get_execution(operator(args), args.execution)
    if execution.error:  # the outcome's reason, whatever the log documents kept
        print(f"execution {execution.id} {execution.status}: {execution.error}")
    return 0


def _dead_letters_list(args: argparse.Namespace) -> int:
    from shiftflow.models.manage import replay

    connect(args)
    replayed = {"yes": True, "no": False, "any": None}[args.replayed]
    page = replay.list_dead_letters(
        operator(args),
        queue=args.queue,
        actor_name=args.actor,
        since=when(args.since, "since"),
        until=when(args.until, "until"),
        replayed=replayed,
        limit=args.limit,
    )
    if args.json:
        print_json(page.as_dict())
        return 0
    for item in page.items:
        print(
            f"{item['created_at']}  {item['id']}  {item['queue']:<10} {item['actor']:<16} "
            f"{'replayed ' + item['replayed_at'] if item['replayed_at'] else 'not replayed'}  "
            f"{(item['error'] or '').splitlines()[-1:][0][:80] if item['error'] else ''}"
        )
    print(
        f"{len(page.items)} dead letter(s)"
        + (" (more: narrow the filter or raise --limit)" if page.next_cursor else "")
    )
    return 0


def _dead_letters_replay(args: argparse.Namespace) -> int:
    from shiftflow.kernel.enqueue import send
    from shiftflow.models.manage import replay

    settings = connect(args)
    if settings.dev and not args.dry_run:
        raise SettingsError(
            "dead-letter replay needs RabbitMQ (SHIFTFLOW_AMQP_URL); dev mode's broker lives "
            "inside the dev process"
        )
    if not args.dry_run:
        _install_broker(settings)

    def progress(done: int, total: int, outcome: dict[str, Any]) -> None:
        detail = outcome.get("message_id") or outcome.get("reason") or ""
        print(
            f"[{done}/{total}] {outcome['outcome']:<12} {outcome['id']}  {outcome.get('actor', '')}  {detail}",
            flush=True,
        )

    report = replay.replay_dead_letters(
        operator(args),
        send,
        queue=args.queue,
        actor_name=args.actor,
        since=when(args.since, "since"),
        until=when(args.until, "until"),
        ids=args.ids,
        limit=args.limit,
        force=args.force,
        dry_run=args.dry_run,
        progress=progress,
    )
    verb = "would replay" if args.dry_run else "replayed"
    print(
        f"{verb} {len(report.replayed)}, skipped {len(report.skipped)} of {report.matched} matching "
        "dead letter(s)" + ("" if args.force else " (already replayed ones are not matched: --force)")
    )
    return 0


def _workflows_list(args: argparse.Namespace) -> int:
    from shiftflow.models.manage import queries

    connect(args)
    page = queries.list_workflows(operator(args), status=args.status, limit=args.limit)
    if args.json:
        print_json(page.as_dict())
        return 0
    for w in page.items:
        print(f"{w['status']:<9} v{w['current_version']:<3} {w['name']:<32} {w['id']}")
    return 0


def _workflows_move(args: argparse.Namespace) -> int:
    from shiftflow.models.manage import lifecycle, queries

    connect(args)
    actor = operator(args)
    workflow = lifecycle.move(actor, queries.find_workflow(actor, args.workflow).id, args.action)
    print(f"workflow {workflow.name!r} is {workflow.status}")
    return 0


def _waiting(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--wait", action="store_true", help="follow the execution until it finishes (exit 0 if it succeeded)"
    )
    p.add_argument("--timeout", type=float, default=300.0, help="seconds --wait waits (default 300)")


def _filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--queue", help="only this queue (e.g. triggers, steps, tools)")
    p.add_argument("--actor", help="only this actor (e.g. triggers.start)")
    p.add_argument("--since", help="created at or after: ISO time or an age (30m, 2h, 7d)")
    p.add_argument("--until", help="created before: ISO time or an age")
    p.add_argument("--workspace", help="only dead letters of this workspace's executions and workflows")


def register(sub: Any) -> None:
    """Add the operating commands to the ``shiftflow`` parser."""
    p = sub.add_parser("run", help="trigger a workflow by hand with input (a manual trigger)")
    p.add_argument("workflow", metavar="WORKFLOW", help="workflow name or id")
    p.add_argument("--workspace", required=True, help="workspace slug")
    p.add_argument("--input", default="{}", help="trigger data, a JSON object (default {})")
    p.add_argument("--priority", type=str.upper, choices=_PRIORITIES, help="default: NORMAL")
    p.add_argument("--idempotency-key", help="running again with the same key makes no second execution")
    _waiting(p)
    p.set_defaults(func=guarded(_run))

    p = sub.add_parser("cancel", help="cancel an execution that has not finished")
    p.add_argument("execution", metavar="ID", help="execution id")
    p.add_argument("--workspace", help="refuse unless the execution belongs to this workspace")
    p.set_defaults(func=guarded(_cancel))

    p = sub.add_parser(
        "rerun", help="re-run a failed execution from its failed step (a new, linked execution)"
    )
    p.add_argument("execution", metavar="ID", help="execution id (FAILED, CANCELLED or TIMED_OUT)")
    p.add_argument("--workspace", help="refuse unless the execution belongs to this workspace")
    p.add_argument(
        "--idempotency-key", help="running again with the same key answers the same re-run, never a second one"
    )
    _waiting(p)
    p.set_defaults(func=guarded(_rerun))

    p = sub.add_parser("logs", help="print an execution's log documents (MongoDB), oldest first")
    p.add_argument("execution", metavar="ID", help="execution id")
    p.add_argument("--workspace", help="refuse unless the execution belongs to this workspace")
    p.add_argument("--limit", type=int, help="at most this many documents (default: all of them)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=guarded(_logs))

    dl = sub.add_parser("dead-letters", help="list or replay messages the workers gave up on")
    dl_sub = dl.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = dl_sub.add_parser("list", help="list dead letters, newest first")
    _filters(p)
    p.add_argument("--replayed", choices=("yes", "no", "any"), default="any", help="filter by replay state")
    p.add_argument("--limit", type=int, default=50, help="how many (1-200, default 50)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=guarded(_dead_letters_list))
    p = dl_sub.add_parser("replay", help="re-enqueue dead letters by filter, oldest first, with progress")
    _filters(p)
    p.add_argument(
        "--id", dest="ids", action="append", metavar="ID", help="replay this dead letter (repeatable)"
    )
    p.add_argument("--limit", type=int, default=100, help="at most this many (1-1000, default 100)")
    p.add_argument("--force", action="store_true", help="also replay dead letters that were replayed before")
    p.add_argument("--dry-run", action="store_true", help="show what would be replayed, publish nothing")
    p.set_defaults(func=guarded(_dead_letters_replay))

    wf = sub.add_parser("workflows", help="list workflows; activate, pause or archive one")
    wf_sub = wf.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = wf_sub.add_parser("list", help="list a workspace's workflows, newest first")
    p.add_argument("--workspace", required=True, help="workspace slug")
    p.add_argument("--status", type=str.upper, help="only this status (ACTIVE, PAUSED...)")
    p.add_argument("--limit", type=int, default=50, help="how many (1-200, default 50)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=guarded(_workflows_list))
    for action, text in (
        ("activate", "activate a DRAFT or PAUSED workflow"),
        ("pause", "pause an ACTIVE workflow (its triggers are refused)"),
        ("archive", "archive a workflow for good"),
    ):
        p = wf_sub.add_parser(action, help=text)
        p.add_argument("workflow", metavar="WORKFLOW", help="workflow name or id")
        p.add_argument("--workspace", required=True, help="workspace slug")
        p.set_defaults(func=guarded(_workflows_move))
