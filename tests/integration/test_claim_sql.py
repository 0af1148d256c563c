"""``models.engine.claim_sql``: the one-statement claim takes only the plain case, on PostgreSQL."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from shiftflow.models.engine import claim_sql
from shiftflow.models.tables.base import utcnow
from shiftflow.models.tables.executions import Execution, StepExecution
from shiftflow.models.tables.tenancy import Workspace
from shiftflow.models.tables.workflows import Workflow

pytestmark = pytest.mark.integration


def _step(status: str = "PENDING", *, execution_status: str = "RUNNING", **fields: object) -> StepExecution:
    workspace = Workspace.create(name=f"w{uuid.uuid4().hex[:6]}", slug=f"w{uuid.uuid4().hex[:6]}")
    workflow = Workflow.create(workspace=workspace, name="w")
    execution = Execution.create(workflow=workflow, workflow_version=1, workspace=workspace,
                                 dedup_key=uuid.uuid4().hex, status="RUNNING", trigger_data={"n": 1},
                                 started_at=utcnow())
    step = StepExecution.create(execution=execution, step_id="call", iteration=0, step_type="http", status=status,
                                **fields)
    if execution_status == "PAUSED":
        Execution.update(status="PAUSED").where(Execution.id == execution.id).execute()
    elif execution_status != "RUNNING":
        Execution.update(status=execution_status, completed_at=utcnow()).where(
            Execution.id == execution.id).execute()
    return step


def _claim(step: StepExecution, limit: int = 5) -> tuple[StepExecution, Execution] | None:
    now = utcnow()
    return claim_sql.claim_pending(str(step.execution_id), step.step_id, step.iteration, token="t-1",
                                   lease_until=now + dt.timedelta(seconds=30), now=now, delivery_limit=limit)


def test_a_pending_step_is_claimed_once_with_its_execution(pg_bound: None) -> None:
    step = _step()
    claimed = _claim(step)
    assert claimed is not None
    row, execution = claimed
    assert (row.id, row.status, row.claimed_by, row.attempts) == (step.id, "RUNNING", "t-1", 1)
    assert row.started_at is not None and row.lease_until is not None
    assert execution.id == step.execution_id and execution.trigger_data == {"n": 1}
    stored = StepExecution.get_by_id(step.id)
    assert (stored.status, stored.claimed_by, stored.attempts) == ("RUNNING", "t-1", 1)
    assert _claim(step) is None  # a second copy goes to the general claim


@pytest.mark.parametrize("case", ["finished", "backing_off", "over_limit", "execution_over", "execution_paused"])
def test_every_other_case_is_left_to_the_general_claim(pg_bound: None, case: str) -> None:
    step = {
        "finished": lambda: _step("SUCCEEDED"),
        "backing_off": lambda: _step(resume_at=utcnow() + dt.timedelta(seconds=60)),
        "over_limit": lambda: _step(attempts=3, retry_count=1),
        "execution_over": lambda: _step(execution_status="CANCELLED"),
        # A paused execution (an agent task's pause) runs nothing until it is resumed.
        "execution_paused": lambda: _step(execution_status="PAUSED"),
    }[case]()
    before = StepExecution.get_by_id(step.id)
    assert _claim(step, limit=2) is None
    after = StepExecution.get_by_id(step.id)
    assert (after.status, after.attempts, after.claimed_by) == (before.status, before.attempts, before.claimed_by)


def test_lock_with_headers_reads_the_execution_and_its_header_rows(pg_bound: None) -> None:
    from shiftflow.kernel.errors import NotFound
    from shiftflow.models.engine import lock_sql
    from shiftflow.models.tables.base import database

    step = _step("SUCCEEDED", output={"a": 1})
    StepExecution.create(execution=step.execution_id, step_id="call", iteration=1, step_type="http",
                         status="SUCCEEDED")
    StepExecution.create(execution=step.execution_id, step_id="next", iteration=0, step_type="http",
                         status="PENDING")
    with database.atomic():
        execution, headers = lock_sql.lock_with_headers(str(step.execution_id))
    assert execution.id == step.execution_id and execution.trigger_data == {"n": 1}
    assert {k: (v.status, v.iteration) for k, v in headers.items()} == {"call": ("SUCCEEDED", 0),
                                                                         "next": ("PENDING", 0)}
    assert headers["call"].output == {"a": 1}
    bare = _step()
    StepExecution.delete().where(StepExecution.id == bare.id).execute()
    with database.atomic():
        assert lock_sql.lock_with_headers(str(bare.execution_id))[1] == {}
        with pytest.raises(NotFound):
            lock_sql.lock_with_headers(str(uuid.uuid4()))
