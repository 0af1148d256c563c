"""A checkpointed step killed mid-run resumes from its last checkpoint, not from the start.

A real worker pool runs ``agent.phased`` (four phases of four units of work each; every
unit is POSTed to a local recorder, which is how the work is counted). When two phases are
checkpointed and the third has started, the whole pool is SIGKILLed and started again. The
resumed step must redo none of the checkpointed phases: each of them shows exactly four
units of work, the interrupted phase more than four (its units before the kill are done
again), and the execution ends SUCCEEDED with its phases, progress and timeline.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from shiftflow.kernel.broker import build_broker, install
from shiftflow.kernel.contracts import TriggerPayload
from shiftflow.kernel.db import bind_database
from shiftflow.kernel.enqueue import send
from shiftflow.kernel.settings import Settings, configure
from shiftflow.models.manage import catalog
from shiftflow.models.tables.executions import Execution
from tests.support.waiting import wait_until

pytestmark = pytest.mark.acceptance
SHIFTFLOW = str(Path(sys.executable).with_name("shiftflow"))
UNITS = 4


def _workers(env, log):
    return subprocess.Popen([SHIFTFLOW, "workers", "--queues", "triggers", "steps", "tools", "--processes", "1",
                             "--threads", "2"], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(pool):
    if pool.poll() is None:
        os.killpg(pool.pid, signal.SIGTERM)
        try:
            pool.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(pool.pid, signal.SIGKILL)


def _work(service) -> Counter[str]:
    return Counter(body["step"] for body in service.bodies if isinstance(body, dict) and "unit" in body)


@pytest.mark.timeout(180)
def test_sigkilled_step_resumes_from_its_checkpoint(real_env, tmp_path, json_service):
    settings = configure(Settings.from_env(real_env))
    bind_database(settings.database_url)
    broker = install(build_broker(settings, worker=False))
    workflow = catalog.apply_definition(catalog.ensure_workspace("w"), {
        "name": "phased", "steps": [
            {"id": "agent", "type": "task", "with": {
                "task": "agent.phased", "units": UNITS, "unit_seconds": 0.4,
                "notify_url": json_service.url + "/work"}},
        ]}).workflow
    env = {**os.environ, **real_env, "SHIFTFLOW_CLAIM_LEASE_SECONDS": "3"}
    log = open(tmp_path / "workers.log", "w")
    pool = _workers(env, log)
    try:
        send("triggers.start", TriggerPayload(str(workflow.id), "phased-1", "test", {}, received_at=time.time()))

        def mid_testing() -> bool:
            row = Execution.get_or_none(Execution.dedup_key == "phased-1")
            saved = ((row.checkpoints or {}).get("agent") or {}) if row else {}
            return saved.get("state", {}).get("done") == ["planning", "implementing"] and _work(json_service)[
                "testing"] >= 2

        wait_until(mid_testing, timeout=60, interval=0.05)
        os.killpg(pool.pid, signal.SIGKILL)
        pool.wait(10)
        before = _work(json_service)
        assert before["planning"] == UNITS and before["implementing"] == UNITS and before["refining"] == 0

        pool = _workers(env, log)
        done = wait_until(lambda: (e := Execution.get(Execution.dedup_key == "phased-1")).status
                          not in ("PENDING", "RUNNING") and e, timeout=90)
        assert done.status == "SUCCEEDED", (done.error, (tmp_path / "workers.log").read_text()[-3000:])
        work = _work(json_service)
        # Checkpointed phases were not done again; the interrupted one was, from its start.
        assert work["planning"] == UNITS and work["implementing"] == UNITS, work
        assert work["testing"] == before["testing"] + UNITS and work["refining"] == UNITS, (work, before)
        assert done.progress == 100 and done.phase == "refining"
        assert [p["phase"] for p in done.phases] == ["planning", "implementing", "testing", "refining"]
        assert done.checkpoints["agent"]["state"]["done"] == ["planning", "implementing", "testing", "refining"]
        assert done.checkpoints["agent"]["number"] == 4
    finally:
        _stop(pool)
        log.close()
        broker.close()
