"""PostgreSQL retention: delete finished executions older than their workspace's retention.

An execution is deleted (with its steps, tool executions, side-effect records, artifacts
rows, LLM call rows and timeline: the schema's ``ON DELETE CASCADE``; orders and
notifications keep their rows with ``execution_id`` NULL) when all of these hold:

* it is finished (SUCCEEDED, FAILED, CANCELLED, TIMED_OUT) and finished before the
  workspace's cutoff: now - ``SHIFTFLOW_RETENTION_DAYS`` (or the workspace's own from
  ``SHIFTFLOW_RETENTION_WORKSPACE_DAYS``; 0 keeps them forever);
* it was created before the deduplication window (now - ``SHIFTFLOW_DEDUP_WINDOW_HOURS``):
  the execution row holds its trigger's dedup key, so while it exists a repeated delivery
  is recognised as a duplicate; a delivery repeated after the window starts a new execution;
* no unfinished execution needs it: not its parent (a parent still running reads its
  children), not one of its children, not a later execution of its lineage (a re-run);
* no SideShift order of it is pending (PENDING_CREATE, OPEN, NEEDS_RECONCILIATION) and no
  outside call of it is unsettled (a side effect PLANNED, SENDING or UNKNOWN): the
  reconciliation needs the execution.

Artifacts go too (``models.manage.artifact_retention``): the rows and stored bytes of
artifacts older than the cutoff whose execution is finished, then every stored file older
than ``SHIFTFLOW_ARTIFACT_ORPHAN_GRACE_HOURS`` that no row names (a step that never
completed, an execution deleted above).

Deletion goes in batches of ``SHIFTFLOW_RETENTION_BATCH_SIZE`` executions, one transaction
each, rows locked with SKIP LOCKED, so that workers are never held up for long and two
retention runs do not wait on each other. PostgreSQL only (dev mode's SQLite keeps all).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from shiftflow.kernel.artifacts import ArtifactStore, make_store
from shiftflow.kernel.db import database
from shiftflow.kernel.settings import Settings
from shiftflow.models.manage import artifact_retention

#: Execution statuses that are final.
FINISHED = ("SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT")
#: SideShift order states that still need their execution.
PENDING_ORDER_STATES = ("PENDING_CREATE", "OPEN", "NEEDS_RECONCILIATION")
#: Side-effect states whose outcome is not settled yet.
UNSETTLED_EFFECT_STATES = ("PLANNED", "SENDING", "UNKNOWN")

_FINISHED_SQL = ", ".join(f"'{s}'" for s in FINISHED)
_PENDING_SQL = ", ".join(f"'{s}'" for s in PENDING_ORDER_STATES)
_UNSETTLED_SQL = ", ".join(f"'{s}'" for s in UNSETTLED_EFFECT_STATES)

#: The old finished executions of one workspace (parameters: workspace id, retention
#: cutoff, start of the dedup window).
_OLD = f"""
    e.workspace_id = %s
    AND e.status IN ({_FINISHED_SQL})
    AND e.completed_at < %s
    AND e.created_at < %s
"""
#: What no execution that is still needed matches.
_FREE = f"""
    AND NOT EXISTS (SELECT 1 FROM execution p WHERE p.id = e.parent_id AND p.status NOT IN ({_FINISHED_SQL}))
    AND NOT EXISTS (SELECT 1 FROM execution c WHERE c.parent_id = e.id AND c.status NOT IN ({_FINISHED_SQL}))
    AND NOT EXISTS (SELECT 1 FROM execution l WHERE l.lineage_root = e.id AND l.status NOT IN ({_FINISHED_SQL}))
    AND NOT EXISTS (SELECT 1 FROM sideshift_order o WHERE o.execution_id = e.id AND o.state IN ({_PENDING_SQL}))
    AND NOT EXISTS (SELECT 1 FROM side_effect s WHERE s.execution_id = e.id AND s.state IN ({_UNSETTLED_SQL}))
