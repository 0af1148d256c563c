"""Pool metrics as the README documents them: `shiftflow workers` serves its pool's metrics
without any more setup, says where, and two pools on one machine do not collide.

Real `shiftflow workers` processes on the test's database, vhost and Redis.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.ports import free_port
from tests.support.waiting import wait_until

pytestmark = pytest.mark.acceptance
SHIFTFLOW = str(Path(sys.executable).with_name("shiftflow"))


class Pools:
    """Starts pools as subprocesses and stops each by its process group."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env, self.logs, self.procs = env, logs, []  # type: list[subprocess.Popen[bytes]]

    def start(self, name: str, *args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.logs / f"{name}.log"
        proc = subprocess.Popen([SHIFTFLOW, "workers", *args], env={**self.env, **(env or {})},
                                stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc, log

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


@pytest.fixture
def pools(real_env: dict[str, str], tmp_path: Path) -> Iterator[Pools]:
    env = {**os.environ, **real_env}
    env.pop("SHIFTFLOW_METRICS_DIR", None)
    env.pop("SHIFTFLOW_METRICS_PORT", None)  # the README's command: nothing metrics-specific set
    subprocess.run([SHIFTFLOW, "migrate"], env=env, check=True, capture_output=True, timeout=60)
    running = Pools(env, tmp_path)
    yield running
    running.stop()


def _serving(log: Path) -> str:
    """The metrics URL the pool printed when it started."""
    text = log.read_text()
    for line in text.splitlines():
        if "metrics on http://" in line:
            return line.split("metrics on ", 1)[1].split()[0]
    return ""


def test_two_pools_on_one_machine_each_serve_their_metrics(pools: Pools, tmp_path: Path) -> None:
    port_a, port_b = free_port(), free_port()
    pools_file = tmp_path / "pools.yaml"
    pools_file.write_text(
        "pools:\n"
        f"  core: {{queues: [triggers, steps], processes: 1, threads: 2, metrics_port: {port_a}}}\n"
        f"  tools: {{queues: [tools], processes: 1, threads: 2, metrics_port: {port_b}}}\n"
    )
    _, log_a = pools.start("core", "--pools", str(pools_file), "--pool", "core")
    _, log_b = pools.start("tools", "--pools", str(pools_file), "--pool", "tools")
    url_a = wait_until(lambda: _serving(log_a), timeout=60, message="the core pool to say where its metrics are")
    url_b = wait_until(lambda: _serving(log_b), timeout=60, message="the tools pool to say where its metrics are")
    assert url_a == f"http://127.0.0.1:{port_a}/metrics" and url_b == f"http://127.0.0.1:{port_b}/metrics"
    for url, actor in ((url_a, "steps.run"), (url_b, "tools.call")):
        text = wait_until(lambda u=url: (t := httpx.get(u, timeout=5).text) and "shiftflow_messages" in t and t,
                          timeout=60, message=f"metrics at {url}")
        assert f'actor="{actor}"' in text
    assert "Traceback" not in log_a.read_text() + log_b.read_text()


def test_a_busy_metrics_port_is_named_before_the_pool_starts(pools: Pools) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc, log = pools.start("busy", "--queues", "steps", "--processes", "1",
                                env={"SHIFTFLOW_METRICS_PORT": str(port)})
        assert proc.wait(60) == 2
    text: Any = log.read_text()
    assert f"{port}" in text and "metrics_port" in text and "Traceback" not in text
