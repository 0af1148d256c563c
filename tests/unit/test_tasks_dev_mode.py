"""Agent tasks in dev mode's store (SQLite, the in-process broker and worker), with the fake
LLM provider over real HTTP and a loopback JSON service: a task is created, planned,
approved and run, as `shiftflow dev` would."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest

from shiftflow import actors
from shiftflow.consumers.dead_letters import DeadLetters
from shiftflow.fakes.llm import FakeLlm, FakeLlmServer
from shiftflow.kernel.broker import build_broker, install
from shiftflow.kernel.db import bind_database, database
from shiftflow.kernel.enqueue import send_all
from shiftflow.kernel.settings import Settings, configure
from shiftflow.models.engine.connection_secrets import store_connection
from shiftflow.models.manage import catalog, tasks
from shiftflow.models.manage.access import Principal
from shiftflow.models.tables.registry import create_all
from tests.support.waiting import wait_until


@pytest.fixture
def dev(tmp_path: Any) -> Iterator[Any]:
    saved = database.obj
    settings = configure(Settings.from_env({"SHIFTFLOW_MODE": "dev", "SHIFTFLOW_DATA_DIR": str(tmp_path),
                                            "SHIFTFLOW_SECRET_KEYS": "k" * 40, "SHIFTFLOW_HTTP_ALLOW_PRIVATE": "true",
                                            "SHIFTFLOW_TASK_MODEL": "fake-echo"}))
    db = bind_database(settings.database_url)
    create_all(db)
    broker = install(build_broker(settings, extra=[DeadLetters()]))
    actors.declare(broker)
    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=20)
    worker.start()
    try:
        yield settings
    finally:
        worker.stop()
        broker.close()
        db.close()
        database.initialize(saved)


def test_a_task_runs_in_dev_mode(dev, json_service):
    fake = FakeLlm(api_key="sk-dev")
    with FakeLlmServer(fake) as llm:
        fake.script("[[dev]]", json={"steps": [{"tool": "http.request",
                                                "params": {"url": json_service.url + "/hello", "method": "POST",
                                                           "json": {"hi": 1}}}]})
        workspace = catalog.ensure_workspace("dev")
        store_connection(workspace.id, "openai", "openai-main", {"api_key": "sk-dev", "base_url": llm.openai_base_url})
        actor = Principal.operator(workspace.id)
        task, outgoing = tasks.create_task(actor, "say hello [[dev]]", approve_required=True)
        send_all(outgoing)
        wait_until(lambda: tasks.task_dict(tasks.get_task(actor, task["id"]))["stage"] == "awaiting_approval",
                   timeout=30)
        _decision, outgoing = tasks.approve_task(actor, task["id"])
        send_all(outgoing)
        done = wait_until(lambda: (t := tasks.task_story(actor, task["id"]))["stage"] in ("succeeded", "failed") and t,
                          timeout=30)
    assert done["status"] == "SUCCEEDED", done
    assert [c["path"] for c in json_service.calls] == ["/hello"] and done["cost_usd"] > 0
