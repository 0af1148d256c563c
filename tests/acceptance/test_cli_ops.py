"""Acceptance: the operator CLI and the management API as a person uses them.

Real processes on real services: ``shiftflow ingress`` (webhooks and ``/api/v1``) and a
``shiftflow workers`` pool; the test runs ``shiftflow`` commands (workspaces, members,
keys, apply, run --wait, rerun, cancel, logs, dead-letters) and checks their output,
their exit codes and what the API then answers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from tests.support.ports import free_port
from tests.support.waiting import wait_for_http, wait_until

pytestmark = pytest.mark.acceptance
SHIFTFLOW = str(Path(sys.executable).with_name("shiftflow"))


class _Flaky(BaseHTTPRequestHandler):
    """400 for the first request, 200 after: a failure a re-run gets past."""

    calls = 0

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).calls += 1
        out = json.dumps({"call": type(self).calls}).encode()
        self.send_response(400 if type(self).calls == 1 else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


def _execution_id(output: str) -> str:
    """The id on the last ``execution <id> <STATUS>`` line of ``--wait`` progress output."""
    ids = [line.split()[1] for line in output.splitlines() if line.startswith("execution ")]
    return str(uuid.UUID(ids[-1]))


def _cli(env, *args, code=0):
    result = subprocess.run([SHIFTFLOW, *args], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == code, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture
def system(real_env, tmp_path):
    port = free_port()
    env = {**os.environ, **real_env, "SHIFTFLOW_INGRESS_PORT": str(port), "SHIFTFLOW_METRICS_PORT": "0"}
    _Flaky.calls = 0
    flaky = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    threading.Thread(target=flaky.serve_forever, daemon=True).start()
    _cli(env, "migrate")
    logs = tmp_path / "logs"
    logs.mkdir()
    procs = [
        subprocess.Popen(
            [SHIFTFLOW, "ingress"],
            env=env,
            stdout=open(logs / "ingress.log", "w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        ),
        subprocess.Popen(
            [
                SHIFTFLOW,
                "workers",
                "--queues",
                "triggers",
                "steps",
                "tools",
                "--processes",
                "1",
                "--threads",
                "4",
            ],
            env=env,
            stdout=open(logs / "workers.log", "w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        ),
    ]
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz", timeout=30)
        yield {
            "env": env,
            "api": f"http://127.0.0.1:{port}/api/v1",
            "tmp": tmp_path,
            "flaky": f"http://127.0.0.1:{flaky.server_address[1]}/x",
        }
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        flaky.shutdown()
        flaky.server_close()


# About 25 CLI processes, each a Python start: minutes on a loaded two-core machine.
@pytest.mark.timeout(360)
def test_operator_cli_and_management_api(system, real_env):
    env, tmp = system["env"], system["tmp"]
    for command in (
        "run",
        "cancel",
        "rerun",
        "logs",
        "keys",
        "members",
        "workspaces",
        "dead-letters",
        "workflows",
    ):
        assert "usage: shiftflow" in _cli(env, command, "--help").stdout

    # Tenancy and a key, shown once.
    assert "workspace acc" in _cli(env, "workspaces", "create", "acc", "--owner", "ops@acc.example").stdout
    _cli(env, "members", "add", "dev@acc.example", "--workspace", "acc", "--role", "member")
    bad_role = _cli(env, "members", "add", "x@acc.example", "--workspace", "acc", "--role", "boss", code=2)
    assert "--role" in bad_role.stderr
    created = _cli(
        env, "keys", "create", "--workspace", "acc", "--user", "dev@acc.example", "--name", "ci"
    ).stdout
    assert "shown once" in created
    key = next(word for word in created.split() if word.startswith("sfk_") and word.count("_") >= 2)
    auth = {"Authorization": f"Bearer {key}"}
    assert key not in _cli(env, "keys", "list", "--workspace", "acc").stdout

    # A workflow whose HTTP step fails once (400), then works.
    flow = tmp / "flow.json"
    flow.write_text(
        json.dumps(
            {
                "name": "flaky",
                "trigger": {"type": "manual"},
                "steps": [
                    {"id": "prep", "type": "transform", "with": {"output": {"n": "{{ trigger.n }}"}}},
                    {
                        "id": "call",
                        "type": "http",
                        "with": {"method": "POST", "url": system["flaky"], "json": {}},
                    },
                    {
                        "id": "done",
                        "type": "transform",
                        "with": {"output": {"call": "{{ steps.call.output.json.call }}"}},
                    },
                ],
            }
        )
    )
    _cli(env, "apply", str(flow), "--workspace", "acc")

    # run --wait: progress per step, exit 1 when the execution fails.
    failed = _cli(env, "run", "flaky", "--workspace", "acc", "--input", '{"n": 3}', "--wait", code=1).stdout
    assert "step prep" in failed and "SUCCEEDED" in failed and "FAILED" in failed
    failed_id = _execution_id(failed)
    rerun = _cli(env, "rerun", failed_id, "--wait").stdout
    assert "re-run of" in rerun and rerun.rstrip().splitlines()[-1].split()[2] == "SUCCEEDED"
    new_id = _execution_id(rerun)
    assert new_id != failed_id

    # The API (served by `shiftflow ingress`) sees the same executions, linked, with the member's key.
    with httpx.Client(base_url=system["api"], headers=auth, timeout=15) as api:
        detail = api.get(f"/executions/{new_id}").json()
        assert detail["parent_id"] == failed_id and detail["status"] == "SUCCEEDED"
        assert [s["step_id"] for s in detail["steps"]] == ["prep", "call", "done"]
        assert api.get(f"/executions/{failed_id}").json()["children"] == [new_id]
        assert api.get("/audit-log").status_code == 403  # a member's key does not read the audit log

    # Logs from MongoDB; clear errors and exit codes.
    logs = wait_until(
        lambda: (out := _cli(env, "logs", new_id).stdout) and "execution succeeded" in out and out, timeout=20
    )
    assert "execution created: re-run 1 of" in logs
    assert "is SUCCEEDED already" in _cli(env, "cancel", new_id, code=1).stderr
    assert (
        "--input: not valid JSON"
        in _cli(env, "run", "flaky", "--workspace", "acc", "--input", "{", code=2).stderr
    )
    assert "does not exist" in _cli(env, "run", "nope", "--workspace", "acc", code=1).stderr
    assert "--since" in _cli(env, "dead-letters", "list", "--since", "last tuesday", code=2).stderr

    # Dead letters: a trigger for a workflow that does not exist yet is nacked and kept.
    from shiftflow.kernel.broker import build_broker, install
    from shiftflow.kernel.contracts import TriggerPayload
    from shiftflow.kernel.db import bind_database
    from shiftflow.kernel.enqueue import send
    from shiftflow.kernel.settings import Settings
    from shiftflow.models.tables.dead_letters import DeadLetter
    from shiftflow.models.tables.tenancy import Workspace
    from shiftflow.models.tables.workflows import Workflow, WorkflowVersion

    settings = Settings.from_env(real_env)
    bind_database(settings.database_url)
    broker = install(build_broker(settings, worker=False))
    try:
        missing = uuid.uuid4()
        send("triggers.start", TriggerPayload(workflow_id=str(missing), dedup_key="late-1", source="manual"))
        wait_until(lambda: DeadLetter.select().count() == 1, timeout=30, message="the dead letter")
        listed = _cli(env, "dead-letters", "list", "--queue", "triggers", "--since", "10m").stdout
        assert "not replayed" in listed and "1 dead letter(s)" in listed
        workspace = Workspace.get(slug="acc")
        Workflow.create(
            id=missing, workspace=workspace.id, name="late", status="ACTIVE", trigger_type="MANUAL"
        )
        WorkflowVersion.create(
            workflow=missing,
            version=1,
            definition={
                "name": "late",
                "steps": [{"id": "t", "type": "transform", "with": {"output": {"ok": True}}}],
            },
        )
        dry = _cli(env, "dead-letters", "replay", "--queue", "triggers", "--dry-run").stdout
        assert "[1/1] would_replay" in dry and DeadLetter.get().replayed_at is None
        done = _cli(env, "dead-letters", "replay", "--queue", "triggers", "--since", "10m").stdout
        assert "[1/1] replayed" in done and "replayed 1, skipped 0 of 1" in done
        assert (
            "replayed 0, skipped 0 of 0" in _cli(env, "dead-letters", "replay", "--queue", "triggers").stdout
        )
        with httpx.Client(base_url=system["api"], headers=auth, timeout=15) as api:
            found = wait_until(
                lambda: api.get("/executions", params={"key": "late-1"}).json()["items"], timeout=30
            )
            assert found[0]["workflow_id"] == str(missing)
    finally:
        broker.close()

    # Revoking the key locks the API out at once.
    prefix = key[: len("sfk_") + 12]
    assert "revoked" in _cli(env, "keys", "revoke", prefix, "--workspace", "acc").stdout
    assert httpx.get(system["api"] + "/workspace", headers=auth, timeout=10).status_code == 401
