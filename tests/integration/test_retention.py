"""Retention on real PostgreSQL (models.manage.retention) and MongoDB-wire TTL indexes (kernel.mongo_ttl).

Each case builds its rows with SQL in a database of its own, runs retention at a fixed
``now``, and reads back what is left: what must go goes (with its steps and tool
executions), and nothing that a running execution, a pending order, an unsettled outside
call or the deduplication window still needs.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import tempfile
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest

from shiftflow.kernel.artifacts import ArtifactStore, LocalArtifactStore
from shiftflow.kernel.db import bind_database, database
from shiftflow.kernel.settings import Settings
from shiftflow.models.manage import retention

pytestmark = pytest.mark.integration

NOW = dt.datetime(2026, 6, 1, 12, 0, 0)
DAY = dt.timedelta(days=1)


class Rows:
    """Inserts a workspace, a workflow and what a case needs, with plain SQL."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.workspace = self.new_workspace("acme")
        self.workflow = self._workflow(self.workspace)
        self.tool = self._insert("tool", {
            "name": f"http.request.{uuid.uuid4().hex[:6]}", "display_name": "HTTP", "description": "",
            "category": "http", "parameters_schema": "{}", "queue": "tools", "enabled": True, "usage_count": 0,
            "updated_at": NOW})

    def _insert(self, table: str, values: dict[str, Any]) -> str:
        values = {"id": str(uuid.uuid4()), "created_at": NOW, **values}
        columns = ", ".join(f'"{c}"' for c in values)
        marks = ", ".join(["%s"] * len(values))
        with self.conn.cursor() as cur:
            cur.execute(f'INSERT INTO "{table}" ({columns}) VALUES ({marks})', list(values.values()))
        return values["id"]

    def new_workspace(self, slug: str) -> str:
        return self._insert("workspace", {"updated_at": NOW, "name": slug, "slug": slug, "plan": "free",
                                          "max_workflows": 0, "max_executions": 0})

    def _workflow(self, workspace: str) -> str:
        return self._insert("workflow", {
            "updated_at": NOW, "workspace_id": workspace, "name": "wf", "status": "ACTIVE", "trigger_type": "webhook",
            "current_version": 1, "execution_count": 0, "successful_executions": 0, "failed_executions": 0,
            "tags": "[]"})

    def execution(self, status: str = "SUCCEEDED", *, finished_ago: dt.timedelta | None = 30 * DAY,
                  created_ago: dt.timedelta | None = None, workspace: str | None = None,
                  workflow: str | None = None, dedup_key: str | None = None, steps: int = 1,
                  **extra: Any) -> str:
        created = NOW - (created_ago if created_ago is not None else (finished_ago or DAY) + dt.timedelta(minutes=1))
        finished = status in retention.FINISHED
        execution = self._insert("execution", {
            "workflow_id": workflow or self.workflow, "workflow_version": 1, "workspace_id": workspace or self.workspace,
            "dedup_key": dedup_key or uuid.uuid4().hex, "source": "webhook", "status": status, "priority": "normal",
            "trigger_data": "{}", "context": "{}", "progress": 0, "retry_count": 0, "max_retries": 0,
            "created_at": created, "started_at": created if status != "PENDING" else None,
            "completed_at": NOW - finished_ago if finished and finished_ago is not None else None, **extra})
        for number in range(steps):
            step = self._insert("step_execution", {
                "execution_id": execution, "step_id": f"s{number}", "iteration": 0, "step_type": "http",
                "status": "SUCCEEDED", "attempts": 1, "retry_count": 0, "created_at": created})
            self._insert("tool_execution", {
                "workspace_id": workspace or self.workspace, "tool_id": self.tool, "execution_id": execution,
                "step_execution_id": step, "attempt": 1, "status": "SUCCEEDED", "input": "{}", "created_at": created})
        return execution

    def order(self, execution: str, state: str) -> str:
        return self._insert("sideshift_order", {
            "updated_at": NOW, "workspace_id": self.workspace, "execution_id": execution,
            "external_id": uuid.uuid4().hex, "state": state, "shift_type": "fixed",
            "shift_id": None if state in ("PENDING_CREATE", "NEEDS_RECONCILIATION") else uuid.uuid4().hex,
            "deposit_coin": "BTC", "settle_coin": "ETH", "settle_address": "0xabc"})

    def effect(self, execution: str, state: str) -> str:
        return self._insert("side_effect", {
            "updated_at": NOW, "workspace_id": self.workspace, "execution_id": execution, "step_id": "s0",
            "iteration": 0, "kind": "http", "state": state, "request_hash": "h" * 64, "attempts": 1,
            "completed_at": NOW - 30 * DAY if state in ("DONE", "FAILED") else None})

    def exists(self, table: str, row_id: str) -> bool:
        with self.conn.cursor() as cur:
            cur.execute(f'SELECT 1 FROM "{table}" WHERE id = %s', (row_id,))
            return cur.fetchone() is not None

    def count(self, table: str, where: str = "TRUE", params: tuple[Any, ...] = ()) -> int:
        with self.conn.cursor() as cur:
            cur.execute(f'SELECT count(*) FROM "{table}" WHERE {where}', params)
            return int(cur.fetchone()[0])


