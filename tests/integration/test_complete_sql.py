"""``models.engine.complete_sql``: a step's outcome and the next step's row in one statement,
both or neither."""

from __future__ import annotations

import uuid

import pytest

from shiftflow.models.engine import complete_sql
from shiftflow.models.tables.base import utcnow
from shiftflow.models.tables.executions import Execution, StepExecution
from shiftflow.models.tables.tenancy import Workspace
from shiftflow.models.tables.workflows import Workflow

pytestmark = pytest.mark.integration


def _running() -> StepExecution:
    workspace = Workspace.create(name=f"w{uuid.uuid4().hex[:6]}", slug=f"w{uuid.uuid4().hex[:6]}")
    workflow = Workflow.create(workspace=workspace, name="w")
    execution = Execution.create(workflow=workflow, workflow_version=1, workspace=workspace,
                                 dedup_key=uuid.uuid4().hex, status="RUNNING", trigger_data={}, started_at=utcnow())
    return StepExecution.create(execution=execution, step_id="a", iteration=0, step_type="http", status="RUNNING",
                                started_at=utcnow())


def _next_row(step: StepExecution) -> dict[str, object]:
    return {"id": uuid.uuid4(), "execution": step.execution_id, "step_id": "b", "iteration": 0,
            "step_type": "http", "status": "PENDING", "created_at": utcnow()}


def test_the_outcome_and_the_next_row_are_written_together(pg_bound: None) -> None:
    step = _running()
    row = _next_row(step)
    done = complete_sql.complete_and_insert(step.id, {"status": "SUCCEEDED", "output": {"x": [1, "y"]},
                                                      "completed_at": utcnow(), "error": None},
                                            status_in=("RUNNING",), row=row)
    assert done is True
    finished = StepExecution.get_by_id(step.id)
    assert (finished.status, finished.output, finished.completed_at is not None) == ("SUCCEEDED", {"x": [1, "y"]},
                                                                                     True)
    nxt = StepExecution.get_by_id(row["id"])
    assert (nxt.step_id, nxt.status, nxt.attempts, nxt.retry_count, nxt.completed_at) == ("b", "PENDING", 0, 0,
                                                                                          None)


def test_a_step_that_moved_on_writes_neither(pg_bound: None) -> None:
    step = _running()
    StepExecution.update(status="CANCELLED", completed_at=utcnow()).where(StepExecution.id == step.id).execute()
    row = _next_row(step)
    done = complete_sql.complete_and_insert(step.id, {"status": "SUCCEEDED", "output": 1},
                                            status_in=("RUNNING",), row=row)
    assert done is False
    assert StepExecution.get_by_id(step.id).status == "CANCELLED"
    assert StepExecution.get_or_none(StepExecution.id == row["id"]) is None
