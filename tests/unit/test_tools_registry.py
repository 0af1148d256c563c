"""The tool contract and registry: declarations, parameter errors naming fields, plugins
added through the ``shiftflow.tools`` entry point group (tests/tool_plugin_example)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from shiftflow.kernel.artifacts import LocalArtifactStore
from shiftflow.kernel.errors import PermanentError, ToolError
from shiftflow.kernel.tools.base import QUEUE_KINDS, InvalidParameters, Tool, ToolContext
from shiftflow.kernel.tools.registry import ENTRY_POINT_GROUP, ToolRegistry, UnknownTool, builtin_tools

EXAMPLE = Path(__file__).resolve().parent.parent / "tool_plugin_example"


def _tool(**overrides):
    base = dict(name="demo.echo", description="d", category="demo", queue="tools", effect="repeatable",
                params_schema={"type": "object"}, result_schema={"type": "object"}, run=lambda p, c: dict(p))
    return Tool(**{**base, **overrides})


def test_builtin_tools_declare_every_part_of_the_contract():
    tools = {tool.name: tool for tool in builtin_tools()}
    assert set(tools) == {"http.request", "email.send", "notify.chat", "browser.fetch", "browser.screenshot",
                          "browser.pdf", "media.image", "media.probe", "media.transcode"}
    assert {tools[n].queue for n in ("browser.fetch", "browser.screenshot", "browser.pdf")} == {"tools.browser"}
    assert tools["email.send"].queue == "tools.email" and tools["email.send"].effect == "once"
    assert tools["notify.chat"].effect == "once" and tools["media.image"].queue == "tools.media"
    for tool in tools.values():
        assert tool.queue in QUEUE_KINDS
        described = tool.describe()
        assert described["params_schema"]["type"] == "object" and described["description"]


def test_parameter_errors_name_the_field():
    send = ToolRegistry(builtin_tools()).get("email.send")
    with pytest.raises(InvalidParameters) as caught:
        send.validate({"to": "x", "subject": "hi", "text": "t"})
    assert str(caught.value) == "with.to: 'x' is not an email"
    with pytest.raises(InvalidParameters) as caught:
        send.validate({"to": ["a@b.example", "nope"], "subject": "a\r\nBcc: evil@x.example", "text": "t",
                       "colour": "red"}, where="steps[3].with")
    assert caught.value.problems == [
        "steps[3].with: unknown field 'colour'",
        "steps[3].with.subject: 'a\\r\\nBcc: evil@x.example' does not match '^[^\\\\r\\\\n]*$'",
        "steps[3].with.to[1]: 'nope' is not an email",
    ]
    with pytest.raises(InvalidParameters, match=r"with: 'subject' is a required property"):
        send.validate({"to": "a@b.example", "text": "t"})


def test_a_declaration_outside_the_contract_is_refused():
    with pytest.raises(PermanentError, match="queue 'tools.gpu'"):
        _tool(queue="tools.gpu")
    with pytest.raises(PermanentError, match="effect 'twice'"):
        _tool(effect="twice")
    with pytest.raises(PermanentError, match="lowercase dotted"):
        _tool(name="Echo")


def test_a_result_its_schema_refuses_is_a_tool_error(tmp_path):
    tool = _tool(result_schema={"type": "object", "required": ["ok"]})
    ctx = ToolContext(artifacts=LocalArtifactStore(tmp_path))
    with pytest.raises(ToolError, match="result: 'ok' is a required property"):
        tool.call({"a": 1}, ctx)


def test_unknown_tool_names_the_known_ones():
    registry = ToolRegistry([_tool()])
    with pytest.raises(UnknownTool, match="unknown tool 'email.sned'; known tools: demo.echo"):
        registry.get("email.sned")


def _install_metadata(site: Path, dist: str, entry_points: dict[str, str]) -> None:
    """What `pip install` leaves for importlib.metadata: a .dist-info with METADATA and entry_points.txt."""
    info = site / f"{dist.replace('-', '_')}-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1.0\n")
    lines = [f"[{ENTRY_POINT_GROUP}]"] + [f"{name} = {target}" for name, target in entry_points.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")


def test_a_package_adds_a_tool_through_the_entry_point_group(tmp_path, monkeypatch):
    # The example package's own declaration, as a wheel would carry it.
    declared = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())
    points = declared["project"]["entry-points"][ENTRY_POINT_GROUP]
    _install_metadata(tmp_path, declared["project"]["name"], points)
    monkeypatch.syspath_prepend(str(EXAMPLE))  # the package's code
    monkeypatch.syspath_prepend(str(tmp_path))  # its installed metadata
    registry = ToolRegistry(builtin_tools())
    assert registry.load_entry_points() == ["text.shout"]
    assert registry.problems == []
    assert registry.source("text.shout") == "shiftflow-example-tool:shout"
    shout = registry.get("text.shout")
    ctx = ToolContext(artifacts=LocalArtifactStore(tmp_path / "artifacts"))
    assert shout.call({"text": "hi", "times": 2}, ctx) == {"text": "HI HI"}
    with pytest.raises(InvalidParameters, match=r"with.times: 9 is greater than the maximum of 5"):
        shout.call({"text": "hi", "times": 9}, ctx)


TAKEN = _tool(name="email.send")


def test_a_plugin_cannot_take_a_builtin_name_and_a_broken_one_does_not_stop_the_rest(tmp_path, monkeypatch):
    _install_metadata(tmp_path, "shiftflow-bad-tools", {
        "taken": f"{__name__}:TAKEN",
        "broken": "no_such_module_anywhere:TOOL",
        "empty": f"{__name__}:EXAMPLE",
    })
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = ToolRegistry(builtin_tools())
    assert registry.load_entry_points() == []
    assert registry.source("email.send") == "builtin"
    assert len(registry.problems) == 3
    joined = "\n".join(registry.problems)
    assert "tool 'email.send' from shiftflow-bad-tools:taken is already registered by builtin" in joined
    assert "shiftflow-bad-tools:broken: cannot load: ModuleNotFoundError" in joined
    assert "shiftflow-bad-tools:empty: is not a Tool" in joined


def test_limits_come_from_the_settings():
    from shiftflow.kernel.settings import Settings
    from shiftflow.kernel.tools.base import ToolLimits

    settings = Settings.from_env({"SHIFTFLOW_MODE": "dev", "SHIFTFLOW_SMTP_TIMEOUT_SECONDS": "7",
                                  "SHIFTFLOW_BROWSER_PAGE_TIMEOUT_SECONDS": "9", "SHIFTFLOW_MEDIA_MAX_PIXELS": "1000",
                                  "SHIFTFLOW_ARTIFACT_MAX_BYTES": "2048", "SHIFTFLOW_MEDIA_MAX_DURATION_SECONDS": "3"})
    limits = ToolLimits.from_settings(settings)
    assert (limits.smtp_timeout, limits.page_timeout, limits.max_pixels, limits.max_artifact_bytes,
            limits.max_duration) == (7.0, 9.0, 1000, 2048, 3.0)