@pytest.fixture
def rows(pg_url: str) -> Iterator[Rows]:
    conn = psycopg2.connect(pg_url)
    conn.autocommit = True
    bind_database(pg_url)
    try:
        yield Rows(conn)
    finally:
        conn.close()
        database.close_all()


def _settings(**changes: Any) -> Settings:
    # An artifact directory of its own: the orphan sweep must never walk a shared one.
    base = Settings(retention_days=7, dedup_window_hours=48, retention_batch_size=500,
                    artifact_dir=tempfile.mkdtemp(prefix="retention-artifacts-"))
    return dataclasses.replace(base, **changes)


def test_old_finished_executions_go_with_their_steps_and_tool_executions(rows):
    old = [rows.execution(status, finished_ago=10 * DAY, steps=2) for status in retention.FINISHED]
    recent = rows.execution("SUCCEEDED", finished_ago=3 * DAY)
    running = rows.execution("RUNNING", finished_ago=None, created_ago=60 * DAY)
    report = retention.run(_settings(), dry_run=False, now=NOW)
    assert [rows.exists("execution", e) for e in old] == [False] * 4
    assert rows.exists("execution", recent) and rows.exists("execution", running)
    assert rows.count("step_execution", "execution_id = ANY(%s::uuid[])", (old,)) == 0
    assert rows.count("tool_execution", "execution_id = ANY(%s::uuid[])", (old,)) == 0
    (acme,) = report.workspaces
    assert (acme.executions, acme.steps, acme.tool_executions, acme.held) == (4, 8, 8, 0)


def test_dry_run_counts_and_deletes_nothing(rows):
    old = [rows.execution(finished_ago=10 * DAY, steps=3) for _ in range(2)]
    parent = rows.execution("RUNNING", finished_ago=None)
    held = rows.execution(finished_ago=10 * DAY, parent_id=parent)
    report = retention.run(_settings(), dry_run=True, now=NOW)
    (acme,) = report.workspaces
    assert (acme.executions, acme.steps, acme.tool_executions, acme.held) == (2, 6, 6, 1)
    assert all(rows.exists("execution", e) for e in [*old, held])


def test_the_dedup_window_keeps_an_execution_past_its_retention(rows):
    # Retention 1 day, window 4 days: finished 2 days ago but created 3 days ago -> kept,
    # since a repeated delivery of its trigger must still be recognised; created 5 days ago -> gone.
    settings = _settings(retention_days=1, dedup_window_hours=96)
    inside = rows.execution(finished_ago=2 * DAY, created_ago=3 * DAY, dedup_key="delivery-1")
    outside = rows.execution(finished_ago=2 * DAY, created_ago=5 * DAY, dedup_key="delivery-2")
    retention.run(settings, dry_run=False, now=NOW)
    assert rows.exists("execution", inside)
    assert not rows.exists("execution", outside)
    # What the window means: after it, the same delivery is a new execution, not a duplicate.
    again = rows.execution(finished_ago=None, status="PENDING", dedup_key="delivery-2", created_ago=dt.timedelta(0))
    assert rows.exists("execution", again)


