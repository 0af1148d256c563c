"""The agent-task example end to end, on real services and real worker processes.

An intent is planned by the fake LLM provider (over real HTTP, scripted to answer the
example's plan): a screenshot of a local page (``tools.browser``), a thumbnail of it
(``tools.media``), and an email with the thumbnail attached to a local SMTP server
(``tools.email``). The task is created and approved with ``shiftflow tasks``; three worker
pools (planner and control steps; the browser; media and email) run it. The email
arrives with the attachment, and the task's story through the API holds the plan, three
tool executions, the artifacts and a cost above zero.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest

from shiftflow.fakes.llm import FakeLlm, FakeLlmServer
from shiftflow.kernel.db import bind_database
from shiftflow.kernel.settings import Settings, configure
from shiftflow.models.engine.connection_secrets import store_connection
from shiftflow.producers.app import create_app
from tests.integration.api_support import seed_tenant, serve
from tests.support.waiting import wait_until
from tests.tool_servers import PageServer, SmtpServer, self_signed

pytestmark = pytest.mark.acceptance
SHIFTFLOW = str(Path(sys.executable).with_name("shiftflow"))
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "agent_task"

PAGE = b"""<!doctype html><html><head><title>Status board</title></head>
<body style="background:#0a7;color:#fff;font:48px sans-serif"><h1>All systems go</h1></body></html>"""


def _plan(page_url: str) -> dict[str, Any]:
    """The example's plan, with this run's page address."""
    plan = json.loads((EXAMPLE / "plan.json").read_text())
    plan["steps"][0]["params"]["url"] = page_url
    return plan


def _pool(env: dict[str, str], log: Any, *queues: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([SHIFTFLOW, "workers", "--queues", *queues, "--processes", "1", "--threads", "2"],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(pool: subprocess.Popen[bytes]) -> None:
    if pool.poll() is None:
        os.killpg(pool.pid, signal.SIGTERM)
        try:
            pool.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(pool.pid, signal.SIGKILL)
            pool.wait(10)


def _cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([SHIFTFLOW, "tasks", *args], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout


def test_example_agent_task_screenshot_thumbnail_and_email(real_env, tmp_path):
    (tmp_path / "tls").mkdir()
    cert = self_signed(str(tmp_path / "tls"))
    smtp = SmtpServer(cert)
    page = PageServer({"/status": (200, {"Content-Type": "text/html"}, PAGE)})
    fake = FakeLlm(api_key="sk-example")
    env = {**os.environ, **real_env, "SHIFTFLOW_ARTIFACT_DIR": str(tmp_path / "artifacts"),
           "SHIFTFLOW_TASK_MODEL": "fake-echo"}
    settings = configure(Settings.from_env(env))
    bind_database(settings.database_url)
    log = open(tmp_path / "workers.log", "wb")
    pools: list[subprocess.Popen[bytes]] = []
    try:
        with FakeLlmServer(fake) as llm:
            fake.script("[[example-plan]]", json=_plan(page.url + "/status"))
            tenant = seed_tenant("example")
            store_connection(tenant.workspace.id, "openai", "planner",
                             {"api_key": "sk-example", "base_url": llm.openai_base_url})
            store_connection(tenant.workspace.id, "smtp", "mail", smtp.credentials(cert))
            pools = [_pool(env, log, "triggers", "steps", "llm"), _pool(env, log, "tools.browser"),
                     _pool(env, log, "tools.media", "tools.email")]
            intent = (EXAMPLE / "intent.txt").read_text().strip() + " [[example-plan]]"
            created = json.loads(_cli(env, "create", "--workspace", "example", "--intent", intent,
                                      "--connection", "planner", "--approve-required", "--json"))
            task_id = created["id"]
            with serve(create_app(settings)) as base, httpx.Client(base_url=base + "/api/v1", timeout=30) as api:
                auth = tenant.auth("VIEWER")

                def stage(*wanted: str) -> dict[str, Any] | None:
                    story = api.get(f"/tasks/{task_id}", headers=auth).json()
                    return story if story["stage"] in wanted else None

                waiting = wait_until(lambda: stage("awaiting_approval", "failed"), timeout=90)
                assert waiting["stage"] == "awaiting_approval", (waiting, _tail(tmp_path))
                assert [p["tool"] for p in waiting["plan"]] == ["browser.screenshot", "media.image", "email.send"]
                assert smtp.handler.messages == [] and page.hits == []  # nothing ran before the approval
                assert "awaiting_approval" in _cli(env, "list", "--workspace", "example")
                _cli(env, "approve", task_id, "--workspace", "example", "--comment", "go")

                story = wait_until(lambda: stage("succeeded", "failed", "cancelled"), timeout=180)
                assert story["status"] == "SUCCEEDED", (story["error"], story["steps"], _tail(tmp_path))

        # The email arrived, with the thumbnail attached.
        assert len(smtp.handler.messages) == 1
        _envelope, message = smtp.handler.messages[0]
        assert isinstance(message, EmailMessage)
        assert message["Subject"] == "Status board thumbnail" and message["To"] == "ops@example.test"
        attachments = list(message.iter_attachments())
        assert [(a.get_filename(), a.get_content_type()) for a in attachments] == [("thumbnail.png", "image/png")]
        picture = attachments[0].get_content()
        assert picture.startswith(b"\x89PNG") and len(picture) < 50_000
        assert page.hits.count("/status") == 1  # (the browser also asks for /favicon.ico)

        # The story: plan, three tool executions on three queues, artifacts, cost.
        executions = story["tool_executions"]
        assert [(t["step_number"], t["tool"], t["queue"], t["status"]) for t in executions] == [
            (1, "browser.screenshot", "tools.browser", "SUCCEEDED"),
            (2, "media.image", "tools.media", "SUCCEEDED"),
            (3, "email.send", "tools.email", "SUCCEEDED")]
        # The thumbnail was made from the screenshot the first call returned.
        assert executions[1]["input"]["input"]["location"] == executions[0]["output"]["artifact"]["location"]
        assert executions[1]["output"]["width"] <= 160
        assert sorted(a["type"] for a in story["artifacts"]) == ["IMAGE", "SCREENSHOT"]
        assert story["cost_usd"] > 0 and story["llm_calls"][0]["tokens_in"] > 0
        assert story["current_step"] == 3 and story["total_steps"] == 3 and story["progress"] == 100
        shown = json.loads(_cli(env, "show", task_id, "--workspace", "example"))
        assert shown["status"] == "SUCCEEDED" and len(shown["tool_executions"]) == 3
        logs = _cli(env, "logs", task_id, "--workspace", "example")
        assert "plan accepted: 3 tool call(s)" in logs
    finally:
        for pool in pools:
            _stop(pool)
        log.close()
        smtp.stop()
        page.close()


def _tail(tmp_path: Path) -> str:
    return (tmp_path / "workers.log").read_bytes()[-4000:].decode(errors="replace")
