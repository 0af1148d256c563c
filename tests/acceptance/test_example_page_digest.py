"""Acceptance: the shipped example `examples/page_digest/` end to end, on real services.

As a user would run it: `shiftflow migrate`, a workspace and an API key from the CLI, the
ingress (with the management API) and a worker pool consuming every tool queue as real
processes; the two connections created through `POST /api/v1/connections`; the example's
YAML applied with a signed webhook. One signed POST then makes the workflow read a local
page in Debian's Chromium, screenshot it, thumbnail the screenshot, email the thumbnail
through a local SMTP server (aiosmtpd, STARTTLS and AUTH) and post to a local
Slack-compatible receiver.

The test reads the email and its attachment from the SMTP server, the artifacts' bytes
from the store, the tool executions and queue jobs from the API, and the
`integration_usage` documents from MongoDB (SecantusDB), and the artifact rows through
`GET /executions/{id}/artifacts` and their download endpoint.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from pymongo import MongoClient

from shiftflow.kernel.artifacts import make_store
from shiftflow.kernel.settings import Settings
from shiftflow.kernel.signatures import signed_headers
from tests.support.ports import free_port
from tests.support.waiting import wait_for_http, wait_until
from tests.tool_servers import PageServer, SelfSigned, SmtpServer, self_signed

pytestmark = pytest.mark.acceptance
SHIFTFLOW = str(Path(sys.executable).with_name("shiftflow"))
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "page_digest" / "workflow.yaml"
TITLE = "Quarterly figures"
PAGE = (f"<html><head><title>{TITLE}</title></head>"
        "<body style='margin:0;background:#1a6'><h1>Quarterly figures</h1><p>Up 12 %.</p></body></html>").encode()
#: The example's thumbnail box (its `vars`) and screenshot size: 1024 x 640 fits as 320 x 200.
THUMB = (320, 200)
#: The chat webhook's secret part: it must not come back through the API.
HOOK_TOKEN = "T0-digest-8c1e5a77f0"


def _run(env: dict[str, str], *args: str) -> str:
    result = subprocess.run([SHIFTFLOW, *args], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> SelfSigned:
    return self_signed(str(tmp_path_factory.mktemp("tls")))


@pytest.fixture
def digest(real_env: dict[str, str], tmp_path: Path, cert: SelfSigned) -> Iterator[dict[str, Any]]:
    """The example run once through real processes; yields what the assertions read."""
    if shutil.which("chromium") is None:
        pytest.fail("chromium is not installed: run `make tools` (scripts/ensure-tools.sh)")
    port = free_port()
    env = {**os.environ, **real_env, "SHIFTFLOW_INGRESS_PORT": str(port),
           "SHIFTFLOW_ARTIFACT_DIR": str(tmp_path / "artifacts")}
    smtp = SmtpServer(cert)
    site = PageServer({"/quarterly": (200, {"Content-Type": "text/html"}, PAGE)})
    chat = PageServer({f"/services/{HOOK_TOKEN}": (200, {"Content-Type": "text/plain"}, b"ok")})
    logs = tmp_path / "logs"
    logs.mkdir()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        _run(env, "migrate")
        _run(env, "workspaces", "create", "digest")
        _run(env, "members", "add", "ops@digest.example", "--workspace", "digest", "--role", "admin")
        created = _run(env, "keys", "create", "--workspace", "digest", "--user", "ops@digest.example",
                       "--name", "example")
        key = created.split("store it now):")[1].split()[0]
        procs = [
            subprocess.Popen([SHIFTFLOW, "ingress"], env=env, stdout=open(logs / "ingress.log", "w"),
                             stderr=subprocess.STDOUT, start_new_session=True),
            subprocess.Popen([SHIFTFLOW, "workers", "--queues", "triggers", "steps", "tools", "tools.email",
                              "tools.browser", "tools.media", "--processes", "1", "--threads", "4"],
                             env=env, stdout=open(logs / "workers.log", "w"), stderr=subprocess.STDOUT,
                             start_new_session=True),
        ]
        base = f"http://127.0.0.1:{port}"
        wait_for_http(f"{base}/healthz", timeout=30)
        api = httpx.Client(base_url=base + "/api/v1", headers={"Authorization": f"Bearer {key}"}, timeout=30)
        # The connections, through the API, before the workflow that names them is applied.
        for body in ({"integration": "smtp", "name": "digest-mail", "credentials": smtp.credentials(cert)},
                     {"integration": "slack", "name": "digest-chat",
                      "credentials": {"webhook_url": f"{chat.url}/services/{HOOK_TOKEN}"}}):
            answer = api.post("/connections", json=body)
            assert answer.status_code == 201, answer.text
        applied = _run(env, "apply", str(EXAMPLE), "--workspace", "digest", "--webhook", "standard")
        secret = applied.split("shown once): ")[1].split()[0]
        token = applied.split("/hooks/")[1].split()[0]

        body = json.dumps({"url": f"{site.url}/quarterly", "email": "ann@example.com"}).encode()
        headers = {**signed_headers("standard", secret, body, int(time.time()), "digest-1"),
                   "content-type": "application/json"}
        accepted = httpx.post(f"{base}/hooks/{token}", content=body, headers=headers, timeout=10)
        assert accepted.status_code == 202, accepted.text
        execution_id = accepted.json()["execution_id"]

        def finished() -> dict[str, Any] | None:
            answer = api.get(f"/executions/{execution_id}")
            row = answer.json() if answer.status_code == 200 else None
            return row if row and row["status"] in ("SUCCEEDED", "FAILED", "CANCELLED") else None

        try:
            execution = wait_until(finished, timeout=60, message="the page digest did not finish")
        except TimeoutError:
            raise AssertionError((logs / "workers.log").read_text()[-4000:]) from None
        yield {"api": api, "execution": execution, "execution_id": execution_id, "smtp": smtp, "site": site,
               "chat": chat, "settings": Settings.from_env(env), "logs": logs}
        api.close()
    finally:
        _stop(procs)
        smtp.stop()
        site.close()
        chat.close()


def test_the_page_digest_example_runs_end_to_end(digest: dict[str, Any], mongo_url: str, mongo_db: str) -> None:
    execution, api, execution_id = digest["execution"], digest["api"], digest["execution_id"]
    assert execution["status"] == "SUCCEEDED", (execution.get("error"),
                                                (digest["logs"] / "workers.log").read_text()[-3000:])

    # The email, with the thumbnail attached: a PNG of the thumbnail's size.
    [(envelope, message)] = digest["smtp"].handler.messages
    assert envelope.rcpt_tos == ["ann@example.com"] and message["Subject"] == f"Page digest: {TITLE}"
    assert digest["smtp"].handler.logins == ["mailer"] and digest["smtp"].handler.tls_sessions == [True]
    [attachment] = list(message.iter_attachments())
    assert attachment.get_filename() == "thumbnail.png" and attachment.get_content_type() == "image/png"
    attached = attachment.get_content()
    with Image.open(io.BytesIO(attached)) as picture:
        assert (picture.format, picture.size) == ("PNG", THUMB)

    # The chat message, once, naming the page.
    [posted] = [r for r in digest["chat"].requests if r["method"] == "POST"]
    assert TITLE in json.loads(posted["body"])["text"]
    assert digest["site"].hits.count("/quarterly") == 2  # fetched, then screenshotted

    # The tool executions through the API: one per step, in order, secrets masked.
    listed = api.get(f"/executions/{execution_id}/tool-executions")
    assert listed.status_code == 200, listed.text
    assert HOOK_TOKEN not in listed.text and digest["smtp"].PASSWORD not in listed.text
    calls = listed.json()["items"]
    assert [(c["step_id"], c["tool"], c["status"], c["attempt"]) for c in calls] == [
        ("fetch", "browser.fetch", "SUCCEEDED", 1), ("shot", "browser.screenshot", "SUCCEEDED", 1),
        ("thumb", "media.image", "SUCCEEDED", 1), ("mail", "email.send", "SUCCEEDED", 1),
        ("announce", "notify.chat", "SUCCEEDED", 1)]
    by_step = {c["step_id"]: c for c in calls}
    assert by_step["mail"]["connection"] == "digest-mail" and by_step["announce"]["connection"] == "digest-chat"
    assert by_step["fetch"]["output"]["title"] == TITLE and all(c["duration_ms"] >= 0 for c in calls)
    one = api.get(f"/tool-executions/{by_step['thumb']['id']}")
    assert one.status_code == 200 and one.json() == by_step["thumb"]

    # The artifacts' bytes, from the store the workers wrote to.
    store = make_store(digest["settings"])
    screenshot = store.get(by_step["shot"]["output"]["artifact"]["location"])
    thumbnail = store.get(by_step["thumb"]["output"]["artifact"]["location"])
    with Image.open(io.BytesIO(screenshot)) as picture:
        assert (picture.format, picture.size) == ("PNG", (1024, 640))
    assert thumbnail == attached

    # The queue jobs through the API: each tool kind on its own queue.
    jobs = api.get("/queue-jobs", params={"limit": 50})
    assert jobs.status_code == 200, jobs.text
    mine = [j for j in jobs.json()["items"] if j["execution_id"] == execution_id]
    assert {j["step_id"]: (j["queue"], j["status"], j["attempts"]) for j in mine} == {
        "fetch": ("tools.browser", "SUCCEEDED", 1), "shot": ("tools.browser", "SUCCEEDED", 1),
        "thumb": ("tools.media", "SUCCEEDED", 1), "mail": ("tools.email", "SUCCEEDED", 1),
        "announce": ("tools", "SUCCEEDED", 1)}
    assert [j["step_id"] for j in api.get("/queue-jobs", params={"queue": "tools.email"}).json()["items"]] == ["mail"]
    mail_job = next(j for j in mine if j["step_id"] == "mail")
    detail = api.get(f"/queue-jobs/{mail_job['id']}").json()
    assert detail["tool_execution_id"] == by_step["mail"]["id"] and detail["progress"] == 100
    assert detail["max_attempts"] >= 1 and detail["started_at"] and detail["completed_at"]

    # integration_usage in MongoDB: one document per call, the connections' under their integration.
    client = MongoClient(mongo_url)
    try:
        docs = wait_until(lambda: (d := list(client[mongo_db]["integration_usage"].find(
            {"executionId": execution_id}))) and len(d) >= 5 and d, timeout=20)
    finally:
        client.close()
    usage = sorted((d["integrationId"], d["action"], d["success"]) for d in docs)
    assert usage == sorted([("browser.fetch", "browser.fetch", True), ("browser.screenshot", "browser.screenshot", True),
                            ("media.image", "media.image", True), ("smtp", "email.send", True),
                            ("slack", "notify.chat", True)])


def test_the_page_digest_artifacts_are_listed_by_the_api(digest: dict[str, Any]) -> None:
    """The screenshot and the thumbnail as `GET /executions/{id}/artifacts` lists them, and
    their bytes through `GET /artifacts/{id}/content`."""
    api, execution_id = digest["api"], digest["execution_id"]
    listed = api.get(f"/executions/{execution_id}/artifacts")
    assert listed.status_code == 200, listed.text
    names = {a["name"]: a for a in listed.json()["items"]}
    assert {"page.png", "thumbnail.png"} <= set(names)
    thumb = names["thumbnail.png"]
    assert thumb["mime_type"] == "image/png" and thumb["size_bytes"] > 0
    content = api.get(f"/artifacts/{thumb['id']}/content")
    assert content.status_code == 200
    with Image.open(io.BytesIO(content.content)) as picture:
        assert (picture.format, picture.size) == ("PNG", THUMB)
