"""``shiftflow tools executions`` and ``shiftflow tools jobs``: what tool steps did.

The same readers as ``GET /api/v1/executions/{id}/tool-executions`` and
``GET /api/v1/queue-jobs`` (``models.manage.tool_runs``), run as the operator: on one
workspace with ``--workspace``, else on every workspace. Secrets are masked as the API
masks them. A table by default, ``--json`` for the full records.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from shiftflow.cli.operator import connect, guarded, operator, print_json

Column = tuple[str, int, Callable[[dict[str, Any]], Any]]

_CALLS: list[Column] = [
    ("step", 16, lambda r: r["step_id"] if not r["iteration"] else f"{r['step_id']}[{r['iteration']}]"),
    ("tool", 18, lambda r: r["tool"]), ("connection", 14, lambda r: r["connection"] or "-"),
    ("try", 3, lambda r: r["attempt"]), ("status", 9, lambda r: r["status"]),
    ("ms", 7, lambda r: "-" if r["duration_ms"] is None else r["duration_ms"]),
    ("id", 36, lambda r: r["id"]), ("error", 0, lambda r: (r["error"] or "")[:80]),
]
_JOBS: list[Column] = [
    ("created", 19, lambda r: (r["created_at"] or "")[:19]), ("queue", 13, lambda r: r["queue"]),
    ("status", 9, lambda r: r["status"]), ("tries", 5, lambda r: f"{r['attempts']}/{r['max_attempts']}"),
    ("%", 3, lambda r: r["progress"]), ("step", 16, lambda r: r["step_id"] or "-"),
    ("tool", 18, lambda r: r["tool"] or "-"), ("id", 36, lambda r: r["id"]),
    ("error", 0, lambda r: (r["error"] or "")[:80]),
]


def table(rows: list[dict[str, Any]], columns: list[Column]) -> str:
    """``rows`` as a fixed-width table with a header line (the last column unpadded)."""
    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if w else c for c, (_h, w, _f) in zip(cells, columns, strict=True)).rstrip()

    out = [line([h for h, _w, _f in columns])]
    out += [line([str(f(r)) for _h, _w, f in columns]) for r in rows]
    return "\n".join(out)


def _executions(args: argparse.Namespace) -> int:
    from shiftflow.models.manage import tool_runs

    settings = connect(args)
    rows = tool_runs.list_tool_executions(operator(args), args.execution, settings=settings)
    if args.json:
        print_json(rows)
    elif not rows:
        print("no tool calls in this execution")
    else:
        print(table(rows, _CALLS))
    return 0


def _jobs(args: argparse.Namespace) -> int:
    from shiftflow.models.manage import tool_runs

    settings = connect(args)
    actor = operator(args)
    if args.job:
        job = tool_runs.get_queue_job(actor, args.job, settings=settings)
        if args.json:
            print_json(job)
        else:
            print(table([job], _JOBS))
            print(f"tool executions: {', '.join(job['tool_execution_ids']) or '-'}")
        return 0
    page = tool_runs.list_queue_jobs(actor, queue=args.queue, status=args.status, limit=args.limit,
                                     cursor=args.cursor, settings=settings)
    if args.json:
        print_json(page.as_dict())
        return 0
    print(table(page.items, _JOBS))
    if page.next_cursor:
        print(f"more: --cursor {page.next_cursor}")
    return 0


def add_actions(t_sub: Any) -> None:
    """Add ``executions`` and ``jobs`` under ``shiftflow tools``."""
    p = t_sub.add_parser("executions", help="the tool calls of one execution (masked input/output with --json)")
    p.add_argument("execution", help="the execution's id (or the start of it)")
    p.add_argument("--workspace", help="workspace slug (default: any workspace)")
    p.add_argument("--json", action="store_true", help="print the full records as JSON")
    p.set_defaults(func=guarded(_executions))
    p = t_sub.add_parser("jobs", help="queue jobs of tool steps, newest first (or one job with its tool calls)")
    p.add_argument("job", nargs="?", help="one job's id: show it with the tool executions it made")
    p.add_argument("--workspace", help="workspace slug (default: every workspace, system jobs too)")
    p.add_argument("--queue", help="only this queue (tools, tools.email, tools.browser, tools.media)")
    p.add_argument("--status", help="only this status (QUEUED, RUNNING, RETRYING, SUCCEEDED, FAILED, DEAD)")
    p.add_argument("--limit", type=int, default=50, help="page size (1-200, default 50)")
    p.add_argument("--cursor", help="the cursor printed under the previous page")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=guarded(_jobs))
