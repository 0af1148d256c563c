"""``flow.rollup_stats``: workflow counters recomputed for the workflows that ran recently."""

from __future__ import annotations

import datetime as dt
import uuid

from shiftflow.models.engine.flow_control import rollup_stats
from shiftflow.models.tables.base import utcnow
from shiftflow.models.tables.executions import Execution
from shiftflow.models.tables.tenancy import Workspace
from shiftflow.models.tables.workflows import Workflow


def _run(workflow: Workflow, status: str, created: dt.datetime) -> None:
    done = None if status in ("PENDING", "RUNNING") else created
    Execution.create(id=uuid.uuid4(), workflow=workflow, workflow_version=1, workspace=workflow.workspace_id,
                     dedup_key=str(uuid.uuid4()), status=status, created_at=created, started_at=created,
                     completed_at=done)


def test_counts_of_recently_run_workflows_only(sqlite_models):
    workspace = Workspace.create(name="Acme", slug="acme")
    busy, idle = Workflow.create(workspace=workspace, name="busy"), Workflow.create(workspace=workspace, name="idle")
    now, old = utcnow(), utcnow() - dt.timedelta(hours=2)
    for status in ("SUCCEEDED", "SUCCEEDED", "FAILED", "TIMED_OUT", "RUNNING"):
        _run(busy, status, now)
    _run(busy, "SUCCEEDED", old)  # old runs still count in the totals
    _run(idle, "SUCCEEDED", old)

    assert rollup_stats(now - dt.timedelta(minutes=1)) == 1  # only "busy" ran since
    busy, idle = Workflow.get_by_id(busy.id), Workflow.get_by_id(idle.id)
    assert (busy.successful_executions, busy.failed_executions, busy.execution_count) == (3, 2, 6)
    assert busy.last_executed_at == now
    assert (idle.successful_executions, idle.execution_count) == (0, 0)  # not touched
