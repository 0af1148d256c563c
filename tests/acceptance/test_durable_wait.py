"""A wait outlives a worker restart: the timer is a row in PostgreSQL, not a held message."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shiftflow.kernel.broker import build_broker, install
from shiftflow.kernel.contracts import TriggerPayload
from shiftflow.kernel.db import bind_database
from shiftflow.kernel.enqueue import send
from shiftflow.kernel.settings import Settings, configure
from shiftflow.models.manage import catalog
from shiftflow.models.tables.executions import Execution, StepExecution
from tests.support.waiting import wait_until

pytestmark = pytest.mark.acceptance
SHIFTFLOW = str(Path(sys.executable).with_name("shiftflow"))


def _workers(env, log):
    return subprocess.Popen([SHIFTFLOW, "workers", "--queues", "triggers", "steps", "tools", "--processes", "1",
                             "--threads", "2"], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def test_wait_survives_a_sigkilled_worker_pool(real_env, tmp_path, json_service):
    settings = configure(Settings.from_env(real_env))
    bind_database(settings.database_url)
    broker = install(build_broker(settings, worker=False))
    workflow = catalog.apply_definition(catalog.ensure_workspace("w"), {
        "name": "nap", "steps": [
            {"id": "nap", "type": "wait", "with": {"seconds": 3}},
            {"id": "ping", "type": "http", "with": {"method": "POST", "url": json_service.url + "/",
                                                    "json": {}}},
        ]}).workflow
    env = {**os.environ, **real_env}
    log = open(tmp_path / "workers.log", "w")
    pool = _workers(env, log)
    try:
        send("triggers.start", TriggerPayload(str(workflow.id), "nap-1", "test", {}, received_at=time.time()))
        wait_until(lambda: StepExecution.get_or_none(StepExecution.step_id == "nap", StepExecution.status == "WAITING"),
                   timeout=30)
        os.killpg(pool.pid, signal.SIGKILL)
        pool.wait(10)
        time.sleep(4)  # the timer falls due while no worker runs
        assert Execution.get(Execution.dedup_key == "nap-1").status == "RUNNING"
        assert json_service.calls == []
        pool = _workers(env, log)
        done = wait_until(lambda: (e := Execution.get(Execution.dedup_key == "nap-1")).status != "RUNNING" and e,
                          timeout=40)
        assert done.status == "SUCCEEDED", (done.error, (tmp_path / "workers.log").read_text()[-2000:])
        assert len(json_service.calls) == 1
    finally:
        if pool.poll() is None:
            os.killpg(pool.pid, signal.SIGTERM)
            try:
                pool.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(pool.pid, signal.SIGKILL)
        log.close()
        broker.close()
