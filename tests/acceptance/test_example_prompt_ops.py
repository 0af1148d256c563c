"""Acceptance: the prompt example (``examples/prompt_ops``) through ShiftFlow's real processes.

`shiftflow ingress` (the management API) and `shiftflow workers` run as subprocesses on
real PostgreSQL, RabbitMQ and Redis; the LLM provider is the fake one, served by a real
HTTP server. Through the API only: create the prompt, add its validations, add a second
version, publish it, run it at priority HIGH, and read the run's tokens, cost and
validation back, and the per-version stats.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from shiftflow.fakes.llm import FakeLlm, FakeLlmServer
from tests.support.ports import free_port
from tests.support.waiting import wait_for_http, wait_until

pytestmark = pytest.mark.acceptance
SHIFTFLOW = str(Path(sys.executable).with_name("shiftflow"))
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "prompt_ops" / "prompt.yaml"
KEY = "sk-acceptance-llm-0123456789"


def _cli(env: dict[str, str], *args: str) -> str:
    result = subprocess.run([SHIFTFLOW, *args], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture
def stack(real_env: dict[str, str], tmp_path: Path) -> Any:
    fake = FakeLlm(api_key=KEY)
    server = FakeLlmServer(fake).start()
    port = free_port()
    env = {**os.environ, **real_env, "SHIFTFLOW_INGRESS_PORT": str(port), "SHIFTFLOW_METRICS_PORT": str(free_port()),
           "SHIFTFLOW_INGRESS_METRICS_PORT": str(free_port()), "SHIFTFLOW_METRICS_DIR": str(tmp_path / "metrics")}
    _cli(env, "migrate")
    _cli(env, "workspaces", "create", "acme")
    _cli(env, "members", "add", "dev@acme.example", "--workspace", "acme", "--role", "member")
    created = _cli(env, "keys", "create", "--workspace", "acme", "--user", "dev@acme.example", "--name", "prompts")
    key = created.split("store it now):")[1].split()[0]
    _cli(env, "connections", "create", "openai", "openai-main", "--workspace", "acme", "--set", f"api_key={KEY}",
         "--set", f"base_url={server.openai_base_url}")
    logs = tmp_path / "logs"
    logs.mkdir()
    procs = [
        subprocess.Popen([SHIFTFLOW, "ingress"], env=env, stdout=open(logs / "ingress.log", "w"),
                         stderr=subprocess.STDOUT, start_new_session=True),
        subprocess.Popen([SHIFTFLOW, "workers", "--queues", "triggers", "steps", "llm", "--processes", "1",
                          "--threads", "4"], env=env, stdout=open(logs / "workers.log", "w"),
                         stderr=subprocess.STDOUT, start_new_session=True),
    ]
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz", timeout=30)
        yield {"api": f"http://127.0.0.1:{port}/api/v1", "auth": {"Authorization": f"Bearer {key}"}, "fake": fake,
               "logs": logs}
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
        server.stop()


def test_the_prompt_example_created_published_run_and_read_back_through_the_api(stack: dict[str, Any]) -> None:
    api, auth = stack["api"], stack["auth"]
    example = yaml.safe_load(EXAMPLE.read_text())
    with httpx.Client(base_url=api, headers=auth, timeout=30) as client:
        body = {k: example[k] for k in ("name", "description", "tags", "template", "variables", "config")}
        created = client.post("/prompts", json=body)
        assert created.status_code == 201, created.text
        prompt = created.json()
        assert prompt["status"] == "DRAFT" and [v["status"] for v in prompt["versions"]] == ["DRAFT"]
        pid = prompt["id"]
        for validation in example["validations"]:
            added = client.post(f"/prompts/{pid}/validations", json=validation)
            assert added.status_code == 201, added.text

        # A draft does not run: 422 naming the version, nothing queued.
        refused = client.post(f"/prompts/{pid}/run", json={"variables": {"ticket": "x"}})
        assert refused.status_code == 422 and "publish one first" in refused.json()["error"]

        second = client.post(f"/prompts/{pid}/versions", json={
            "template": example["template"] + "Be brief.\n", "variables": example["variables"],
            "config": example["config"], "change_log": "shorter replies"})
        assert second.status_code == 201 and second.json()["version"] == 2, second.text
        published = client.post(f"/prompts/{pid}/versions/2/publish")
        assert published.status_code == 200, published.text
        assert published.json()["status"] == "PUBLISHED" and published.json()["published_by"] is not None

        missing = client.post(f"/prompts/{pid}/run", json={"variables": {"tier": "premium"}})
        assert missing.status_code == 422
        assert missing.json()["error"] == "variables.ticket: required string variable is missing"

        run = client.post(f"/prompts/{pid}/run", json={"variables": {"ticket": "I was charged twice",
                                                                     "tier": "premium"}, "priority": "HIGH"})
        assert run.status_code == 202, run.text
        accepted = run.json()
        assert (accepted["version"], accepted["priority"]) == (2, "HIGH")

        def finished() -> dict[str, Any] | None:
            answer = client.get(f"/prompts/{pid}/runs/{accepted['execution_id']}")
            if answer.status_code != 200:
                return None
            data: dict[str, Any] = answer.json()
            return data if data["status"] in ("SUCCEEDED", "FAILED") else None

        result = wait_until(finished, timeout=60, message="the prompt run finished")
        assert result["status"] == "SUCCEEDED", result
        assert (result["priority"], result["version"]) == ("HIGH", 2)
        assert result["validation_status"] == "PASSED" and result["validation_errors"] == []
        assert result["validated_output"]["category"] in ("billing", "bug", "question")
        assert result["inputs"] == {"ticket": "I was charged twice", "tier": "premium", "customer": "a customer"}
        assert result["tokens"]["input"] > 0 and result["tokens"]["output"] > 0
        assert Decimal(result["cost_usd"]) > 0 and len(result["cost_usd"].split(".")[1]) == 6
        assert result["latency_ms"] >= 1 and result["attempts"] == 1

        [request] = stack["fake"].requests
        assert "Ticket:\nI was charged twice\nBe brief." in request.body["messages"][-1]["content"]
        assert request.body["messages"][0] == {"role": "system", "content": example["config"]["system"]}

        stats = client.get(f"/prompts/{pid}/stats")
        assert stats.status_code == 200
        [v2] = stats.json()["items"]
        assert (v2["version"], v2["runs"], v2["calls"], v2["validation_passed"]) == (2, 1, 1, 1)
        assert v2["cost_usd"] == result["cost_usd"] and v2["latency_ms"]["p50"] >= 1

        detail = client.get(f"/prompts/{pid}").json()
        assert [v["status"] for v in detail["versions"]] == ["DRAFT", "PUBLISHED"]
