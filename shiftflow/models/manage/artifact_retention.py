"""Artifact retention: old artifacts (rows and stored bytes) and orphan files.

Part of ``shiftflow retention run`` (``models.manage.retention``), in two passes:

1. **Expired artifacts.** In each workspace with a cutoff (its retention), the artifact
   rows created before the cutoff whose execution is finished are deleted, in batches of
   ``SHIFTFLOW_RETENTION_BATCH_SIZE`` (rows locked with SKIP LOCKED), and their bytes are
   deleted from the store *after* the batch commits. A crash in between leaves bytes
   without a row, which the second pass removes; never a row without its bytes because
   of retention. Rows of a running execution stay (a later step may read them).
2. **Orphan files.** Every stored file older than ``SHIFTFLOW_ARTIFACT_ORPHAN_GRACE_HOURS``
   that no artifact row names is deleted: the file of a step whose worker died before the
   step completed (rows are written with the completion), the bytes of rows that went with
   their execution (``ON DELETE CASCADE``), a ``.partial-`` file of an interrupted write.
   The grace period keeps the files of calls still running.

PostgreSQL only, like the rest of retention.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from shiftflow.kernel.artifacts import ArtifactStore
from shiftflow.kernel.db import database
from shiftflow.kernel.errors import ToolError, TransientError

log = logging.getLogger(__name__)

#: Locations looked up in the artifact table at a time during the orphan sweep.
LOOKUP_BATCH = 500


@dataclass
class OrphanReport:
    """What the orphan sweep deleted (or, dry, would delete)."""

    checked: int = 0
    orphans: int = 0
    failed: int = 0


def _finished_sql() -> str:
    from shiftflow.models.manage.retention import FINISHED

    return ", ".join(f"'{s}'" for s in FINISHED)


def _delete_bytes(store: ArtifactStore, locations: Iterable[str]) -> int:
    """Delete stored bytes; a failure is logged and left to the orphan sweep. Returns failures."""
    failed = 0
    for location in locations:
        try:
            store.delete(location)
        except (ToolError, TransientError, OSError) as exc:
            failed += 1
            log.warning("retention: artifact %s not deleted (%s); the orphan sweep retries", location, exc)
    return failed


def expire(store: ArtifactStore, workspace_id: Any, cutoff: dt.datetime, *, dry_run: bool,
           batch_size: int) -> int:
    """Delete (or count) the workspace's artifacts created before ``cutoff`` whose execution
    is finished: rows first (committed), then their bytes. Returns how many."""
    where = f"""a.workspace_id = %s AND a.created_at < %s
                AND EXISTS (SELECT 1 FROM execution e WHERE e.id = a.execution_id AND e.status IN ({_finished_sql()}))"""
    if dry_run:
        ((count,),) = database.execute_sql(f"SELECT count(*) FROM artifact a WHERE {where}",
                                           (workspace_id, cutoff)).fetchall()
        return int(count)
    total = 0
    while True:
        with database.atomic():
            rows = database.execute_sql(
                f"""DELETE FROM artifact WHERE id IN (
                        SELECT a.id FROM artifact a WHERE {where}
                        ORDER BY a.created_at LIMIT %s FOR UPDATE OF a SKIP LOCKED)
                    RETURNING url""", (workspace_id, cutoff, batch_size)).fetchall()
        # Committed: the rows are gone, so no reader is sent to bytes about to vanish.
        _delete_bytes(store, [r[0] for r in rows])
        total += len(rows)
        if len(rows) < batch_size:
            return total


def _chunks(items: Iterator[tuple[str, float]], size: int) -> Iterator[list[tuple[str, float]]]:
    chunk: list[tuple[str, float]] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def sweep_orphans(store: ArtifactStore, now: dt.datetime, grace_hours: int, *, dry_run: bool) -> OrphanReport:
    """Delete (or count) the stored files older than the grace period that no row names.

    Parameters:
        now: naive UTC.
    """
    report = OrphanReport()
    older_than = (now - dt.timedelta(hours=grace_hours)).replace(tzinfo=dt.UTC).timestamp()
    old = ((location, modified) for location, modified in store.stored() if modified < older_than)
    for chunk in _chunks(old, LOOKUP_BATCH):
        locations = [location for location, _ in chunk]
        report.checked += len(locations)
        known = {r[0] for r in database.execute_sql("SELECT url FROM artifact WHERE url = ANY(%s)",
                                                    (locations,)).fetchall()}
        orphans = [location for location in locations if location not in known]
        report.orphans += len(orphans)
        if not dry_run:
            report.failed += _delete_bytes(store, orphans)
    return report
