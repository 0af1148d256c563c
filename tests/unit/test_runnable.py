"""A definition that validates can run: the checks the scheduler, the poller and the
reference resolver make at run time are made when a definition is validated or applied."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from shiftflow.kernel.db import bind_database, database
from shiftflow.kernel.definition import validate
from shiftflow.kernel.errors import DefinitionError
from shiftflow.kernel.runnable import check_runnable, references
from shiftflow.models.manage import catalog
from shiftflow.models.tables.registry import create_all
from shiftflow.models.tables.workflows import Workflow

CLI = str(Path(sys.executable).with_name("shiftflow"))
STEP = {"id": "t", "type": "transform", "with": {"output": {"ok": True}}}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Any]:
    """The database proxy on a fresh SQLite file with every table (dev mode's store)."""
    saved = database.obj
    db = bind_database(f"sqlite:///{tmp_path}/store.db")
    create_all(db)
    try:
        yield db
    finally:
        db.close()
        database.initialize(saved)


def _schedule(**trigger: Any) -> dict[str, Any]:
    return {"name": "s", "trigger": {"type": "schedule", **trigger}, "steps": [STEP]}


def _polling(**trigger: Any) -> dict[str, Any]:
    return {"name": "p", "trigger": {"type": "polling", **trigger}, "steps": [STEP]}


def _steps(*steps: dict[str, Any], vars: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": "r", "trigger": {"type": "manual"}, "vars": vars or {}, "steps": list(steps)}


#: (definition, the text the error must contain: the field, then what is wrong)
NEVER_RUNS = [
    (_schedule(cron="61 * * * *"), "trigger.cron: minute: 61"),
    (_schedule(cron="*/5 * * * *", timezone="Mars/Base"), "trigger.timezone"),
    (_schedule(cron="*/5 * * * *", catch_up="sometimes"), "trigger.catch-up: 'sometimes'"),
    (_schedule(cron="*/5 * * * *", overlap="never"), "trigger.overlap: 'never'"),
    (_schedule(), "trigger.schedule: give exactly one of cron, every or at"),
    (_polling(every="5 minutes", request={"url": "https://example.com/orders"}), "trigger.every: '5 minutes'"),
    (_polling(every="5m", request={}), "trigger.request.url"),
    (_polling(every="5m"), "trigger.request.url"),
    (
        _steps(STEP, {"id": "u", "type": "transform", "with": {"output": "{{ steps.nope.output }}"}}),
        "steps[1].with.output: reference {{ steps.nope.output }} names no step 'nope'",
    ),
    (
        _steps({"id": "u", "type": "transform", "with": {"output": {"a": "x {{ trigers.amount }}"}}}),
        "steps[0].with.output.a: reference {{ trigers.amount }} starts with 'trigers'",
    ),
    (
        _steps({"id": "u", "type": "transform", "with": {"output": "{{ item }}"}}),
        "steps[0].with.output: reference {{ item }} uses 'item' outside a for_each step",
    ),
    (
        _steps({"id": "u", "type": "transform", "with": {"output": "{{ vars.limit }}"}}, vars={"threshold": 1}),
        "steps[0].with.output: reference {{ vars.limit }} names no variable 'limit'",
    ),
    (
        _steps(STEP, {"id": "u", "type": "transform", "with": {"output": "{{ steps.t.result }}"}}),
        "reads 'result' of a step",
    ),
]


@pytest.mark.parametrize(("data", "expected"), NEVER_RUNS, ids=[e for _, e in NEVER_RUNS])
def test_check_runnable_names_the_field(data: dict[str, Any], expected: str) -> None:
    definition = validate(data)  # the shape is right: the schema alone lets these through
    with pytest.raises(DefinitionError) as caught:
        check_runnable(definition)
    assert expected in str(caught.value)


@pytest.mark.parametrize(("data", "expected"), NEVER_RUNS, ids=[e for _, e in NEVER_RUNS])
def test_apply_refuses_and_stores_nothing(sqlite_models: Any, data: dict[str, Any], expected: str) -> None:
    workspace = catalog.ensure_workspace("acme")
    with pytest.raises(DefinitionError, match=expected.split(":")[0].replace("[", r"\[").replace("]", r"\]")):
        catalog.apply_definition(workspace, data)
    assert Workflow.select().count() == 0


@pytest.mark.parametrize("index", [0, 5, 8])
def test_cli_validate_refuses_with_exit_2(tmp_path: Path, index: int) -> None:
    data, expected = NEVER_RUNS[index]
    path = tmp_path / "never.yaml"
    path.write_text(yaml.safe_dump(data))
    result = subprocess.run([CLI, "validate", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result
    assert expected in result.stderr and "never.yaml" in result.stderr


def test_runnable_definitions_are_applied(store: Any) -> None:
    workspace = catalog.ensure_workspace("acme")
    for n, data in enumerate((
        _schedule(cron="*/5 * * * *", timezone="Europe/Berlin", catch_up="skip", overlap="buffer-one"),
        _schedule(every="30s"),
        _polling(every="5m", request={"url": "https://example.com/orders"}, items="data", id="id"),
        _steps(
            STEP,
            {"id": "each", "type": "transform", "for_each": "{{ trigger.items }}",
             "with": {"output": {"i": "{{ item }}", "n": "{{ index }}", "t": "{{ steps.t.output.ok }}"}}},
            {"id": "v", "type": "transform", "with": {"output": "{{ vars.threshold }} {{ steps.each.status }}"}},
            vars={"threshold": 1},
        ),
    )):
        named = dict(data, name=f"runs-{n}")
        applied = catalog.apply_definition(workspace, named)  # check_runnable is part of apply
        assert (applied.workflow.name, applied.version, applied.changed) == (f"runs-{n}", 1, True)
        assert applied.workflow.trigger_type == named["trigger"]["type"].upper()
    assert Workflow.select().count() == 4


def test_references_scan_is_linear_and_reads_like_the_renderer() -> None:
    assert list(references("a {{ x.y }} b {{z}}")) == ["x.y", "z"]
    assert list(references("{{ a {{ b }}")) == ["b"]
    assert list(references("{{ unclosed")) == []
    assert list(references("{{" + " " * 200_000)) == []  # no backtracking blow-up