"""


@dataclass
class WorkspaceReport:
    """What retention deleted (or, dry, would delete) in one workspace."""

    workspace: str
    retention_days: int
    cutoff: dt.datetime | None
    executions: int = 0
    steps: int = 0
    tool_executions: int = 0
    #: Artifacts (rows and bytes) older than the cutoff.
    artifacts: int = 0
    #: Old finished executions kept because something unfinished still needs them.
    held: int = 0


@dataclass
class RetentionReport:
    """The run over every workspace."""

    dry_run: bool
    dedup_window_hours: int
    workspaces: list[WorkspaceReport] = field(default_factory=list)
    #: Stored files no artifact row names, older than the grace period.
    orphans: artifact_retention.OrphanReport = field(default_factory=artifact_retention.OrphanReport)

    @property
    def executions(self) -> int:
        """Executions deleted (or that would be) in every workspace."""
        return sum(w.executions for w in self.workspaces)


def _days_by_slug(settings: Settings) -> dict[str, int]:
    return dict(settings.retention_workspace_days)


def cutoff_for(settings: Settings, slug: str, now: dt.datetime) -> dt.datetime | None:
    """The time before which a workspace's executions must have finished to go; None: kept forever."""
    days = _days_by_slug(settings).get(slug, settings.retention_days)
    if days <= 0:
        return None
    return now - dt.timedelta(days=days)


def _rows(sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    return list(database.execute_sql(sql, params).fetchall())


def _dry(report: WorkspaceReport, workspace_id: Any, cutoff: dt.datetime, window: dt.datetime) -> None:
    ((old,),) = _rows(f"SELECT count(*) FROM execution e WHERE {_OLD}", (workspace_id, cutoff, window))
    ((executions, steps, tools),) = _rows(
        f"""WITH c AS (SELECT e.id FROM execution e WHERE {_OLD} {_FREE})
            SELECT (SELECT count(*) FROM c),
                   (SELECT count(*) FROM step_execution s JOIN c ON s.execution_id = c.id),
                   (SELECT count(*) FROM tool_execution t JOIN c ON t.execution_id = c.id)""",
        (workspace_id, cutoff, window),
    )
    report.executions, report.steps, report.tool_executions = executions, steps, tools
    report.held = old - executions


def _delete(report: WorkspaceReport, workspace_id: Any, cutoff: dt.datetime, window: dt.datetime,
            batch_size: int) -> None:
    while True:
        with database.atomic():
            ids = [str(row[0]) for row in _rows(
                f"""SELECT e.id FROM execution e WHERE {_OLD} {_FREE}
                    ORDER BY e.completed_at LIMIT %s FOR UPDATE OF e SKIP LOCKED""",
                (workspace_id, cutoff, window, batch_size),
            )]
            if ids:
                ((steps, tools),) = _rows(
                    """SELECT (SELECT count(*) FROM step_execution WHERE execution_id = ANY(%s::uuid[])),
                              (SELECT count(*) FROM tool_execution WHERE execution_id = ANY(%s::uuid[]))""",
                    (ids, ids),
                )
                database.execute_sql("DELETE FROM execution WHERE id = ANY(%s::uuid[])", (ids,))
                report.executions += len(ids)
                report.steps += steps
                report.tool_executions += tools
        if len(ids) < batch_size:
            break
    ((old,),) = _rows(f"SELECT count(*) FROM execution e WHERE {_OLD}", (workspace_id, cutoff, window))
    report.held = old


def run(settings: Settings, *, dry_run: bool, now: dt.datetime | None = None,
        store: ArtifactStore | None = None) -> RetentionReport:
    """Delete (or with ``dry_run`` count) what retention removes, workspace by workspace,
    then the orphan artifact files.

    Parameters:
        settings: retention, dedup window and batch size.
        dry_run: count only; nothing is deleted.
        now: the current time (naive UTC, as the schema stores it); tests pass one.
        store: the artifact store; ``make_store(settings)`` when None.
    """
    now = now or dt.datetime.now(dt.UTC).replace(tzinfo=None)
    store = store if store is not None else make_store(settings)
    report = RetentionReport(dry_run=dry_run, dedup_window_hours=settings.dedup_window_hours)
    window = now - dt.timedelta(hours=settings.dedup_window_hours)
    for workspace_id, slug in _rows("SELECT id, slug FROM workspace ORDER BY slug", ()):
        cutoff = cutoff_for(settings, slug, now)
        days = _days_by_slug(settings).get(slug, settings.retention_days)
        item = WorkspaceReport(slug, days, cutoff)
        report.workspaces.append(item)
        if cutoff is None:
            continue
        item.artifacts = artifact_retention.expire(store, workspace_id, cutoff, dry_run=dry_run,
                                                   batch_size=settings.retention_batch_size)
        if dry_run:
            _dry(item, workspace_id, cutoff, window)
        else:
            _delete(item, workspace_id, cutoff, window, settings.retention_batch_size)
    report.orphans = artifact_retention.sweep_orphans(store, now, settings.artifact_orphan_grace_hours,
                                                      dry_run=dry_run)
    return report
