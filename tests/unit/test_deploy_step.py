"""The ``deploy`` step against the fake deploy service on a real local HTTP port.

Dev mode's engine (SQLite), driven step by step: the first delivery starts one deployment
and parks the step on a durable timer; later deliveries poll it (queued, building, ready);
an ``error`` deployment fails the step naming it; a 5xx is retried by the step's policy
without starting a second deployment; bad inputs fail the step naming the field.
"""

from __future__ import annotations

from typing import Any

import pytest

from shiftflow.fakes.deploy import FakeClock, FakeDeploy, FakeDeployServer, Timings


@pytest.fixture
def dev_engine(tmp_path: Any) -> Any:
    from shiftflow.kernel.db import bind_database
    from shiftflow.kernel.settings import Settings, configure
    from shiftflow.models.tables.registry import create_all

    settings = configure(Settings.from_env({"SHIFTFLOW_MODE": "dev", "SHIFTFLOW_DATA_DIR": str(tmp_path),
                                            "SHIFTFLOW_SECRET_KEYS": "tests-secret-key-of-at-least-32-characters"}))
    db = bind_database(settings.database_url)
    create_all(db)
    yield settings
    db.close()


@pytest.fixture
def fake() -> Any:
    clock = FakeClock()
    with FakeDeployServer(FakeDeploy(clock=clock, timings=Timings(queued=1, building=3))) as server:
        yield server


def _run(fake: Any, key: str, **inputs: Any) -> Any:
    from shiftflow.actors import steps  # noqa: F401  (registers the deploy handler)
    from shiftflow.kernel.contracts import StepPayload, TriggerPayload
    from shiftflow.models.engine.start import start_execution
    from shiftflow.models.manage import catalog

    workflow = catalog.apply_definition(catalog.ensure_workspace("t"), {"name": f"d-{key}", "steps": [
        {"id": "deploy", "type": "deploy", "retry": {"max": 2, "backoff": 1},
         "with": {"url": fake.base_url, "project": "demo", "ref": "abc123", "poll_seconds": 1, **inputs}}]}).workflow
    started = start_execution(TriggerPayload(str(workflow.id), key, "test", {}))
    assert started.execution is not None
    return StepPayload(str(started.execution.id), "deploy")


def _deliver(payload: Any) -> Any:
    """One delivery of the step, its timer (if any) treated as due."""
    from shiftflow.models.engine.run_step import run_step
    from shiftflow.models.tables.executions import StepExecution

    StepExecution.update(resume_at=None).where(StepExecution.step_id == "deploy").execute()
    run_step(payload)
    return StepExecution.get((StepExecution.execution == payload.execution_id) & (StepExecution.step_id == "deploy"))


def test_a_deployment_is_started_once_and_polled_to_ready(dev_engine, fake):
    from shiftflow.models.tables.executions import Execution

    payload = _run(fake, "ok")
    step = _deliver(payload)
    assert (step.status, step.resume_at is not None) == ("PENDING", True)  # parked, no worker held
    [deployment] = fake.fake.deployments.values()
    saved = Execution.get_by_id(payload.execution_id).checkpoints["deploy"]["state"]
    assert saved == {"deployment_id": deployment.id, "status": "queued", "polls": 1}
    fake.fake.advance(1.5)
    step = _deliver(payload)
    assert step.status == "PENDING"
    assert Execution.get_by_id(payload.execution_id).checkpoints["deploy"]["state"]["status"] == "building"
    fake.fake.advance(5)
    step = _deliver(payload)
    assert step.status == "SUCCEEDED", step.error
    assert step.output["status"] == "ready" and step.output["url"].startswith("https://demo-")
    assert len(fake.fake.deployments) == 1 and step.attempts == 1  # polls are not deliveries that died
    assert Execution.get_by_id(payload.execution_id).status == "SUCCEEDED"


def test_an_error_deployment_fails_the_step_naming_it(dev_engine, fake):
    fake.fake.next_outcome("error")
    payload = _run(fake, "err")
    _deliver(payload)
    fake.fake.advance(10)
    step = _deliver(payload)
    assert step.status == "FAILED" and "ended error" in step.error and "dep_" in step.error


def test_a_5xx_is_retried_without_a_second_deployment(dev_engine, fake):
    fake.fake.fail_next(500)
    payload = _run(fake, "flaky")
    step = _deliver(payload)
    assert (step.status, step.retry_count, len(fake.fake.deployments)) == ("PENDING", 1, 0)
    step = _deliver(payload)
    assert step.status == "PENDING" and len(fake.fake.deployments) == 1
    fake.fake.advance(10)
    assert _deliver(payload).status == "SUCCEEDED"
    assert len(fake.fake.deployments) == 1


@pytest.mark.parametrize(("inputs", "field"), [({"url": "ftp://x"}, "with.url"), ({"project": ""}, "with.project"),
                                               ({"poll_seconds": 0}, "with.poll_seconds")])
def test_bad_inputs_fail_the_step_naming_the_field(dev_engine, fake, inputs, field):
    payload = _run(fake, f"bad-{field}", **inputs)
    step = _deliver(payload)
    assert step.status == "FAILED" and field in step.error
    assert fake.fake.deployments == {}


def test_the_token_comes_from_a_connection_and_is_stored_nowhere(dev_engine):
    import json

    from shiftflow.models.engine.connection_secrets import store_connection
    from shiftflow.models.manage import catalog
    from shiftflow.models.tables.executions import Execution, StepExecution

    clock = FakeClock()
    token = "deploy-token-0123456789"
    with FakeDeployServer(FakeDeploy(clock=clock, timings=Timings(queued=0, building=0), token=token)) as server:
        workspace = catalog.ensure_workspace("t")
        store_connection(workspace.id, "vercel", "vercel", {"token": token, "base_url": server.base_url})
        payload = _run(server, "auth", url="", connection="vercel")
        clock.advance(1)
        step = _deliver(payload)
        assert step.status == "SUCCEEDED", step.error
        [request] = [r for r in server.fake.requests if r.method == "POST"]
        assert request.status == 201  # the fake refuses a call without the bearer token
        stored = json.dumps([list(StepExecution.select().dicts()), list(Execution.select().dicts())], default=str)
        assert token not in stored
        missing = _run(server, "nope", url="", connection="nope")
        failed = _deliver(missing)
        assert failed.status == "FAILED" and "with.connection" in failed.error