def test_an_unfinished_parent_child_or_rerun_keeps_the_execution(rows):
    running_parent = rows.execution("RUNNING", finished_ago=None, created_ago=40 * DAY)
    child_of_running = rows.execution(finished_ago=20 * DAY, parent_id=running_parent)
    parent_of_running = rows.execution(finished_ago=20 * DAY)
    rows.execution("PAUSED", finished_ago=None, parent_id=parent_of_running)
    lineage_root = rows.execution("FAILED", finished_ago=20 * DAY)
    rows.execution("RUNNING", finished_ago=None, lineage_root=lineage_root)
    finished_parent = rows.execution(finished_ago=20 * DAY)
    finished_child = rows.execution(finished_ago=20 * DAY, parent_id=finished_parent)
    report = retention.run(_settings(), dry_run=False, now=NOW)
    for kept in (child_of_running, parent_of_running, lineage_root):
        assert rows.exists("execution", kept)
    assert not rows.exists("execution", finished_parent) and not rows.exists("execution", finished_child)
    assert report.workspaces[0].held == 3


def test_a_pending_order_keeps_its_execution_a_settled_one_does_not(rows):
    kept = {state: rows.execution(finished_ago=20 * DAY) for state in retention.PENDING_ORDER_STATES}
    orders = {state: rows.order(execution, state) for state, execution in kept.items()}
    settled_execution = rows.execution(finished_ago=20 * DAY)
    settled = rows.order(settled_execution, "SETTLED")
    retention.run(_settings(), dry_run=False, now=NOW)
    assert all(rows.exists("execution", e) for e in kept.values())
    assert not rows.exists("execution", settled_execution)
    # The order itself stays (its money moved): only its link to the execution goes.
    assert rows.exists("sideshift_order", settled) and all(rows.exists("sideshift_order", o) for o in orders.values())
    assert rows.count("sideshift_order", "id = %s AND execution_id IS NULL", (settled,)) == 1


def test_an_unsettled_outside_call_keeps_its_execution(rows):
    kept = {state: rows.execution(finished_ago=20 * DAY) for state in retention.UNSETTLED_EFFECT_STATES}
    for state, execution in kept.items():
        rows.effect(execution, state)
    done = rows.execution(finished_ago=20 * DAY)
    rows.effect(done, "DONE")
    retention.run(_settings(), dry_run=False, now=NOW)
    assert all(rows.exists("execution", e) for e in kept.values())
    assert not rows.exists("execution", done)


def test_deletes_in_batches_until_nothing_is_left(rows):
    old = [rows.execution(finished_ago=(10 + n) * DAY) for n in range(7)]
    report = retention.run(_settings(retention_batch_size=2), dry_run=False, now=NOW)
    assert report.executions == 7
    assert not any(rows.exists("execution", e) for e in old)


def test_each_workspace_has_its_own_retention(rows):
    other = rows.new_workspace("keeper")
    other_workflow = rows._workflow(other)
    forever = rows.new_workspace("archive")
    forever_workflow = rows._workflow(forever)
    acme_old = rows.execution(finished_ago=10 * DAY)
    keeper_old = rows.execution(finished_ago=10 * DAY, workspace=other, workflow=other_workflow)
    keeper_older = rows.execution(finished_ago=40 * DAY, workspace=other, workflow=other_workflow)
    archived = rows.execution(finished_ago=4000 * DAY, workspace=forever, workflow=forever_workflow)
    settings = _settings(retention_workspace_days=(("keeper", 30), ("archive", 0)))
    report = retention.run(settings, dry_run=False, now=NOW)
    assert not rows.exists("execution", acme_old)
    assert rows.exists("execution", keeper_old) and not rows.exists("execution", keeper_older)
    assert rows.exists("execution", archived)
    assert {w.workspace: w.cutoff for w in report.workspaces}["archive"] is None


# ------------------------------------------------------------------ artifacts


def _artifact(rows: Rows, store: ArtifactStore, execution: str, created_ago: dt.timedelta, name: str,
              workspace: str | None = None) -> tuple[str, str]:
    """A stored file and its row (created ``created_ago`` before NOW); (row id, location)."""
    ref = store.put(name.encode() * 10, name)
    row = rows._insert("artifact", {"workspace_id": workspace or rows.workspace, "execution_id": execution,
                                    "type": "FILE", "name": ref.name, "url": ref.location, "size_bytes": ref.size,
                                    "mime_type": ref.mime, "sha256": ref.sha256, "created_at": NOW - created_ago})
    return row, ref.location


