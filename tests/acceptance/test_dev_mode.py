"""A newcomer's first hour in dev mode: the README's commands after `make run`, as typed.

`shiftflow dev` (what `make run` runs) starts with nothing installed; the test then runs
what it printed and what the README shows, from another directory than the one dev mode
was started in: the signed `curl`, `executions show --latest`, the management API with
the printed key, a schedule that fires in dev mode, and `logs` of a failed execution by
the short id `executions list` printed.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.ports import free_port
from tests.support.waiting import wait_until

pytestmark = pytest.mark.acceptance
SHIFTFLOW = str(Path(sys.executable).with_name("shiftflow"))


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SHIFTFLOW, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp_path = tmp_path_factory.mktemp("dev")
    port = free_port()
    started_in = tmp_path / "project"
    started_in.mkdir()
    out = open(tmp_path / "dev.log", "w+")
    env = {**os.environ, "SHIFTFLOW_MODE": "dev"}
    proc = subprocess.Popen([SHIFTFLOW, "dev", "--port", str(port)], cwd=started_in, env=env, stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        banner = wait_until(lambda: "Stop: Ctrl-C" in (text := (tmp_path / "dev.log").read_text()) and text,
                            timeout=120, message="dev mode did not start")
        yield {"banner": banner, "port": port, "data": started_in / ".shiftflow-dev", "elsewhere": tmp_path,
               "log": tmp_path / "dev.log"}
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        out.close()


def test_the_readme_in_dev_mode(dev: dict[str, Any]) -> None:
    banner, elsewhere = dev["banner"], dev["elsewhere"]
    data = str(dev["data"])
    assert f"--dev-dir {data} " in banner, "the printed commands name the data directory absolutely"
    assert "Workspace: dev" in banner and "echo service" in banner

    # 1. The signed curl dev mode printed: 202 with the execution's id.
    curl = next(line.strip() for line in banner.splitlines() if line.strip().startswith("BODY="))
    answer = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=30)
    assert '"status":"accepted"' in answer.stdout.replace(" ", ""), answer.stdout + answer.stderr
    execution_id = re.search(r'"execution_id":\s*"([0-9a-f-]{36})"', answer.stdout).group(1)

    # 2. `executions show --latest` from another directory: the finished run, its steps, its logs.
    def finished() -> str | None:
        shown = _cli("--dev-dir", data, "executions", "show", execution_id, cwd=elsewhere)
        return shown.stdout if "SUCCEEDED" in shown.stdout.splitlines()[0] else None

    shown = wait_until(finished, timeout=30, message="the webhook's execution did not succeed")
    assert "step notify" in shown and "log documents" in shown
    latest = _cli("--dev-dir", data, "executions", "show", "--latest", cwd=elsewhere)
    assert latest.returncode == 0 and execution_id in latest.stdout
    assert not list(elsewhere.glob("**/shiftflow.db"))[1:], "no stray database outside the data directory"

    # 3. The management API with the key dev mode printed.
    key = re.search(r"API key of the dev owner: (sfk_\S+)", banner).group(1)
    base = f"http://127.0.0.1:{dev['port']}/api/v1"
    workflows = httpx.get(f"{base}/workflows", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert workflows.status_code == 200 and workflows.json()["items"][0]["name"] == "hello-order"
    detail = httpx.get(f"{base}/executions/{execution_id}", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert detail.json()["status"] == "SUCCEEDED"

    # 4. The README's schedules section: a schedule fires in dev mode.
    added = _cli("--dev-dir", data, "schedules", "add", "--workflow", "hello-order", "--workspace", "dev",
                 "--every", "1s", cwd=elsewhere)
    assert added.returncode == 0 and "while dev mode" in added.stderr, added.stdout + added.stderr

    def fired() -> str | None:
        listed = _cli("--dev-dir", data, "executions", "list", cwd=elsewhere).stdout
        return next((line for line in listed.splitlines() if "schedule:" in line), None)

    line = wait_until(fired, timeout=30, message="the schedule never fired in dev mode")
    listed = _cli("--dev-dir", data, "schedules", "list", "--workspace", "dev", cwd=elsewhere)
    assert "catch-up once" in listed.stdout and "overlap allow" in listed.stdout

    # 5. A scheduled run has no amount: it fails, and `logs` by its short id says why.
    short = line.split()[0][:8]
    logs = wait_until(lambda: (r := _cli("--dev-dir", data, "logs", short, cwd=elsewhere)) and
                      "execution failed" in r.stdout and r, timeout=20)
    assert "names nothing (no 'amount')" in logs.stdout
    assert _cli("--dev-dir", data, "executions", "show", "zz", cwd=elsewhere).returncode == 2

    # 6. `scheduler run` in dev mode says where the scheduler is instead of a traceback.
    refused = subprocess.run([SHIFTFLOW, "scheduler", "run"], cwd=elsewhere, capture_output=True, text=True,
                             timeout=30, env={**os.environ, "SHIFTFLOW_MODE": "dev"})
    assert refused.returncode == 2 and "inside `shiftflow dev`" in refused.stderr and "Traceback" not in refused.stderr


def test_a_busy_port_is_named_before_anything_starts(dev: dict[str, Any]) -> None:
    again = subprocess.run([SHIFTFLOW, "dev", "--port", str(dev["port"])], cwd=dev["elsewhere"],
                           capture_output=True, text=True, timeout=30, env={**os.environ, "SHIFTFLOW_MODE": "dev"})
    assert again.returncode == 2 and "--port" in again.stderr and "Traceback" not in again.stderr
    assert "ShiftFlow dev mode" not in again.stdout


def test_help_answers() -> None:
    for command in ("dev", "config", "migrate", "schema", "timers", "validate"):
        shown = subprocess.run([SHIFTFLOW, command, "--help"], capture_output=True, text=True, timeout=30)
        body = shown.stdout.split("options:")[0]
        # A description beyond the usage line.
        assert shown.returncode == 0 and len(body.strip().splitlines()) >= 3, (command, shown.stdout)


def test_the_page_digest_example_in_dev_mode(dev: dict[str, Any]) -> None:
    """Dev mode loads examples/page_digest (Chromium is installed here): the second signed
    curl it printed makes a digest, mailed to the data directory and printed as a chat line."""
    banner = dev["banner"]
    assert "NOT LOADED" not in banner and "'page-digest'" in banner
    curls = [line.strip() for line in banner.splitlines() if line.strip().startswith("BODY=")]
    assert len(curls) == 2 and "dev-page-digest" in curls[1]
    answer = subprocess.run(["bash", "-c", curls[1]], capture_output=True, text=True, timeout=30)
    assert '"status":"accepted"' in answer.stdout.replace(" ", ""), answer.stdout + answer.stderr
    mailed = wait_until(lambda: list((dev["data"] / "mail").glob("*.eml")), timeout=60,
                        message="the page digest was not mailed")
    mail = mailed[0].read_bytes()
    assert b"Subject: Page digest: ShiftFlow dev page" in mail and b"thumbnail.png" in mail
    wait_until(lambda: "[dev chat] Digest of ShiftFlow dev page" in dev["log"].read_text(), timeout=20,
               message="the chat message was not printed")
def test_the_prompt_example_runs_against_the_fake_llm_in_dev_mode(dev: dict[str, Any]) -> None:
    import json
    from decimal import Decimal

    lines = [line.strip() for line in dev["banner"].splitlines()]
    run_command = next(line for line in lines if "/api/v1/prompts/" in line and "/run -d" in line)
    runs_command = next(line for line in lines if line.endswith("/runs; echo"))
    started = subprocess.run(["bash", "-c", run_command], capture_output=True, text=True, timeout=30)
    accepted = json.loads(started.stdout)
    assert accepted["status"] == "accepted" and accepted["priority"] == "HIGH", started.stdout + started.stderr

    def finished() -> dict[str, Any] | None:
        listed = subprocess.run(["bash", "-c", runs_command], capture_output=True, text=True, timeout=30)
        runs = [r for r in json.loads(listed.stdout)["items"] if r["execution_id"] == accepted["execution_id"]]
        return runs[0] if runs and runs[0]["status"] in ("SUCCEEDED", "FAILED") else None

    run = wait_until(finished, timeout=60, message="the example prompt's run finished")
    assert run["status"] == "SUCCEEDED" and run["validation_status"] == "PASSED", run
    assert run["tokens"]["total"] > 0 and Decimal(run["cost_usd"]) > 0
