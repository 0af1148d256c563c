"""A wait outlives a worker restart: the timer is a row in PostgreSQL, not a held message."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from shiftflow.kernel.broker import build_broker, install
from shiftflow.kernel.contracts import TriggerPayload
from shiftflow.kernel.db import bind_database
from shiftflow.kernel.enqueue import send
from shiftflow.kernel.settings import Settings, configure
from shiftflow.models import catalog
from shiftflow.models.executions import Execution, StepExecution
from tests.helpers import wait_until

pytestmark = pytest.mark.acceptance
SHIFTFLOW = str(Path(sys.executable).with_name("shiftflow"))


class _Echo(BaseHTTPRequestHandler):
    calls: list[float] = []

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).calls.append(time.time())
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


def _workers(env, log):
    return subprocess.Popen([SHIFTFLOW, "workers", "--queues", "triggers", "steps", "tools", "--processes", "1",
                             "--threads", "2"], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def test_wait_survives_a_sigkilled_worker_pool(real_env, tmp_path):
    _Echo.calls = []
    echo = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    threading.Thread(target=echo.serve_forever, daemon=True).start()
    settings = configure(Settings.from_env(real_env))
    bind_database(settings.database_url)
    broker = install(build_broker(settings, worker=False))
    workflow = catalog.apply_definition(catalog.ensure_workspace("w"), {
        "name": "nap", "steps": [
            {"id": "nap", "type": "wait", "with": {"seconds": 3}},
            {"id": "ping", "type": "http", "with": {"method": "POST", "url": f"http://127.0.0.1:{echo.server_address[1]}/",
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
        assert _Echo.calls == []
        pool = _workers(env, log)
        done = wait_until(lambda: (e := Execution.get(Execution.dedup_key == "nap-1")).status != "RUNNING" and e,
                          timeout=40)
        assert done.status == "SUCCEEDED", (done.error, (tmp_path / "workers.log").read_text()[-2000:])
        assert len(_Echo.calls) == 1
    finally:
        if pool.poll() is None:
            os.killpg(pool.pid, signal.SIGTERM)
            try:
                pool.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(pool.pid, signal.SIGKILL)
        log.close()
        broker.close()
        echo.shutdown()
        echo.server_close()
