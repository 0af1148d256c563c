"""``shiftflow quotas``: show and set a workspace's admission quotas (the operator only).

A workspace's quotas default to the deployment's (``SHIFTFLOW_QUOTA_*``); ``set`` overrides
some of them for one workspace, and ``default`` puts one back. The ingress and the API pick
a change up within 30 s (their lookups' cache). See ``models.manage.quotas``.

The daily LLM budget (``--llm-daily-budget-usd``, default ``SHIFTFLOW_LLM_DAILY_BUDGET_USD``)
is set here too; ``show`` prints it with today's spend. LLM calls read it at once
(``models.manage.llm_budget``).
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from shiftflow.cli.operator import connect, guarded, operator, print_json, usage_error

#: ``set`` flags -> the workspace column they override, and whether the value is a whole number.
FLAGS: dict[str, tuple[str, bool]] = {
    "--webhooks-per-second": ("quota_webhooks_per_second", False),
    "--webhooks-burst": ("quota_webhooks_burst", True),
    "--runs-per-second": ("quota_runs_per_second", False),
    "--runs-burst": ("quota_runs_burst", True),
    "--max-queued-executions": ("quota_max_queued_executions", True),
}

#: The ``set`` flag of the daily LLM budget (USD, six places at most, or 'default').
BUDGET_FLAG = "--llm-daily-budget-usd"


def _show(args: argparse.Namespace) -> int:
    from shiftflow.models.manage import quotas, workspaces

    settings = connect(args)
    data = quotas.quotas_dict(workspaces.by_slug(args.slug), settings)
    if args.json:
        print_json(data)
        return 0
    _print(data)
    return 0


def _print(data: dict[str, Any]) -> None:
    effective, overrides = data["effective"], data["overrides"]

    def source(column: str) -> str:
        return "workspace" if overrides[column] is not None else "default"

    def rate(value: float) -> str:
        return "no limit" if value <= 0 else f"{value:g}/s"

    print(f"workspace {data['workspace']}")
    print(f"  webhooks           {rate(effective['webhooks_per_second']):<10} "
          f"({source('quota_webhooks_per_second')}), burst {effective['webhooks_burst']} "
          f"({source('quota_webhooks_burst')})")
    print(f"  API runs           {rate(effective['runs_per_second']):<10} "
          f"({source('quota_runs_per_second')}), burst {effective['runs_burst']} ({source('quota_runs_burst')})")
    cap = effective["max_queued_executions"]
    print(f"  queued executions  {'no cap' if cap <= 0 else cap} ({source('quota_max_queued_executions')})")
    budget = data["llm_budget"]
    limit = "no limit" if budget["effective_usd"] is None else f"{budget['effective_usd']} USD/day"
    remaining = "" if budget["remaining_usd"] is None else f", {budget['remaining_usd']} USD left"
    print(f"  LLM budget         {limit} ({budget['source']}); spent today (UTC) "
          f"{budget['spent_today_usd']} USD{remaining}")


def _set(args: argparse.Namespace) -> int:
    from shiftflow.models.manage import llm_budget, quotas, workspaces
    from shiftflow.models.manage.problems import InvalidInput

    budget_raw = args.llm_daily_budget_usd
    budget: Any = None
    if budget_raw is not None and budget_raw.strip().lower() != "default":
        try:
            budget = llm_budget.parse_budget(budget_raw)
        except InvalidInput as exc:
            return usage_error(BUDGET_FLAG, exc.reason)
    values: dict[str, Any] = {}
    for flag, (column, whole) in FLAGS.items():
        raw = getattr(args, column)
        if raw is None:
            continue
        if raw.strip().lower() == "default":
            values[column] = None
            continue
        try:
            number = int(raw) if whole else float(raw)
        except ValueError:
            kind = "a whole number" if whole else "a number"
            return usage_error(flag, f"{raw!r} is not {kind} (or 'default')")
        floor = 1 if column.endswith("_burst") else 0
        if not math.isfinite(number) or number < floor:
            return usage_error(flag, f"expected at least {floor} (or 'default'), got {raw}")
        values[column] = number
    if not values and budget_raw is None:
        return usage_error("--webhooks-per-second", f"give at least one of {', '.join([*FLAGS, BUDGET_FLAG])}")
    settings = connect(args)
    actor = operator(argparse.Namespace())
    workspaces.by_slug(args.slug)  # an unknown workspace is refused before anything is written
    if values:
        quotas.set_quotas(actor, args.slug, values)
    if budget_raw is not None:
        llm_budget.set_budget(actor, budget, settings, slug=args.slug)
    _print(quotas.quotas_dict(workspaces.by_slug(args.slug), settings))
    return 0


def register(sub: Any) -> None:
    """Add ``quotas`` to the ``shiftflow`` parser."""
    parser = sub.add_parser("quotas", help="show or set a workspace's webhook, run and queue quotas and its daily LLM budget")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = actions.add_parser("show", help="the quotas in force for a workspace, and where each comes from")
    p.add_argument("slug", help="workspace slug")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=guarded(_show))
    p = actions.add_parser(
        "set",
        help="override some of a workspace's quotas ('default' puts one back)",
        epilog="A rate of 0 means no limit; so does a queued cap of 0. Running processes apply a "
        "change within 30 s.",
    )
    p.add_argument("slug", help="workspace slug")
    for flag, (column, whole) in FLAGS.items():
        p.add_argument(flag, dest=column, metavar="N" if whole else "RATE",
                       help=f"{'a whole number' if whole else 'per second'}, or 'default'")
    p.add_argument(BUDGET_FLAG, dest="llm_daily_budget_usd", metavar="USD",
                   help="what the workspace's LLM calls may cost per UTC day (e.g. 5 or 0.25; at most six "
                        "decimal places; 0 allows only free calls), or 'default' for SHIFTFLOW_LLM_DAILY_BUDGET_USD")
    p.set_defaults(func=guarded(_set))
