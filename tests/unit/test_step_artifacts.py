"""The store a tool step sees (``models.engine.step_artifacts``): artifact references found
by walking the tool's schema, reads limited to checked or own files, writes recorded and
deleted again when the call fails, and the row type of each file."""

from __future__ import annotations

import pytest

from shiftflow.kernel.artifacts import LocalArtifactStore
from shiftflow.kernel.errors import ArtifactTooLarge, ToolError
from shiftflow.kernel.tools.registry import default_registry
from shiftflow.models.engine.step_artifacts import StepArtifacts, _references, artifact_type


def test_artifact_references_are_found_where_the_schema_declares_them():
    mail = default_registry().get("email.send")
    params = {"to": "a@example.com", "subject": "s", "text": "t",
              "attachments": [{"artifact": "local:a"}, {"artifact": {"location": "local:b"}, "name": "b.png"}]}
    assert list(_references(mail.params_schema, params, "steps[1].with")) == [
        ("steps[1].with.attachments[0].artifact", "local:a"),
        ("steps[1].with.attachments[1].artifact", {"location": "local:b"})]
    image = default_registry().get("media.image")
    assert list(_references(image.params_schema, {"input": "local:x", "operation": "convert"}, "with")) == [
        ("with.input", "local:x")]
    assert list(_references(default_registry().get("http.request").params_schema, {"url": "local:x"}, "w")) == []


@pytest.mark.parametrize(("tool", "mime", "kind"), [
    ("browser.screenshot", "image/png", "SCREENSHOT"), ("browser.pdf", "application/pdf", "PDF"),
    ("media.image", "image/webp", "IMAGE"), ("media.transcode", "video/mp4", "VIDEO"),
    ("media.transcode", "audio/mpeg", "FILE"), ("x.y", "application/json", "JSON"), ("x.y", "text/csv", "TEXT"),
    ("x.y", "application/pdf", "PDF"), ("x.y", "application/octet-stream", "FILE")])
def test_each_file_gets_a_row_type(tool, mime, kind):
    assert artifact_type(tool, mime) == kind


def test_reads_are_limited_to_checked_inputs_and_own_files_and_a_failed_call_keeps_none(tmp_path):
    inner = LocalArtifactStore(tmp_path, max_bytes=100)
    checked = inner.put(b"input", "in.txt").location
    foreign = inner.put(b"another workspace's", "secret.txt").location
    step = StepArtifacts(inner, {checked})
    assert step.get(checked) == b"input"
    with pytest.raises(ToolError, match="is not an input of this step"):
        step.get(foreign)
    with pytest.raises(ToolError, match="is not an input of this step"), step.local_path(foreign):
        pass
    made = step.put(b"output", "out.txt")
    assert step.get(made.location) == b"output" and step.made == [made]
    with pytest.raises(ArtifactTooLarge, match="limit of 100 bytes"):
        step.put(b"x" * 101, "big.bin")
    assert step.made == [made]  # the refused one was never kept
    step.discard()
    assert not inner.exists(made.location) and step.made == []
    assert inner.exists(checked) and inner.exists(foreign)  # inputs are never deleted
    with pytest.raises(ToolError, match="was not made by this step"):
        step.delete(checked)
