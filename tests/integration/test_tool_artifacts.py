"""Files made by ``tool`` steps become ``artifact`` rows, on a real worker (RabbitMQ,
PostgreSQL) with headless Chromium, Pillow and a local SMTP server: the rows are written
with the step's completion and served by the API within their workspace only; a step may
read only its own workspace's artifacts (a foreign one fails naming the field, nothing
sent); a file over ``SHIFTFLOW_ARTIFACT_MAX_BYTES`` fails its step with nothing left
behind, not even a file the same call stored before it."""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shiftflow.kernel.artifacts import make_store
from shiftflow.kernel.contracts import TriggerPayload
from shiftflow.kernel.enqueue import send
from shiftflow.kernel.tools.base import ARTIFACT_OUTPUT, Tool, ToolContext
from shiftflow.kernel.tools.registry import default_registry
from shiftflow.models.engine.connection_secrets import store_connection
from shiftflow.models.manage import catalog
from shiftflow.models.tables.artifacts import Artifact
from shiftflow.models.tables.executions import Execution, StepExecution
from shiftflow.producers.app import create_app
from tests.integration.api_support import seed_tenant, serve, worker
from tests.support.waiting import wait_until
from tests.tool_servers import PageServer, SelfSigned, SmtpServer, self_signed

pytestmark = pytest.mark.integration

PAGE = b"<html><body style='background:#36c'><h1>Report</h1><p>artifact rows</p></body></html>"


@pytest.fixture(scope="module")
def cert(tmp_path_factory: Any) -> SelfSigned:
    return self_signed(str(tmp_path_factory.mktemp("tls")))


@pytest.fixture
def smtp(cert: SelfSigned) -> Iterator[SmtpServer]:
    server = SmtpServer(cert)
    yield server
    server.stop()


@contextlib.contextmanager
def _deployment(real_env: dict[str, str], artifacts: Path, **env: str) -> Iterator[dict[str, Any]]:
    with worker({**real_env, "SHIFTFLOW_ARTIFACT_DIR": str(artifacts), **env}, threads=4) as settings:
        a, b = seed_tenant("alpha"), seed_tenant("beta")
        with serve(create_app(settings)) as base, httpx.Client(base_url=base + "/api/v1", timeout=30) as client:
            yield {"client": client, "a": a, "b": b, "settings": settings}


def _workflow(workspace: Any, name: str, *steps: dict[str, Any]) -> Any:
    return catalog.apply_definition(workspace, {"name": name, "trigger": {"type": "manual"},
                                                "steps": list(steps)}).workflow


def _run(workflow: Any, data: dict[str, Any] | None = None, timeout: float = 90) -> Execution:
    key = uuid.uuid4().hex
    send("triggers.start", TriggerPayload(workflow_id=str(workflow.id), dedup_key=key, source="manual",
                                          data=data or {}))

    def finished() -> Execution | None:
        row = Execution.get_or_none((Execution.workflow == workflow.id) & (Execution.dedup_key == key))
        return row if row is not None and row.status in ("SUCCEEDED", "FAILED") else None

    return wait_until(finished, timeout=timeout, message=f"execution {key} finished")


def _step(execution: Execution, step_id: str) -> StepExecution:
    return StepExecution.get((StepExecution.execution == execution.id) & (StepExecution.step_id == step_id))


def _files(root: Path) -> list[Path]:
    return [Path(d) / f for d, _, names in os.walk(root) for f in names] if root.exists() else []


