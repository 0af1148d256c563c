"""Dev mode's page-digest example is skipped loudly, never silently, when it cannot run."""

from __future__ import annotations

import dataclasses

from shiftflow.cli import dev_digest
from shiftflow.kernel.settings import Settings


def test_without_chromium_the_example_is_not_loaded_and_dev_mode_says_why(capsys, tmp_path) -> None:
    settings = dataclasses.replace(Settings.from_env({"SHIFTFLOW_MODE": "dev"}),
                                   chromium_path=str(tmp_path / "no-chromium"), data_dir=str(tmp_path))
    reason = dev_digest.missing(settings)
    assert reason is not None and "Chromium" in reason and "make tools" in reason
    assert dev_digest.load(settings) is None
    printed = capsys.readouterr().out
    assert "NOT LOADED: the page-digest example" in printed and "make tools" in printed
    assert dev_digest.banner(None, "http://127.0.0.1:1", lambda *a: "curl") == []
    assert not (tmp_path / "mail").exists()  # nothing started, nothing written