def _orphan(store: LocalArtifactStore, name: str, age: dt.timedelta, *, partial: bool = False) -> str:
    """A file without a row, last modified ``age`` before NOW (a step that never completed,
    or with ``partial`` a write that was interrupted)."""
    ref = store.put(b"orphan", name)
    path = store.root / ref.location.removeprefix("local:")
    if partial:
        path = path.rename(path.with_name(".partial-" + name))
    stamp = (NOW - age).replace(tzinfo=dt.UTC).timestamp()
    os.utime(path, (stamp, stamp))
    return "local:" + path.relative_to(store.root).as_posix()


def test_old_artifacts_go_with_their_bytes_and_old_orphan_files_are_swept(rows, tmp_path):
    store = LocalArtifactStore(tmp_path / "artifacts")
    settings = _settings(artifact_dir=str(store.root))
    gone_execution = rows.execution(finished_ago=10 * DAY)  # deleted by retention: its rows cascade
    _, with_execution = _artifact(rows, store, gone_execution, 10 * DAY, "gone.txt")
    held_parent = rows.execution("RUNNING", finished_ago=None)
    held = rows.execution(finished_ago=10 * DAY, parent_id=held_parent)  # kept: its parent runs
    old_row, old_of_held = _artifact(rows, store, held, 9 * DAY, "old.txt")
    recent_row, recent = _artifact(rows, store, held, 2 * DAY, "recent.txt")
    running = rows.execution("RUNNING", finished_ago=None, created_ago=60 * DAY)
    running_row, of_running = _artifact(rows, store, running, 59 * DAY, "running.txt")  # a later step may read it
    orphan = _orphan(store, "crashed.png", 2 * DAY)
    partial = _orphan(store, "half.bin", 3 * DAY, partial=True)
    young = _orphan(store, "in-flight.pdf", dt.timedelta(hours=1))  # a call may still be running
    for location in (recent, of_running):  # files are as old as their rows
        stamp = (NOW - 2 * DAY).replace(tzinfo=dt.UTC).timestamp()
        os.utime(store.root / location.removeprefix("local:"), (stamp, stamp))

    dry = retention.run(settings, dry_run=True, now=NOW)
    assert dry.workspaces[0].artifacts == 2 and dry.orphans.orphans == 2
    assert all(store.exists(x) for x in (with_execution, old_of_held, recent, of_running, orphan, partial, young))
    assert rows.count("artifact") == 4

    report = retention.run(settings, dry_run=False, now=NOW)

    assert report.workspaces[0].artifacts == 2 and report.workspaces[0].executions == 1
    assert not store.exists(with_execution) and not store.exists(old_of_held)
    assert not rows.exists("artifact", old_row) and rows.count("artifact") == 2
    assert store.exists(recent) and rows.exists("artifact", recent_row)
    assert store.exists(of_running) and rows.exists("artifact", running_row)
    assert not store.exists(orphan) and not store.exists(partial) and store.exists(young)
    assert (report.orphans.orphans, report.orphans.failed) == (2, 0)
    # Bytes of rows that went with their execution another way (a crash between the row's
    # delete and the file's) are orphans the next run removes once they are old.
    rows.conn.cursor().execute("DELETE FROM artifact WHERE id = %s", (recent_row,))
    later = retention.run(settings, dry_run=False, now=NOW + 3 * DAY)
    assert not store.exists(recent) and later.orphans.orphans == 2  # recent.txt and in-flight.pdf
    assert store.exists(of_running)


