"""Phases, progress, checkpoints, timeline schemas and retry rules: bad input is refused
naming the field, and nothing is half-written."""

from __future__ import annotations

from typing import Any

import pytest

from shiftflow.kernel.definition import validate
from shiftflow.kernel.errors import DefinitionError
from shiftflow.kernel.phases import MAX_CHECKPOINT_BYTES, PhaseError, check_phase, check_progress, check_state
from shiftflow.kernel.timeline_types import SCHEMAS, TimelineError, check_event


@pytest.mark.parametrize("phase", ["coding", "", None, 3, "Planning"])
def test_an_unknown_phase_is_refused_naming_the_field(phase):
    with pytest.raises(PhaseError) as caught:
        check_phase(phase)
    assert caught.value.field == "phase" and "planning" in str(caught.value)


@pytest.mark.parametrize("progress", [-1, 101, 100.5, True, "50", None])
def test_progress_outside_0_to_100_is_refused_naming_the_field(progress):
    with pytest.raises(PhaseError) as caught:
        check_progress(progress)
    assert caught.value.field == "progress"


def test_valid_phases_progress_and_states_pass():
    assert check_phase("deploying") == "deploying"
    assert (check_progress(0), check_progress(99.9), check_progress(100)) == (0, 99, 100)
    assert check_state({"done": ["planning"]}) == {"done": ["planning"]}


@pytest.mark.parametrize("state", [[1], "x", {"blob": "x" * MAX_CHECKPOINT_BYTES}, {"f": object()}])
def test_a_checkpoint_must_be_a_small_json_object(state):
    with pytest.raises(PhaseError) as caught:
        check_state(state)
    assert caught.value.field == "state"


def test_every_timeline_type_checks_its_data():
    check_event("phase_update", {"phase": "testing", "progress": 40})
    check_event("deploy_success", {"deployment_id": "dep_1", "url": "https://x.example"})
    with pytest.raises(TimelineError, match="phase_update.data.phase"):
        check_event("phase_update", {"phase": "coding"})
    with pytest.raises(TimelineError, match="progress"):
        check_event("progress", {"progress": 140})
    with pytest.raises(TimelineError, match="type: 'nope'"):
        check_event("nope", {})
    for name, schema in SCHEMAS.items():  # every type refuses fields it does not know
        with pytest.raises(TimelineError):
            check_event(name, {**{k: None for k in schema["required"]}, "unknown_field": 1})


def _with_retries(retries: Any) -> dict[str, Any]:
    return {"name": "r", "retries": retries, "steps": [{"id": "a", "type": "task", "with": {"task": "agent.phased"}}]}


def test_workflow_retries_are_validated_and_default_to_ten():
    from shiftflow.models.engine.retries import backoff_seconds, policy

    assert policy(validate(_with_retries({}))) == {"max": 10, "backoff": 5.0, "max_backoff": 3600.0}
    assert policy(validate({"name": "n", "steps": [{"id": "a", "type": "stop"}]})) is None
    with pytest.raises(DefinitionError, match=r"retries.max: must be <= 100"):
        validate(_with_retries({"max": 101}))
    with pytest.raises(DefinitionError, match="retries"):
        validate(_with_retries({"tries": 3}))
    assert [backoff_seconds(n, 5, 30) for n in (1, 2, 3, 4, 5)] == [5, 10, 20, 30, 30]


@pytest.fixture
def dev_engine(tmp_path: Any) -> Any:
    """Dev mode: SQLite, no worker (the test drives the step)."""
    from shiftflow.kernel.db import bind_database
    from shiftflow.kernel.settings import Settings, configure
    from shiftflow.models.tables.registry import create_all

    settings = configure(Settings.from_env({"SHIFTFLOW_MODE": "dev", "SHIFTFLOW_DATA_DIR": str(tmp_path)}))
    db = bind_database(settings.database_url)
    create_all(db)
    yield settings
    db.close()


def test_a_step_reporting_bad_values_writes_nothing(dev_engine):
    from shiftflow.kernel.contracts import StepPayload, TriggerPayload
    from shiftflow.models.engine.checkpoints import StepContext
    from shiftflow.models.engine.runs import claim_step
    from shiftflow.models.engine.start import start_execution
    from shiftflow.models.manage import catalog
    from shiftflow.models.tables.executions import Execution

    workflow = catalog.apply_definition(catalog.ensure_workspace("t"), _with_retries({"max": 2})).workflow
    started = start_execution(TriggerPayload(str(workflow.id), "k", "test", {}))
    assert started.execution is not None
    claim = claim_step(StepPayload(str(started.execution.id), "a"), delivery_limit=5)
    ctx = StepContext(claim)
    before = Execution.get_by_id(started.execution.id)
    for call in (lambda: ctx.report(phase="coding", progress=50), lambda: ctx.report(progress=101),
                 lambda: ctx.checkpoint(["not", "an", "object"]), lambda: ctx.checkpoint({}, phase="shipping")):
        with pytest.raises(PhaseError):
            call()
    after = Execution.get_by_id(started.execution.id)
    assert (after.phase, after.progress, after.phases, after.checkpoints) == (
        before.phase, before.progress, before.phases, before.checkpoints)
    assert ctx.last_checkpoint() is None

    ctx.report(phase="planning", progress=10)
    assert ctx.checkpoint({"done": ["planning"]}) == 1
    assert ctx.checkpoint({"done": ["planning", "implementing"]}, phase="implementing") == 2
    row = Execution.get_by_id(started.execution.id)
    assert (row.phase, row.progress) == ("planning", 10)
    assert row.checkpoints["a"]["number"] == 2 and row.checkpoints["a"]["phase"] == "implementing"
    assert ctx.last_checkpoint() == {"done": ["planning", "implementing"]}


def test_the_packaged_example_is_the_one_in_examples():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    assert (root / "shiftflow" / "examples" / "multi_phase.yaml").read_text() == (
        root / "examples" / "multi_phase" / "workflow.yaml").read_text()
    validate(__import__("yaml").safe_load((root / "examples" / "multi_phase" / "workflow.yaml").read_text()))


def test_the_shipped_pattern_flow_is_a_valid_runnable_definition():
    from shiftflow.kernel.runnable import check_runnable
    from shiftflow.models.patterns import flow

    definition = validate(flow.definition(deploy_url="https://deploy.example/v1"))
    check_runnable(definition)
    roles = {s.id: s.inputs.get("role") for s in definition.steps if s.type == "approval"}
    assert roles == {"user_approval": "member", "admin_verification": "admin"}
