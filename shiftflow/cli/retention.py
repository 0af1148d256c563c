"""``shiftflow retention``: delete old finished executions and set MongoDB's TTL indexes.

``shiftflow retention run --dry-run`` prints, per workspace, what a run would delete and
what it keeps because something unfinished needs it; without ``--dry-run`` it deletes in
small batches (``models.manage.retention``) and makes the MongoDB TTL indexes match the settings
(``kernel.mongo_ttl``). Run it from cron or a Kubernetes CronJob, e.g. daily.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from shiftflow.cli.main import bind, settings_from_args
from shiftflow.kernel.errors import SettingsError


def _run(args: argparse.Namespace) -> int:
    from shiftflow.kernel.db import is_postgres
    from shiftflow.models.manage import retention

    settings = settings_from_args(args)
    bind(settings)
    if not is_postgres():
        raise SettingsError("retention runs on PostgreSQL (SHIFTFLOW_DATABASE_URL); dev mode's SQLite keeps everything")
    report = retention.run(settings, dry_run=args.dry_run)
    ttl: dict[str, str] = {}
    if settings.mongo_url and not args.dry_run:
        ttl = _ensure_ttl(settings)
    if args.json:
        print(json.dumps({**dataclasses.asdict(report), "mongo_ttl": ttl}, indent=2, default=str))
        return 0
    verb = "would delete" if args.dry_run else "deleted"
    print(f"retention ({'dry run' if args.dry_run else 'run'}); dedup window {report.dedup_window_hours} h")
    for item in report.workspaces:
        if item.cutoff is None:
            print(f"  {item.workspace}: kept forever (retention 0)")
            continue
        print(f"  {item.workspace}: finished before {item.cutoff:%Y-%m-%d %H:%M} (retention {item.retention_days} d): "
              f"{verb} {item.executions} executions, {item.steps} steps, {item.tool_executions} tool executions, "
              f"{item.artifacts} artifacts; "
              f"{item.held} kept for unfinished executions, pending orders or unsettled calls")
    orphans = report.orphans
    print(f"  artifact files without a row, older than {settings.artifact_orphan_grace_hours} h: {verb} "
          f"{orphans.orphans} of {orphans.checked}" + (f" ({orphans.failed} failed)" if orphans.failed else ""))
    for collection, done in ttl.items():
        print(f"  MongoDB {collection}: TTL index {done}")
    return 0


def _ensure_ttl(settings: Any) -> dict[str, str]:
    from pymongo import MongoClient

    from shiftflow.kernel.mongo_ttl import ensure_ttl_indexes

    client: MongoClient[dict[str, Any]] = MongoClient(settings.mongo_url, retryWrites=False,
                                                      serverSelectionTimeoutMS=5_000)
    try:
        return ensure_ttl_indexes(client[settings.mongo_db], settings)
    finally:
        client.close()


def register(sub: Any) -> None:
    """Add ``retention`` to the ``shiftflow`` parser."""
    parser = sub.add_parser("retention", help="delete old finished executions and artifacts; set MongoDB's TTL indexes")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = actions.add_parser(
        "run",
        help="delete finished executions older than their workspace's retention, in small batches",
        epilog="Settings: SHIFTFLOW_RETENTION_DAYS, SHIFTFLOW_RETENTION_WORKSPACE_DAYS, "
        "SHIFTFLOW_DEDUP_WINDOW_HOURS, SHIFTFLOW_RETENTION_BATCH_SIZE, SHIFTFLOW_LOG_RETENTION_DAYS, "
        "SHIFTFLOW_ANALYTICS_RETENTION_DAYS, SHIFTFLOW_USAGE_RETENTION_DAYS (README: Retention).",
    )
    p.add_argument("--dry-run", action="store_true", help="print what would be deleted; delete nothing")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_run)