def test_artifact_retention_on_an_s3_compatible_server(rows):
    from shiftflow.kernel.artifacts.s3 import S3ArtifactStore
    from tests.tool_servers import MotoServer

    moto = MotoServer()
    try:
        settings = Settings.from_env({
            "SHIFTFLOW_MODE": "dev", "SHIFTFLOW_ARTIFACT_BACKEND": "s3", "SHIFTFLOW_S3_ENDPOINT_URL": moto.url,
            "SHIFTFLOW_S3_BUCKET": "retention", "SHIFTFLOW_S3_PREFIX": "runs", "SHIFTFLOW_S3_ACCESS_KEY_ID": "testing",
            "SHIFTFLOW_S3_SECRET_ACCESS_KEY": "testing", "SHIFTFLOW_S3_TIMEOUT_SECONDS": "5"})
        settings = dataclasses.replace(settings, retention_days=7, dedup_window_hours=48)
        store = S3ArtifactStore.from_settings(settings)
        store.client.create_bucket(Bucket="retention")
        store.client.put_object(Bucket="retention", Key="elsewhere/not-ours.txt", Body=b"x")  # outside the prefix
        # Real time: the server stamps objects now; retention looks from two days on.
        now = dt.datetime.now(dt.UTC).replace(tzinfo=None) + 2 * DAY
        old = rows.execution(finished_ago=None, status="RUNNING")
        rows.conn.cursor().execute("UPDATE execution SET status = 'SUCCEEDED', completed_at = %s WHERE id = %s",
                                   (now - 10 * DAY, old))
        expired_row, expired = _artifact(rows, store, old, 9 * DAY, "expired.txt")
        rows.conn.cursor().execute("UPDATE artifact SET created_at = %s WHERE id = %s", (now - 9 * DAY, expired_row))
        running = rows.execution("RUNNING", finished_ago=None)
        kept_row, kept = _artifact(rows, store, running, dt.timedelta(0), "kept.txt")
        rows.conn.cursor().execute("UPDATE artifact SET created_at = %s WHERE id = %s", (now - DAY, kept_row))
        orphan = store.put(b"no row", "orphan.txt").location

        report = retention.run(settings, dry_run=False, now=now, store=store)

        assert report.workspaces[0].artifacts == 1 and report.orphans.orphans == 1
        assert not store.exists(expired) and not store.exists(orphan)
        assert store.exists(kept) and rows.exists("artifact", kept_row)
        assert store.client.head_object(Bucket="retention", Key="elsewhere/not-ours.txt")
    finally:
        moto.stop()


# ------------------------------------------------------------------ MongoDB TTL


def test_ttl_indexes_follow_the_settings(mongo_admin, mongo_db):
    from shiftflow.kernel.mongo import ANALYTICS_EVENTS, EXECUTION_LOGS, INTEGRATION_USAGE
    from shiftflow.kernel.mongo_ttl import INDEX_NAME, ensure_ttl_indexes

    db = mongo_admin[mongo_db]
    settings = Settings()
    assert ensure_ttl_indexes(db, settings) == {EXECUTION_LOGS: "created", ANALYTICS_EVENTS: "created",
                                                 INTEGRATION_USAGE: "created"}

    def ttl(collection: str) -> Any:
        info = db[collection].index_information().get(INDEX_NAME)
        return None if info is None else (info["key"], int(info["expireAfterSeconds"]))

    assert ttl(EXECUTION_LOGS) == ([("timestamp", 1)], 30 * 86_400)
    assert ttl(ANALYTICS_EVENTS) == ([("timestamp", 1)], 365 * 86_400)
    assert ensure_ttl_indexes(db, settings)[EXECUTION_LOGS] == "kept"
    changed = dataclasses.replace(settings, log_retention_days=7, usage_retention_days=0)
    done = ensure_ttl_indexes(db, changed)
    assert (done[EXECUTION_LOGS], done[INTEGRATION_USAGE]) == ("changed", "dropped")
    assert ttl(EXECUTION_LOGS) == ([("timestamp", 1)], 7 * 86_400)
    assert ttl(INTEGRATION_USAGE) is None
    json.dumps(done)  # the CLI prints it


# ------------------------------------------------------------------ CLI


def test_cli_dry_run_prints_what_it_would_delete(rows, pg_url, mongo_url, mongo_db, monkeypatch, capsys):
    from shiftflow.cli.main import main

    old = rows.execution(finished_ago=400 * DAY, steps=2)
    for name, value in {"SHIFTFLOW_MODE": "production", "SHIFTFLOW_DATABASE_URL": pg_url,
                        "SHIFTFLOW_AMQP_URL": "amqp://guest:guest@127.0.0.1:5672/%2F", "SHIFTFLOW_MONGO_URL": mongo_url,
                        "SHIFTFLOW_MONGO_DB": mongo_db, "SHIFTFLOW_RETENTION_DAYS": "30"}.items():
        monkeypatch.setenv(name, value)
    assert main(["retention", "run", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "acme: finished before" in out and "would delete 1 executions, 2 steps, 2 tool executions" in out
    assert rows.exists("execution", old)
    assert main(["retention", "run", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["workspaces"][0]["executions"] == 1 and data["mongo_ttl"]["execution_logs"] in ("created", "kept")
    assert not rows.exists("execution", old)
