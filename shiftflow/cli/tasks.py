"""``shiftflow tasks``: agent tasks from the command line.

The same functions as the API's ``/tasks`` paths (``models.manage.tasks``), as the
operator of one workspace (``--workspace``), writing the same audit entries. ``create``
stores the task and publishes its planner step; a worker consuming the ``llm`` queue plans
it, and the tool queues (``tools.browser``, ``tools.media``, ``tools.email``...) run it.
"""

from __future__ import annotations

import argparse
from typing import Any

from shiftflow.cli.operator import connect, guarded, operator, print_json
from shiftflow.cli.publish import publish_after_commit
from shiftflow.kernel.enqueue import Outgoing


def _line(task: dict[str, Any]) -> str:
    steps = f"{task['current_step']}/{task['total_steps']}" if task["total_steps"] else "-"
    return (f"{task['id']}  {task['status']:<9} {task['stage']:<17} step {steps:<5} "
            f"${task['cost_usd']:.6f}  {(task['intent'] or '')[:60]}")


def _create(args: argparse.Namespace) -> int:
    from shiftflow.models.manage import tasks

    settings = connect(args)
    task, outgoing = tasks.create_task(operator(args), args.intent, connection=args.connection,
                                       approve_required=args.approve_required, model=args.model,
                                       priority=args.priority)
    publish_after_commit(settings, outgoing)
    if args.json:
        print_json(task)
    else:
        print(f"task {task['id']} created: planning with connection {task['connection']!r}"
              + (" (approval required)" if task["approve_required"] else ""))
    return 0


def _list(args: argparse.Namespace) -> int:
    from shiftflow.models.manage import tasks

    connect(args)
    rows = tasks.list_tasks(operator(args), status=args.status, limit=args.limit)
    if args.json:
        print_json(rows)
        return 0
    for task in rows:
        print(_line(task))
    return 0


def _show(args: argparse.Namespace) -> int:
    from shiftflow.models.manage import tasks

    connect(args)
    print_json(tasks.task_story(operator(args), args.task))
    return 0


def _logs(args: argparse.Namespace) -> int:
    from shiftflow.kernel.errors import SettingsError
    from shiftflow.kernel.mongo import get_sink
    from shiftflow.models.manage import tasks

    connect(args)
    sink = get_sink()
    if sink is None:
        raise SettingsError("SHIFTFLOW_MONGO_URL is not set: there is no log store to read")
    mongo = sink.database()
    cursor = None
    while True:
        page = tasks.task_logs(operator(args), args.task, mongo, 200, cursor)
        for item in page.items:
            step = f" [{item['step_id']}]" if item.get("step_id") else ""
            print(f"{item['timestamp']} {item['level']:<5}{step} {item['message']}")
        if not page.next_cursor:
            return 0
        cursor = page.next_cursor


def _command(verb: str) -> Any:
    def run(args: argparse.Namespace) -> int:
        from shiftflow.models.manage import tasks

        settings = connect(args)
        actor = operator(args)
        outgoing: list[Outgoing] = []
        if verb == "approve":
            task, outgoing = tasks.approve_task(actor, args.task, approved=not args.reject,
                                                comment=args.comment or "")
        elif verb == "pause":
            task = tasks.pause_task(actor, args.task)
        elif verb == "resume":
            task, outgoing = tasks.resume_task(actor, args.task)
        else:
            task, outgoing = tasks.cancel_task(actor, args.task)
        publish_after_commit(settings, outgoing)
        print(_line(task))
        return 0

    return run


def register(sub: Any) -> None:
    """Add ``tasks`` to the ``shiftflow`` parser."""
    parser = sub.add_parser("tasks", help="agent tasks: an intent planned into tool calls, then run")
    t_sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = t_sub.add_parser("create", help="create a task: a worker on the llm queue plans it into tool calls")
    p.add_argument("--workspace", required=True, help="workspace slug")
    p.add_argument("--intent", required=True, help="what to do, in words")
    p.add_argument("--connection", help="the LLM connection that plans (default: the workspace's only one)")
    p.add_argument("--model", help="the model to ask (default: SHIFTFLOW_TASK_MODEL)")
    p.add_argument("--approve-required", action="store_true",
                   help="wait for 'shiftflow tasks approve' before running the plan")
    p.add_argument("--priority", type=str.upper, choices=["LOW", "NORMAL", "HIGH", "CRITICAL"])
    p.add_argument("--json", action="store_true", help="print the task as JSON")
    p.set_defaults(func=guarded(_create))
    p = t_sub.add_parser("list", help="the workspace's tasks, newest first")
    p.add_argument("--workspace", required=True, help="workspace slug")
    p.add_argument("--status", type=str.upper, help="only this status (RUNNING, PAUSED, SUCCEEDED...)")
    p.add_argument("--limit", type=int, default=50, help="how many (1-200)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=guarded(_list))
    for verb, helptext in (("show", "a task's whole story: plan, model calls, tool executions, artifacts, cost"),
                           ("logs", "a task's log lines, oldest first")):
        p = t_sub.add_parser(verb, help=helptext)
        p.add_argument("task", help="task id (or its first hex digits)")
        p.add_argument("--workspace", required=True, help="workspace slug")
        p.set_defaults(func=guarded(_show if verb == "show" else _logs))
    for verb, helptext in (("approve", "approve a plan awaiting approval (--reject fails the task)"),
                           ("pause", "pause a running task: no further step starts"),
                           ("resume", "resume a paused task"),
                           ("cancel", "cancel a task that has not finished")):
        p = t_sub.add_parser(verb, help=helptext)
        p.add_argument("task", help="task id (or its first hex digits)")
        p.add_argument("--workspace", required=True, help="workspace slug")
        if verb == "approve":
            p.add_argument("--reject", action="store_true", help="reject the plan: the task fails")
            p.add_argument("--comment", help="why (kept with the decision)")
        p.set_defaults(func=guarded(_command(verb)))