def test_screenshot_pdf_and_thumbnail_become_rows_the_api_lists_and_serves_in_their_workspace(real_env, tmp_path):
    page = PageServer({"/page": (200, {"Content-Type": "text/html"}, PAGE)})
    try:
        with _deployment(real_env, tmp_path / "artifacts") as api:
            c, a, b = api["client"], api["a"], api["b"]
            workflow = _workflow(
                a.workspace, "report",
                {"id": "shot", "type": "tool", "tool": "browser.screenshot",
                 "with": {"url": page.url + "/page", "width": 320, "height": 240, "name": "front.png"}},
                {"id": "doc", "type": "tool", "tool": "browser.pdf", "with": {"url": page.url + "/page"}},
                {"id": "thumb", "type": "tool", "tool": "media.image",
                 "with": {"input": "{{ steps.shot.output.artifact }}", "operation": "thumbnail", "width": 64,
                          "height": 64, "format": "webp", "name": "thumb.webp"}})
            execution = _run(workflow)
            assert execution.status == "SUCCEEDED", execution.error

            rows = {r.step_execution_id: r for r in Artifact.select().where(Artifact.execution == execution.id)}
            assert len(rows) == 3
            for step_id, kind, mime in (("shot", "SCREENSHOT", "image/png"), ("doc", "PDF", "application/pdf"),
                                        ("thumb", "IMAGE", "image/webp")):
                step = _step(execution, step_id)
                row = rows[step.id]
                ref = step.output["artifact"]
                assert (row.type, row.mime_type, row.workspace_id) == (kind, mime, a.workspace.id)
                assert (row.url, row.name, row.size_bytes, row.sha256) == \
                    (ref["location"], ref["name"], ref["size"], ref["sha256"])
                assert row.created_at <= step.completed_at  # written with the step's completion
                stored = make_store(api["settings"]).get(row.url)
                assert hashlib.sha256(stored).hexdigest() == row.sha256 and len(stored) == row.size_bytes
            assert rows[_step(execution, "shot").id].name == "front.png"

            listed = c.get(f"/executions/{execution.id}/artifacts", headers=a.auth("VIEWER"))
            assert listed.status_code == 200, listed.text
            items = listed.json()["items"]
            assert sorted(i["type"] for i in items) == ["IMAGE", "PDF", "SCREENSHOT"]
            thumb = next(i for i in items if i["type"] == "IMAGE")
            assert thumb["step_execution_id"] == str(_step(execution, "thumb").id)
            got = c.get(f"/artifacts/{thumb['id']}/content", headers=a.auth("VIEWER"))
            assert got.status_code == 200 and got.content[:4] == b"RIFF"
            assert hashlib.sha256(got.content).hexdigest() == thumb["sha256"]
            # Another workspace's key: 404 for the listing and for every file.
            assert c.get(f"/executions/{execution.id}/artifacts", headers=b.auth("OWNER")).status_code == 404
            for item in items:
                assert c.get(f"/artifacts/{item['id']}/content", headers=b.auth("OWNER")).status_code == 404
    finally:
        page.close()


def test_an_attachment_naming_another_workspaces_artifact_fails_the_step_naming_the_field(real_env, tmp_path,
                                                                                            smtp, cert):
    with _deployment(real_env, tmp_path / "artifacts") as api:
        a, b, settings = api["a"], api["b"], api["settings"]
        # beta's own file, made by a step of beta (its row is beta's).
        other = _workflow(b.workspace, "other", {"id": "x", "type": "transform", "with": {"output": 1}})
        foreign_execution = _run(other)
        ref = make_store(settings).put(b"beta's invoice", "invoice.txt", "text/plain")
        Artifact.create(workspace=b.workspace.id, execution=foreign_execution.id, type="TEXT", name=ref.name,
                        url=ref.location, size_bytes=ref.size, mime_type=ref.mime, sha256=ref.sha256)
        store_connection(a.workspace.id, "smtp", "smtp-main", smtp.credentials(cert))
        mail = {"id": "mail", "type": "tool", "tool": "email.send", "connection": "smtp-main",
                "with": {"to": "ann@example.com", "subject": "Invoice", "text": "Attached.",
                         "attachments": [{"artifact": "{{ trigger.file }}"}]}}
        execution = _run(_workflow(a.workspace, "steal", mail), {"file": ref.location})

        assert execution.status == "FAILED"
        assert _step(execution, "mail").error == (
            f"steps[0].with.attachments[0].artifact: {ref.location!r} is not an artifact of this workspace")
        assert smtp.handler.messages == []  # nothing sent
        # A location that is no artifact at all is refused the same way.
        made_up = _run(_workflow(a.workspace, "made-up", mail), {"file": "local:2026/01/01/x/y.txt"})
        assert "attachments[0].artifact: 'local:2026/01/01/x/y.txt' is not an artifact" in \
            _step(made_up, "mail").error
        # The workspace's own artifact, made by an earlier step, is attached.
        own = _workflow(a.workspace, "own",
                        {"id": "pic", "type": "tool", "tool": "media.image",
                         "with": {"input": "{{ trigger.file }}", "operation": "convert", "format": "png"}},
                        {**mail, "with": {**mail["with"], "attachments": [
                            {"artifact": "{{ steps.pic.output.artifact }}", "name": "pic.png"}]}})
        png = _png()
        seed = make_store(settings).put(png, "seed.png", "image/png")
        Artifact.create(workspace=a.workspace.id, execution=foreign_execution.id, type="IMAGE", name=seed.name,
                        url=seed.location, size_bytes=seed.size, mime_type=seed.mime, sha256=seed.sha256)
        ok = _run(own, {"file": seed.location})
        assert ok.status == "SUCCEEDED", ok.error
        [(_, message)] = smtp.handler.messages
        [attachment] = list(message.iter_attachments())
        assert attachment.get_filename() == "pic.png" and attachment.get_content()[:4] == b"\x89PNG"


