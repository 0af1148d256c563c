"""``shiftflow analytics``: success rates, durations, usage and cost over a time range.

The same readers as ``GET /api/v1/analytics/...`` (``models.manage.analytics``), run as the
operator: on one workspace with ``--workspace``, else on every workspace. Exit codes: 0,
1 (MongoDB unreachable), 2 bad usage (the message names the flag).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from shiftflow.cli.operator import connect, operator, print_json, usage_error, when
from shiftflow.kernel.errors import SettingsError
from shiftflow.models.manage.problems import InvalidInput

#: Model field -> the flag a person typed.
_FLAGS = {"since": "--since", "until": "--until", "workflow_id": "--workflow"}

#: Report -> its table: (header, width, how to show one item).
_COLUMNS: dict[str, list[tuple[str, int, Callable[[dict[str, Any]], Any]]]] = {
    "workflows": [("workflow", 28, lambda i: i["workflow_name"] or i["workflow_id"]),
                  ("executions", 10, lambda i: i["executions"]), ("ok %", 7, lambda i: _pct(i["success_rate"])),
                  ("p50 ms", 10, lambda i: _ms(i["duration_ms"]["p50"])),
                  ("p95 ms", 10, lambda i: _ms(i["duration_ms"]["p95"]))],
    "steps": [("workflow", 24, lambda i: i["workflow_name"] or i["workflow_id"]), ("step", 20, lambda i: i["step_id"]),
              ("type", 12, lambda i: i["step_type"]), ("runs", 8, lambda i: i["runs"]),
              ("ok %", 7, lambda i: _pct(i["success_rate"])), ("p50 ms", 10, lambda i: _ms(i["duration_ms"]["p50"])),
              ("p95 ms", 10, lambda i: _ms(i["duration_ms"]["p95"]))],
    "integrations": [("integration", 16, lambda i: i["integration"]), ("action", 12, lambda i: i["action"]),
                     ("calls", 8, lambda i: i["calls"]), ("ok %", 7, lambda i: _pct(i["success_rate"])),
                     ("429s", 6, lambda i: i["rate_limited"]), ("p50 ms", 10, lambda i: _ms(i["duration_ms"]["p50"])),
                     ("p95 ms", 10, lambda i: _ms(i["duration_ms"]["p95"]))],
    "costs": [("workspace", 38, lambda i: i["workspace_id"]), ("model", 24, lambda i: i["model"]),
              ("calls", 8, lambda i: i["calls"]), ("tokens in", 11, lambda i: i["tokens_in"]),
              ("tokens out", 11, lambda i: i["tokens_out"]), ("USD", 12, lambda i: f"{i['cost_usd']:.6f}")],
}


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{100 * rate:.1f}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _report(name: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from shiftflow.kernel.mongo import get_sink
        from shiftflow.models.manage import analytics

        try:
            connect(args)
            sink = get_sink()
            if sink is None:
                raise SettingsError("SHIFTFLOW_MONGO_URL is not set: there is no analytics store to read")
            data = analytics.READERS[name](operator(args), sink.database(), since=when(args.since, "since"),
                                           until=when(args.until, "until"), workflow_id=args.workflow)
        except InvalidInput as exc:
            return usage_error(_FLAGS.get(exc.field, exc.field), exc.reason)
        if args.json:
            print_json(data)
            return 0
        _print(name, data)
        return 0

    return run


def _print(name: str, data: dict[str, Any]) -> None:
    columns = _COLUMNS[name]
    print(f"{name} from {data['since']} to {data['until']}")
    print("  ".join(f"{title:<{width}}" for title, width, _ in columns).rstrip())
    for item in data["items"]:
        print("  ".join(f"{str(show(item)):<{width}}" for _, width, show in columns).rstrip())
    if not data["items"]:
        print("(nothing in this window)")
    if "total_cost_usd" in data:
        print(f"total USD {data['total_cost_usd']:.6f}")
    if data.get("sampled"):
        print("note: percentiles from a bounded sample (this MongoDB has no $percentile)")


def register(sub: Any) -> None:
    """Add ``analytics`` to the ``shiftflow`` parser."""
    parser = sub.add_parser("analytics", help="success rates, durations, integration usage and model cost "
                                              "over a time range (from MongoDB)")
    reports = parser.add_subparsers(dest="report", required=True, metavar="REPORT")
    helps = {"workflows": "success rate and p50/p95 duration per workflow",
             "steps": "success rate and p50/p95 duration per workflow step",
             "integrations": "calls, failures, rate limits and p50/p95 duration per integration and action",
             "costs": "model calls, tokens and cost in USD per workspace and model"}
    for name, text in helps.items():
        p = reports.add_parser(name, help=text,
                               epilog="--since/--until: a time with a UTC offset (2026-01-31T12:00Z) or an age "
                                      "(30m, 2h, 7d). Default: the last seven days.")
        p.add_argument("--workspace", help="workspace slug (default: every workspace)")
        p.add_argument("--since", help="start of the window (inclusive)")
        p.add_argument("--until", help="end of the window (exclusive; default now)")
        p.add_argument("--workflow", help="only this workflow (its id)")
        p.add_argument("--json", action="store_true", help="print JSON")
        p.set_defaults(func=_report(name))
