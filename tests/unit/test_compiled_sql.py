"""``models.engine.prepared_sql``: the cached-SQL insert and lookup write and read exactly what Peewee does."""

from __future__ import annotations

import uuid

import pytest

from shiftflow.models.engine import prepared_sql
from shiftflow.models.tables.base import utcnow
from shiftflow.models.tables.executions import Execution, StepExecution
from shiftflow.models.tables.tenancy import Workspace
from shiftflow.models.tables.workflows import Workflow


@pytest.fixture
def workflow(sqlite_models):
    workspace = Workspace.create(name="Acme", slug="acme")
    return Workflow.create(workspace=workspace, name="w", max_executions=7)


def _values(workflow: Workflow, key: str) -> dict[str, object]:
    return {"id": uuid.uuid4(), "workflow": workflow.id, "workflow_version": 1, "workspace": workflow.workspace_id,
            "dedup_key": key, "status": "RUNNING", "trigger_data": {"n": [1, "two", None]}, "started_at": utcnow()}


def test_insert_matches_peewee_including_defaults(workflow):
    mine, theirs = _values(workflow, "compiled"), _values(workflow, "peewee")
    assert prepared_sql.insert_rows(Execution, [mine]) == 1
    Execution.insert(theirs).execute()
    a, b = Execution.get_by_id(mine["id"]), Execution.get_by_id(theirs["id"])
    skip = {"id", "dedup_key", "created_at", "started_at"}
    assert {k: v for k, v in a.__data__.items() if k not in skip} == {
        k: v for k, v in b.__data__.items() if k not in skip}
    # Defaults were filled as Model.insert fills them (not left NULL).
    assert a.context == {} and a.progress == 0 and a.max_retries == 3 and a.source == "manual"
    assert a.trigger_data == {"n": [1, "two", None]}


def test_insert_ignoring_conflicts_reports_what_it_wrote(workflow):
    first = _values(workflow, "same")
    assert prepared_sql.insert_rows(Execution, [first], ignore_conflicts=True) == 1
    again = dict(_values(workflow, "same"))  # new id, same (workflow, dedup_key)
    assert prepared_sql.insert_rows(Execution, [again], ignore_conflicts=True) == 0
    assert Execution.select().where(Execution.dedup_key == "same").count() == 1
    with pytest.raises(Exception, match="(?i)unique"):
        prepared_sql.insert_rows(Execution, [_values(workflow, "same")])


def test_multi_row_insert_with_rows_of_different_keys(workflow):
    execution_id = _values(workflow, "rows")["id"]
    prepared_sql.insert_rows(Execution, [dict(_values(workflow, "rows"), id=execution_id)])
    rows = [
        {"id": uuid.uuid4(), "execution": execution_id, "step_id": "a", "step_type": "transform",
         "status": "SUCCEEDED", "output": {"x": 1}, "attempts": 1, "completed_at": utcnow()},
        {"id": uuid.uuid4(), "execution": execution_id, "step_id": "b", "step_type": "http", "status": "PENDING"},
    ]
    assert prepared_sql.insert_rows(StepExecution, rows) == 2
    got = {s.step_id: s for s in StepExecution.select()}
    assert got["a"].output == {"x": 1} and got["a"].attempts == 1
    # A key only the first row has is NULL (or its default) in the second, not an error.
    assert got["b"].output is None and got["b"].attempts == 0 and got["b"].completed_at is None


def _steps(execution_id: object) -> list[dict[str, object]]:
    return [
        {"id": uuid.uuid4(), "execution": execution_id, "step_id": "a", "step_type": "transform",
         "status": "SUCCEEDED", "output": {"x": [1, 2]}, "attempts": 1, "started_at": utcnow(), "duration_ms": 3},
        {"id": uuid.uuid4(), "execution": execution_id, "step_id": "b", "step_type": "http", "status": "PENDING"},
    ]


def _check_parent_with_children() -> None:
    """insert_with_children on whatever database the models are bound to."""
    workflow = Workflow.get(Workflow.name == "w")
    first = _values(workflow, "pair")
    assert prepared_sql.insert_with_children(Execution, first, StepExecution, _steps(first["id"])) is True
    steps = {s.step_id: s for s in StepExecution.select().where(StepExecution.execution == first["id"])}
    assert steps["a"].output == {"x": [1, 2]} and steps["a"].duration_ms == 3 and steps["b"].attempts == 0
    # A duplicate (same workflow and dedup key, new ids) writes neither the execution nor its steps.
    second = _values(workflow, "pair")
    assert prepared_sql.insert_with_children(Execution, second, StepExecution, _steps(second["id"])) is False
    assert Execution.select().where(Execution.dedup_key == "pair").count() == 1
    assert StepExecution.select().count() == 2
    # A failing child rolls the parent back too: nothing half-written.
    third = _values(workflow, "atomic")
    broken = _steps(third["id"]) + [dict(_steps(third["id"])[0])]  # duplicate (execution, step_id)
    with pytest.raises(Exception, match="(?i)unique|duplicate"):
        prepared_sql.insert_with_children(Execution, third, StepExecution, broken)
    assert not Execution.select().where(Execution.dedup_key == "atomic").exists()


def test_parent_with_children_sqlite(workflow):
    _check_parent_with_children()


def test_unknown_field_is_named(workflow):
    with pytest.raises(ValueError, match="no field.*bogus"):
        prepared_sql.insert_rows(Execution, [dict(_values(workflow, "x"), bogus=1)])


def test_get_by_id_is_peewees_instance(workflow):
    found = prepared_sql.get_by_id(Workflow, workflow.id)
    assert found is not None and found.__data__ == Workflow.get_by_id(workflow.id).__data__
    assert found.max_executions == 7 and found.workspace_id == workflow.workspace_id
    assert not found.is_dirty()
    assert prepared_sql.get_by_id(Workflow, uuid.uuid4()) is None


@pytest.mark.integration
def test_postgres_round_trip(pg_url):
    from shiftflow.kernel.db import bind_database
    from shiftflow.models.manage import catalog

    db = bind_database(pg_url)
    try:
        workspace = catalog.ensure_workspace("compiled")
        wf = Workflow.create(workspace=workspace, name="w")
        values = _values(wf, "pg")
        assert prepared_sql.insert_rows(Execution, [values], ignore_conflicts=True) == 1
        assert prepared_sql.insert_rows(Execution, [dict(values, id=uuid.uuid4())], ignore_conflicts=True) == 0
        row = Execution.get_by_id(values["id"])
        assert row.trigger_data == {"n": [1, "two", None]} and row.context == {}
        assert prepared_sql.get_by_id(Workflow, wf.id).__data__ == Workflow.get_by_id(wf.id).__data__
        _check_parent_with_children()  # the one-statement form
    finally:
        db.close_all()  # type: ignore[attr-defined]
