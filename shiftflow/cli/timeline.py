"""``shiftflow timeline`` and ``shiftflow retries``: a long execution's story and its retry chain.

The same readers as ``GET /api/v1/executions/{id}/timeline`` and ``.../retries``
(``models.patterns.workspaces``), run as the operator. Exit codes: 0; 1 (not found, MongoDB
unreachable); 2 bad usage (the message names the flag).
"""

from __future__ import annotations

import argparse
from typing import Any

from shiftflow.cli.operator import connect, guarded, operator, print_json


def _timeline(args: argparse.Namespace) -> int:
    from shiftflow.kernel.mongo import get_sink
    from shiftflow.models.patterns import workspaces

    connect(args)
    sink = get_sink()
    data = workspaces.read_timeline(operator(args), sink.database() if sink is not None else None,
                                    execution_id=args.execution, after=args.after, limit=args.limit)
    if args.json:
        print_json(data)
        return 0
    _print_chain(data["retry_chain"])
    for event in data["items"]:
        short = event["execution_id"][:8] if event["execution_id"] else "-"
        print(f"{event['at']}  {short}  {event['type']:<22} {_summary(event['data'])}")
    if sink is None:
        print("(SHIFTFLOW_MONGO_URL is not set: no timeline events to read)")
    return 0


def _summary(data: dict[str, Any]) -> str:
    keys = ("phase", "progress", "status", "deployment_id", "url", "hash", "retry_count", "child_execution_id",
            "approved", "by", "error", "message")
    return " ".join(f"{k}={data[k]}" for k in keys if data.get(k) not in (None, ""))[:160]


def _print_chain(chain: list[dict[str, Any]]) -> None:
    for item in chain:
        reason = f"  reason: {item['retry_reason'][:80]}" if item["retry_reason"] else ""
        print(f"retry {item['retry_count']}/{item['max_retries']}  {item['id']}  {item['status']:<10} "
              f"phase={item['phase'] or '-'} progress={item['progress']}{reason}")


def _retries(args: argparse.Namespace) -> int:
    from shiftflow.models.patterns import workspaces

    connect(args)
    data = workspaces.retry_chain(operator(args), args.execution)
    if args.json:
        print_json(data)
    else:
        _print_chain(data["items"])
    return 0


def register(sub: Any) -> None:
    """Add ``timeline`` and ``retries`` to the ``shiftflow`` parser."""
    p = sub.add_parser("timeline", help="the typed timeline of an execution and its retry chain (from MongoDB)")
    p.add_argument("execution", help="execution id (or its first hex digits)")
    p.add_argument("--after", type=int, help="only events after this seq")
    p.add_argument("--limit", type=int, help="the most events shown (default 500)")
    p.add_argument("--workspace", help="workspace slug (default: every workspace)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=guarded(_timeline))
    r = sub.add_parser("retries", help="the automatic retries of an execution: its chain of linked executions")
    r.add_argument("execution", help="execution id (or its first hex digits)")
    r.add_argument("--workspace", help="workspace slug (default: every workspace)")
    r.add_argument("--json", action="store_true", help="print JSON")
    r.set_defaults(func=guarded(_retries))
