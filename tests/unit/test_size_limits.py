"""Caps on what a step renders and stores (issue 11, finding 7).

A whole-value reference copies nothing while rendering, so a chain of steps that each
repeat the previous output multiplies a value without a cost until it is stored: 1 KB
became 10 MB and more. Every rendered input and every stored output is measured against
``SHIFTFLOW_STEP_MAX_INPUT_BYTES`` / ``SHIFTFLOW_STEP_MAX_OUTPUT_BYTES``, and a step over
a cap fails with an error naming it. On the in-process broker and SQLite (dev mode).
"""

from __future__ import annotations

import json

import dramatiq
import pytest

from shiftflow import actors
from shiftflow.consumers.dead_letters import DeadLetters
from shiftflow.kernel.broker import build_broker, install
from shiftflow.kernel.contracts import TriggerPayload
from shiftflow.kernel.db import bind_database
from shiftflow.kernel.enqueue import send
from shiftflow.kernel.settings import Settings, configure
from shiftflow.kernel.sizes import json_size
from shiftflow.models.manage import catalog
from shiftflow.models.tables.executions import Execution, StepExecution
from shiftflow.models.tables.registry import create_all
from tests.support.waiting import wait_until

INPUT_CAP, OUTPUT_CAP = 262_144, 131_072


@pytest.fixture
def engine(tmp_path):
    settings = configure(Settings.from_env({
        "SHIFTFLOW_MODE": "dev", "SHIFTFLOW_DATA_DIR": str(tmp_path), "SHIFTFLOW_SECRET_KEYS": "k" * 40,
        "SHIFTFLOW_STEP_MAX_INPUT_BYTES": str(INPUT_CAP), "SHIFTFLOW_STEP_MAX_OUTPUT_BYTES": str(OUTPUT_CAP)}))
    db = bind_database(settings.database_url)
    create_all(db)
    broker = install(build_broker(settings, extra=[DeadLetters()]))
    actors.declare(broker)
    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=20)
    worker.start()
    yield broker
    worker.stop()
    broker.close()
    db.close()
    configure(Settings.from_env({"SHIFTFLOW_MODE": "dev", "SHIFTFLOW_DATA_DIR": str(tmp_path)}))


def _run(steps, data, key="k1", name="w"):
    workflow = catalog.apply_definition(catalog.ensure_workspace("t"), {"name": name, "steps": steps}).workflow
    send("triggers.start", TriggerPayload(str(workflow.id), key, "test", data))
    return wait_until(lambda: (e := Execution.get_or_none(Execution.dedup_key == key))
                      and e.status in ("SUCCEEDED", "FAILED") and e, timeout=45)


def _largest_stored(execution):
    rows = StepExecution.select().where(StepExecution.execution == execution.id)
    return max(len(json.dumps(r.output)) + len(json.dumps(r.input)) for r in rows)


def _doubling_chain(first_type="transform", length=6):
    """Each step's output is eight copies of the one before: 1 KB becomes 8**length KB."""
    steps = [{"id": "s0", "type": first_type, "with": {"output": ["{{ trigger.v }}"] * 8}}]
    for n in range(1, length):
        steps.append({"id": f"s{n}", "type": "transform", "with": {"output": [f"{{{{ steps.s{n - 1}.output }}}}"] * 8}})
    return steps


def test_json_size_counts_up_to_the_limit_and_stops():
    value = {"a": [1, "xy", None, True], "é": 2.5}
    assert json_size(value, 10**9) == len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
    # A value shared a million times is not walked a million times once past the limit.
    shared = ["x" * 1000]
    for _ in range(6):
        shared = [shared] * 10
    assert 1000 < json_size(shared, 5000) < 10_000


def test_a_chain_of_inline_steps_stops_at_the_input_cap(engine):
    # Six inline transforms: 1 KB * 8**6 = 262 MB if stored. Four are enough to pass the cap.
    e = _run(_doubling_chain(length=4), {"v": "x" * 1000})
    assert e.status == "FAILED"
    assert "SHIFTFLOW_STEP_MAX_INPUT_BYTES" in e.error and f"{INPUT_CAP}" in e.error, e.error
    assert _largest_stored(e) <= INPUT_CAP


def test_a_chain_of_queued_steps_stops_at_the_input_cap(engine):
    # for_each makes each step a queued one (not inline): the cap holds on that path too.
    steps = _doubling_chain(length=4)
    for step in steps:
        step["for_each"] = [0]
        step["with"]["output"] = [ref.replace(".output }}", ".output.0 }}") for ref in step["with"]["output"]]
    e = _run(steps, {"v": "x" * 1000}, key="k2", name="w2")
    assert e.status == "FAILED"
    assert "SHIFTFLOW_STEP_MAX_INPUT_BYTES" in e.error, e.error
    assert _largest_stored(e) <= INPUT_CAP


def test_an_output_over_the_cap_fails_its_step_and_is_not_stored(engine, json_service):
    # The service echoes the body twice: 100 KB sent, 200 KB answered, over the 128 KiB cap.
    steps = [{"id": "h", "type": "http", "with": {"method": "POST", "url": json_service.url,
                                                  "json": {"blob": "{{ trigger.v }}"}}}]
    e = _run(steps, {"v": "y" * 100_000}, key="k3", name="w3")
    assert e.status == "FAILED"
    step = StepExecution.get((StepExecution.execution == e.id) & (StepExecution.step_id == "h"))
    assert step.status == "FAILED" and step.output is None
    assert "SHIFTFLOW_STEP_MAX_OUTPUT_BYTES" in step.error and f"{OUTPUT_CAP}" in step.error, step.error
    assert len(json.dumps(Execution.get_by_id(e.id).result)) <= OUTPUT_CAP
