"""``shiftflow prompts`` on real services: the example prompt created from its file, listed,
shown, given a second version, published, run at priority HIGH through a worker against
the fake provider (``--wait``), and its runs and stats printed; bad input exits 2 naming
the flag or field, with nothing written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from shiftflow.fakes.llm import FakeLlm, FakeLlmServer
from shiftflow.models.engine.connection_secrets import store_connection
from shiftflow.models.manage import catalog
from shiftflow.models.tables.executions import Execution
from shiftflow.models.tables.prompts import Prompt, PromptVersion
from tests.integration.api_support import worker

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "prompt_ops" / "prompt.yaml"
KEY = "sk-test-cli-prompts-0123456789"


def test_the_prompt_commands(real_env: dict[str, str], tmp_path: Path, monkeypatch: Any, capsys: Any) -> None:
    from shiftflow.cli.main import main

    for name, value in real_env.items():
        monkeypatch.setenv(name, value)
    printed: list[str] = []

    def run(*argv: str) -> int:
        code = main(list(argv))
        captured = capsys.readouterr()
        printed.append(captured.out + captured.err)
        return code

    fake = FakeLlm(api_key=KEY)
    with FakeLlmServer(fake) as server, worker(real_env, threads=4):
        workspace = catalog.ensure_workspace("cli")
        store_connection(workspace.id, "openai", "openai-main", {"api_key": KEY, "base_url": server.openai_base_url})
        ws = ("--workspace", "cli")

        broken = tmp_path / "broken.yaml"
        data = yaml.safe_load(EXAMPLE.read_text())
        broken.write_text(yaml.safe_dump({**data, "validations": [{"name": "x", "type": "REGEX",
                                                                    "config": {"pattern": "("}}]}))
        assert run("prompts", "create", "--file", str(broken), *ws) == 2
        assert "validations[0].config.pattern: does not compile" in printed[-1]
        assert Prompt.select().count() == 0  # nothing half-written

        assert run("prompts", "create", "--file", str(EXAMPLE), *ws) == 0
        assert "ticket-triage" in printed[-1] and "PUBLISHED" in printed[-1]
        assert run("prompts", "list", *ws) == 0 and "ticket-triage" in printed[-1]
        v2 = tmp_path / "v2.yaml"
        v2.write_text(yaml.safe_dump({"template": data["template"] + "Be brief.\n", "variables": data["variables"],
                                      "config": data["config"]}))
        assert run("prompts", "version", "add", "ticket-triage", "--file", str(v2), "--change-log", "brief", *ws) == 0
        assert run("prompts", "publish", "ticket-triage", "2", *ws) == 0 and "version 2 published" in printed[-1]
        assert run("prompts", "publish", "ticket-triage", "1", *ws) == 1 and "is ARCHIVED" in printed[-1]
        assert run("prompts", "show", "ticket-triage", "--json", *ws) == 0
        shown = json.loads(printed[-1])
        assert [(v["version"], v["status"]) for v in shown["versions"]] == [(1, "ARCHIVED"), (2, "PUBLISHED")]

        assert run("prompts", "run", "ticket-triage", "--var", "tier=gold", *ws) == 2
        assert "variables.ticket: required string variable is missing" in printed[-1]
        assert Execution.select().count() == 0
        assert run("prompts", "run", "ticket-triage", "--var", "ticket=I was charged twice", "--priority", "HIGH",
                   "--wait", "60", *ws) == 0, printed[-1]
        result = json.loads(printed[-1].split("\n", 1)[1])
        assert (result["status"], result["priority"], result["version"]) == ("SUCCEEDED", "HIGH", 2)
        assert result["validation_status"] == "PASSED" and result["tokens"]["total"] > 0

        assert run("prompts", "runs", "ticket-triage", *ws) == 0 and result["execution_id"] in printed[-1]
        assert run("prompts", "stats", "ticket-triage", "--json", *ws) == 0
        [stats] = json.loads(printed[-1])
        assert (stats["version"], stats["runs"], stats["validation_passed"]) == (2, 1, 1)
        assert stats["cost_usd"] == result["cost_usd"]
        assert run("prompts", "archive", "ticket-triage", *ws) == 0
        assert {v.status for v in PromptVersion.select()} == {"ARCHIVED"}