def _png() -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(out, "PNG")
    return out.getvalue()


def _two_files(params: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
    small = ctx.artifacts.put(b"first file, small", "first.txt", "text/plain")
    big = ctx.artifacts.put(b"x" * params["size"], "second.bin")
    return {"artifact": big.to_dict(), "first": small.to_dict()}


TWO_FILES = Tool(name="test.two_files", description="Stores a small file, then one of the asked size.",
                 category="media", queue="tools.media", effect="repeatable", run=_two_files,
                 params_schema={"type": "object", "required": ["size"], "properties": {"size": {"type": "integer"}}},
                 result_schema={"type": "object", "properties": {"artifact": ARTIFACT_OUTPUT,
                                                                 "first": ARTIFACT_OUTPUT}})


@pytest.fixture
def two_files_tool() -> Iterator[Tool]:
    registry = default_registry()
    registry.add(TWO_FILES, source="tests")
    yield TWO_FILES
    registry._tools.pop(TWO_FILES.name, None)
    registry._sources.pop(TWO_FILES.name, None)


def test_an_artifact_over_the_limit_fails_its_step_leaving_no_row_and_no_file(real_env, tmp_path, two_files_tool):
    root = tmp_path / "artifacts"
    page = PageServer({"/page": (200, {"Content-Type": "text/html"}, PAGE)})
    try:
        with _deployment(real_env, root, SHIFTFLOW_ARTIFACT_MAX_BYTES="2000") as api:
            a = api["a"]
            shot = _run(_workflow(a.workspace, "big-shot", {
                "id": "shot", "type": "tool", "tool": "browser.screenshot",
                "with": {"url": page.url + "/page", "width": 400, "height": 300}}))
            assert shot.status == "FAILED"
            error = _step(shot, "shot").error
            assert "larger than the limit of 2000 bytes (SHIFTFLOW_ARTIFACT_MAX_BYTES)" in error, error
            assert _step(shot, "shot").retry_count == 0  # permanent: not retried

            # A tool whose second file is too big: the first, already stored, is removed too.
            two = _run(_workflow(a.workspace, "two", {"id": "two", "type": "tool", "tool": "test.two_files",
                                                      "with": {"size": 5000}}))
            assert two.status == "FAILED"
            assert "'second.bin' is larger than the limit of 2000 bytes" in _step(two, "two").error
            assert Artifact.select().count() == 0
            assert _files(root) == []

            # Under the limit, both files are kept, each with its row.
            fits = _run(_workflow(a.workspace, "fits", {"id": "two", "type": "tool", "tool": "test.two_files",
                                                        "with": {"size": 100}}))
            assert fits.status == "SUCCEEDED", fits.error
            rows = list(Artifact.select().where(Artifact.execution == fits.id).order_by(Artifact.name))
            assert [(r.name, r.type, r.size_bytes) for r in rows] == [("first.txt", "TEXT", 17),
                                                                       ("second.bin", "FILE", 100)]
            assert len(_files(root)) == 2
    finally:
        page.close()
