"""The models on SQLite (dev mode): every table builds, JSON round-trips, unique keys and
CHECK constraints hold, and the registry lists every model in dependency order."""

from __future__ import annotations

import datetime as dt
import importlib
import pkgutil
from collections.abc import Callable
from decimal import Decimal

import peewee
import pytest

import shiftflow.models
from shiftflow.models.tables.base import BaseModel, utcnow
from shiftflow.models.tables.executions import Execution, StepExecution
from shiftflow.models.tables.llm_calls import LlmCall
from shiftflow.models.tables.migrations import MigrationError, upgrade
from shiftflow.models.tables.prompts import Prompt
from shiftflow.models.tables.registry import ALL_MODELS, create_all
from shiftflow.models.tables.schedules import Schedule
from shiftflow.models.tables.sideshift_orders import SideShiftOrder
from shiftflow.models.tables.tenancy import Workspace
from shiftflow.models.tables.workflows import Workflow

#: Tables that are not tenant data: catalogues, market data, the tenants themselves,
#: and children reached through a tenant-owned parent (see docs/seed-mapping.md).
NOT_TENANT_SCOPED = {
    "user",
    "workspace",
    "integration",
    "integration_trigger",
    "workflow_template",
    "tool",
    "price_cache",
    "dead_letter",
    "trigger_delivery",
    "workflow_version",
    "webhook",
    "step_execution",
}


@pytest.fixture
def db(sqlite_models):
    return sqlite_models


@pytest.fixture
def workflow(db):
    workspace = Workspace.create(name="Acme", slug="acme")
    return Workflow.create(workspace=workspace, name="swap on dip")


def _execution(workflow: Workflow, dedup_key: str = "d1", **fields) -> Execution:
    return Execution.create(
        workflow=workflow, workflow_version=1, workspace=workflow.workspace_id, dedup_key=dedup_key, **fields
    )


def test_create_all_builds_every_table_and_is_repeatable(db):
    assert sorted(db.get_tables()) == sorted(m._meta.table_name for m in ALL_MODELS)
    create_all(db)  # safe: a second call changes nothing
    assert "idx_api_keys_hash" in {i.name for i in db.get_indexes("api_key")}


def test_registry_lists_every_model_once_in_dependency_order():
    for info in pkgutil.walk_packages(shiftflow.models.__path__, "shiftflow.models."):
        importlib.import_module(info.name)
    found, todo = set(), list(BaseModel.__subclasses__())
    while todo:
        model = todo.pop()
        todo.extend(model.__subclasses__())
        if model.__module__.startswith("shiftflow.models.") and "_meta" in vars(model):
            found.add(model)
    found.discard(shiftflow.models.tables.base.TimestampedModel)
    assert found == set(ALL_MODELS)
    assert len(ALL_MODELS) == len(set(ALL_MODELS))
    position = {model: i for i, model in enumerate(ALL_MODELS)}
    for model in ALL_MODELS:
        for fk in model._meta.refs:
            if fk.rel_model is not model:
                assert position[fk.rel_model] < position[model], f"{model.__name__}.{fk.name}"


def test_every_name_fits_postgresql_identifiers():
    for model in ALL_MODELS:
        assert len(model._meta.table_name) <= 63
        for index in model._meta.fields_to_index():
            assert len(index._name) <= 63, index._name


def test_tenant_tables_carry_an_indexed_workspace():
    for model in ALL_MODELS:
        table = model._meta.table_name
        if table in NOT_TENANT_SCOPED:
            continue
        field = model._meta.fields.get("workspace") or model._meta.fields.get("workspace_id")
        assert field is not None, f"{table} has no workspace column"
        leading = {index._expressions[0].column_name for index in model._meta.fields_to_index()}
        assert field.column_name in leading, f"{table}.{field.column_name} is not indexed"


@pytest.mark.parametrize("value", [{"a": [1, 2], "b": None}, [1, "two", {"three": 3}], "just a string", 42])
def test_json_fields_round_trip(workflow, value):
    execution = _execution(workflow, trigger_data=value, result=value)
    again = Execution.get_by_id(execution.id)
    assert again.trigger_data == value
    assert again.result == value


def test_json_null_stays_none(workflow):
    assert Execution.get_by_id(_execution(workflow).id).result is None


def test_decimal_cost_round_trips(workflow):
    execution = _execution(workflow, status="RUNNING", started_at=utcnow())
    call = LlmCall.create(workspace=workflow.workspace_id, execution=execution, cost_usd=Decimal("0.045"))
    assert LlmCall.get_by_id(call.id).cost_usd == Decimal("0.045000")


def test_execution_is_unique_per_workflow_and_dedup_key(workflow):
    _execution(workflow, "delivery-1")
    with pytest.raises(peewee.IntegrityError):
        _execution(workflow, "delivery-1")
    _execution(workflow, "delivery-2")  # another key of the same workflow is another execution
    assert sorted(e.dedup_key for e in Execution.select()) == ["delivery-1", "delivery-2"]


def test_step_is_unique_per_execution_step_and_iteration(workflow):
    execution = _execution(workflow)
    StepExecution.create(execution=execution, step_id="swap", iteration=0, step_type="sideshift")
    StepExecution.create(execution=execution, step_id="swap", iteration=1, step_type="sideshift")
    with pytest.raises(peewee.IntegrityError):
        StepExecution.create(execution=execution, step_id="swap", iteration=1, step_type="sideshift")


def test_sideshift_order_may_exist_before_its_shift_id(workflow):
    common = {
        "workspace": workflow.workspace_id,
        "shift_type": "fixed",
        "deposit_coin": "eth",
        "settle_coin": "btc",
        "settle_address": "bc1q...",
    }
    SideShiftOrder.create(external_id="e1", **common)
    SideShiftOrder.create(external_id="e2", **common)  # two NULL shift ids do not collide
    SideShiftOrder.create(external_id="e3", shift_id="8c9ba87d02a801a2f254", state="OPEN", **common)
    with pytest.raises(peewee.IntegrityError):
        SideShiftOrder.create(external_id="e4", shift_id="8c9ba87d02a801a2f254", state="OPEN", **common)


def _running(workflow: Workflow, key: str) -> Execution:
    return _execution(workflow, key, status="RUNNING", started_at=utcnow())


def _order(workflow: Workflow, **fields) -> SideShiftOrder:
    return SideShiftOrder.create(
        workspace=workflow.workspace_id,
        external_id="x",
        shift_type="fixed",
        deposit_coin="eth",
        settle_coin="btc",
        settle_address="a",
        **fields,
    )


#: Rows each CHECK constraint must refuse, on SQLite as on PostgreSQL.
BAD_ROWS: dict[str, Callable[[Workflow], object]] = {
    "negative cost": lambda w: LlmCall.create(
        workspace=w.workspace_id, execution=_running(w, "c"), cost_usd=-1
    ),
    "zero latency": lambda w: LlmCall.create(
        workspace=w.workspace_id, execution=_running(w, "l"), latency_ms=0
    ),
    "running without start": lambda w: _execution(w, "r", status="RUNNING"),
    "succeeded without completion": lambda w: _execution(w, "s", status="SUCCEEDED", started_at=utcnow()),
    "unknown status": lambda w: _execution(w, "u", status="CHECKING_CONDITIONS"),
    "progress over 100": lambda w: _execution(w, "p", progress=101),
    "published prompt without date": lambda w: Prompt.create(
        workspace=w.workspace_id, name="p", template="t", status="PUBLISHED"
    ),
    "prompt version 0": lambda w: Prompt.create(workspace=w.workspace_id, name="p", template="t", version=0),
    "cron without expression": lambda w: Schedule.create(workspace=w.workspace_id, workflow=w, kind="CRON"),
    "open order without shift id": lambda w: _order(w, state="OPEN"),
    "unknown order state": lambda w: _order(w, state="DONE"),
}


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_check_constraints_reject_bad_rows(workflow, case):
    with pytest.raises(peewee.IntegrityError, match="CHECK constraint failed"):
        BAD_ROWS[case](workflow)


def test_check_constraints_accept_good_rows(workflow):
    now = utcnow()
    done = _execution(
        workflow, "ok", status="SUCCEEDED", started_at=now, completed_at=now + dt.timedelta(seconds=1)
    )
    LlmCall.create(workspace=workflow.workspace_id, execution=done, cost_usd=0, latency_ms=1)
    Prompt.create(
        workspace=workflow.workspace_id, name="p", template="t", status="PUBLISHED", published_at=now
    )
    Schedule.create(
        workspace=workflow.workspace_id, workflow=workflow, kind="CRON", cron_expression="0 9 * * *"
    )
    # Stored as written, read back from the database.
    assert Execution.get_by_id(done.id).status == "SUCCEEDED"
    assert [c.execution_id for c in LlmCall.select()] == [done.id]
    assert [(r.name, r.status) for r in Prompt.select()] == [("p", "PUBLISHED")]
    assert [(s.kind, s.cron_expression) for s in Schedule.select()] == [("CRON", "0 9 * * *")]


@pytest.mark.parametrize(
    ("name", "where"),
    [
        ("idx_api_keys_hash", "WHERE is_active"),
        ("idx_prompts_status_published", "WHERE status = 'PUBLISHED'"),
        ("idx_sideshift_order_reconcile", "WHERE state = 'NEEDS_RECONCILIATION'"),
    ],
)
def test_partial_indexes_keep_their_condition(db, name, where):
    (sql,) = db.execute_sql(
        "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = ?", (name,)
    ).fetchone()
    assert sql.endswith(where)


def test_migrations_refuse_sqlite(db):
    with pytest.raises(MigrationError, match="PostgreSQL-only"):
        upgrade(db)
