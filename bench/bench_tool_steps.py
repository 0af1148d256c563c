"""Each tool as a ShiftFlow step through the engine and workers, against a bare Dramatiq actor.

One run, one machine, the same RabbitMQ, PostgreSQL, Redis and Mongo servers. For every
tool (``http.request``, ``notify.chat``, ``email.send``, ``media.image``,
``browser.screenshot``), the same work two ways:

* **ShiftFlow**: a workflow of one ``type: tool`` step, triggered by ``triggers.start``
  messages (publisher confirms), run by ``dramatiq shiftflow.consumers.worker`` in
  production mode: trigger, claim, tool execution and queue job rows, the effect ledger
  for ``once`` tools, the tool's schema checks and guards, the artifact store, the step's
  result, the execution's end, logs to Mongo, live updates on Redis.
* **bare Dramatiq**: ``bench/engine_baselines/tool_actors.py``: one actor that makes the
  library call (httpx, smtplib, Pillow, the same DevTools commands on the same Chromium)
  and records it (one PostgreSQL insert, one Mongo insert), on its own vhost and database.

Both get the same worker processes x threads, both pools stay up for the whole run, and
the sides alternate in blocks per tool (bare, ShiftFlow, bare, ...), so load drifts on
this shared machine hit both. A block publishes ``n`` messages at once and ends when the
last one is recorded.

Prints per tool: executions per second and worker CPU ms per execution of both (the
worker processes and their children, Chromium included; PostgreSQL, RabbitMQ and Mongo
are shared with other users of this machine and left out), and the ratios
ShiftFlow/bare (rate below 1 and CPU above 1 = what the engine adds per tool call).

Usage: ``.venv/bin/python bench/bench_tool_steps.py [--scale 1.0] [--processes 2]
[--threads 4] [--blocks 3]`` (``--scale 0.3`` for a quick look, a few minutes).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psycopg2  # noqa: E402

from bench.bench_tools import HTTP_SERVER, free_port, wait_port  # noqa: E402
from bench.engine_services import BIN, Resources, Workers, cpu_ms_per_execution, cpu_snapshot  # noqa: E402

PY = sys.executable
#: Calls per tool at scale 1 (each side), split into the blocks.
CALLS = {"http.request": 300, "notify.chat": 300, "email.send": 200, "media.image": 120, "browser.screenshot": 40}
#: Seconds a block may take before the run gives up (a side that stopped making progress).
BLOCK_TIMEOUT = 300.0


def _params(tool: str, base: str, image: dict[str, Any]) -> dict[str, Any]:
    """The tool step's ``with`` (the same work as ``tool_actors``)."""
    return {
        "http.request": {"url": base + "/json"},
        "notify.chat": {"text": "bench"},
        "email.send": {"to": "ann@example.com", "subject": "bench", "text": "hello", "html": "<p>hello</p>"},
        "media.image": {"input": image, "operation": "thumbnail", "width": 200, "height": 200},
        "browser.screenshot": {"url": base + "/page"},
    }[tool]


def _definition(tool: str, base: str, image: dict[str, Any]) -> dict[str, Any]:
    step: dict[str, Any] = {"id": "call", "type": "tool", "tool": tool, "with": _params(tool, base, image)}
    if tool == "email.send":
        step["connection"] = "smtp-bench"
    if tool == "notify.chat":
        step["connection"] = "chat-bench"
    return {"name": "bench-" + tool.replace(".", "-"), "trigger": {"type": "manual"}, "steps": [step]}


@dataclass
class Side:
    """One system: its workers, how it triggers and how it counts what is done."""

    key: str
    label: str
    pg_url: str
    workers: Workers
    conn: Any = None
    #: Per tool: [executions, wall seconds, worker CPU ms] summed over blocks.
    totals: dict[str, list[float]] = field(default_factory=dict)

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        if self.conn is None or self.conn.closed:
            self.conn = psycopg2.connect(self.pg_url, connect_timeout=5)
            self.conn.autocommit = True
        with self.conn.cursor() as cur:
            cur.execute(sql, args)
            return list(cur.fetchall())

    def trigger(self, tool: str, phase: str, n: int) -> None:
        raise NotImplementedError

    def done(self, phase: str) -> tuple[int, int, float | None]:
        """(finished, failed, epoch of the last finish) of ``phase``."""
        raise NotImplementedError


class ShiftFlowSide(Side):
    """ShiftFlow's worker pool; one workflow per tool."""

    env: dict[str, str]
    workflows: dict[str, str]
    publisher: Any

    def trigger(self, tool: str, phase: str, n: int) -> None:
        from shiftflow.kernel.contracts import TriggerPayload
        from shiftflow.kernel.enqueue import Outgoing

        now = time.time()
        self.publisher.publish_all([
            Outgoing("triggers.start", TriggerPayload(workflow_id=self.workflows[tool], dedup_key=f"{phase}-{i}",
                                                      source="bench", data={"n": i}, received_at=now))
            for i in range(n)
        ])

    def done(self, phase: str) -> tuple[int, int, float | None]:
        finished, failed, last = self.query(
            "SELECT count(*), count(*) FILTER (WHERE status <> 'SUCCEEDED'), extract(epoch FROM max(completed_at)) "
            "FROM execution WHERE dedup_key LIKE %s AND completed_at IS NOT NULL", f"{phase}-%")[0]
        return int(finished), int(failed), None if last is None else float(last)


class DramatiqSide(Side):
    """The bare actors of ``engine_baselines.tool_actors``."""

    app: Any

    def trigger(self, tool: str, phase: str, n: int) -> None:
        now = time.time()
        for i in range(n):
            self.app.call_tool.send(tool, f"{phase}-{i}", phase, now)

    def done(self, phase: str) -> tuple[int, int, float | None]:
        finished, last = self.query("SELECT count(*), max(done_at) FROM bench_step WHERE phase = %s", phase)[0]
        return int(finished), 0, None if last is None else float(last)


def run_block(side: Side, tool: str, phase: str, n: int) -> tuple[float, float]:
    """Publish ``n`` calls of ``tool`` at once, wait for all; (wall seconds, worker CPU ms)."""
    before = cpu_snapshot(side.workers.pids(), [])
    started = time.time()
    side.trigger(tool, phase, n)
    deadline = time.monotonic() + BLOCK_TIMEOUT
    while True:
        finished, failed, last = side.done(phase)
        if failed:
            raise RuntimeError(f"{side.label}: {failed} {tool} executions failed:\n{side.workers.log_tail()}")
        if finished >= n and last is not None:
            break
        side.workers.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"{side.label}: {finished}/{n} {tool} calls after {BLOCK_TIMEOUT:g}s:\n"
                               f"{side.workers.log_tail()}")
        time.sleep(0.05)
    after = cpu_snapshot(side.workers.pids(), [])
    cpu = cpu_ms_per_execution(before, after, 1)["workers"]
    return max(1e-6, last - started), cpu


def setup_shiftflow(res: Resources, mongo_url: str, work: Path, base: str, smtp_port: int, image: dict[str, Any],
                    processes: int, threads: int) -> ShiftFlowSide:
    from shiftflow.kernel.batch_publisher import ConfirmedBatchPublisher
    from shiftflow.kernel.broker import build_broker, install
    from shiftflow.kernel.db import bind_database
    from shiftflow.kernel.settings import Settings, configure
    from shiftflow.models.engine.connection_secrets import store_connection
    from shiftflow.models.manage import catalog
    from shiftflow.models.tables.migrations import upgrade

    pg_url = res.pg_database("sf_tools")
    env = {
        "SHIFTFLOW_MODE": "production",
        "SHIFTFLOW_AMQP_URL": res.vhost("sf_tools"),
        "SHIFTFLOW_DATABASE_URL": pg_url,
        "SHIFTFLOW_MONGO_URL": mongo_url,
        "SHIFTFLOW_MONGO_DB": f"{res.run}_sf_tools",
        "SHIFTFLOW_REDIS_URL": res.redis(),
        "SHIFTFLOW_METRICS_PORT": "0",
        "SHIFTFLOW_LOG_LEVEL": "WARNING",
        "SHIFTFLOW_HTTP_ALLOW_PRIVATE": "true",
        "SHIFTFLOW_ARTIFACT_DIR": str(work / "artifacts"),
        "SHIFTFLOW_SECRET_KEYS": "bench-secret-key-of-at-least-32-characters!",
    }
    settings = configure(Settings.from_env(env))
    db = bind_database(pg_url)
    try:
        upgrade(db)
        workspace = catalog.ensure_workspace("bench")
        # Custom integrations (not the catalogue's smtp and slack): their credentials pass as
        # they are and no per-connection rate limit (smtp 2/s, slack 1/s) paces the calls,
        # so the figures are the engine's cost, not a limit's.
        store_connection(workspace.id, "bench-smtp", "smtp-bench", {"host": "127.0.0.1", "port": smtp_port,
                                                              "security": "none", "from": "bench@shiftflow.test"})
        store_connection(workspace.id, "bench-chat", "chat-bench", {"webhook_url": base + "/hook", "format": "slack"})
        workflows = {tool: str(catalog.apply_definition(workspace, _definition(tool, base, image)).workflow.id)
                     for tool in CALLS}
    finally:
        with contextlib.suppress(Exception):
            db.close_all()  # type: ignore[attr-defined]
    broker = build_broker(settings, worker=False)
    install(broker)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("SHIFTFLOW_", "BENCH_"))}
    command = [str(BIN / "dramatiq"), "shiftflow.consumers.worker", "--processes", str(processes),
               "--threads", str(threads)]
    side = ShiftFlowSide("sf", "ShiftFlow", pg_url, Workers("sf", [command], {**base_env, **env}, work / "logs"))
    side.env, side.workflows = env, workflows
    side.publisher = ConfirmedBatchPublisher(env["SHIFTFLOW_AMQP_URL"], broker)
    return side


def setup_dramatiq(res: Resources, mongo_url: str, work: Path, base: str, smtp_port: int, image_path: Path,
                   processes: int, threads: int) -> DramatiqSide:
    import importlib

    from bench.engine_baselines.common import SCHEMA

    pg_url = res.pg_database("dq_tools")
    env = {
        "BENCH_PG_URL": pg_url,
        "BENCH_AMQP_URL": res.vhost("dq_tools"),
        "BENCH_MONGO_URL": mongo_url,
        "BENCH_MONGO_DB": f"{res.run}_dq_tools",
        "BENCH_HTTP_BASE": base,
        "BENCH_SMTP_PORT": str(smtp_port),
        "BENCH_IMAGE": str(image_path),
        "PYTHONPATH": str(ROOT),
    }
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("SHIFTFLOW_", "BENCH_"))}
    command = [str(BIN / "dramatiq"), "bench.engine_baselines.tool_actors", "--processes", str(processes),
               "--threads", str(threads)]
    side = DramatiqSide("dq", "bare Dramatiq", pg_url, Workers("dq", [command], {**base_env, **env}, work / "logs"))
    side.query(SCHEMA + "; SELECT 1")
    os.environ.update({k: env[k] for k in ("BENCH_AMQP_URL",)})
    side.app = importlib.import_module("bench.engine_baselines.tool_actors")
    return side


def source_image(work: Path) -> tuple[Path, dict[str, Any]]:
    """The picture both sides thumbnail (bench_tools.py's): its path and its artifact reference."""
    from PIL import Image

    from shiftflow.kernel.artifacts import LocalArtifactStore

    picture = io.BytesIO()
    Image.effect_mandelbrot((800, 600), (-2, -1.2, 1, 1.2), 64).convert("RGB").save(picture, "PNG")
    path = work / "bench.png"
    path.write_bytes(picture.getvalue())
    ref = LocalArtifactStore(work / "artifacts").put(picture.getvalue(), "bench.png", "image/png").to_dict()
    return path, ref


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every call count")
    parser.add_argument("--processes", type=int, default=2, help="worker processes of each side")
    parser.add_argument("--threads", type=int, default=4, help="threads per worker process of each side")
    parser.add_argument("--blocks", type=int, default=3, help="blocks per side and tool (alternating)")
    parser.add_argument("--tools", nargs="*", default=list(CALLS), choices=list(CALLS), help="only these tools")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bench-tool-steps-"))
    smtp_port, http_port = free_port(), free_port()
    servers = [
        subprocess.Popen([PY, "-m", "aiosmtpd", "-n", "-l", f"127.0.0.1:{smtp_port}", "-c", "aiosmtpd.handlers.Sink"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        subprocess.Popen([PY, "-c", HTTP_SERVER, str(http_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]
    sides: list[Side] = []
    with contextlib.ExitStack() as stack:
        try:
            for port, process in zip((smtp_port, http_port), servers, strict=True):
                wait_port(port, process)
            base = f"http://127.0.0.1:{http_port}"
            res = Resources(stack)
            mongo_url, _ = res.mongo()
            image_path, image_ref = source_image(work)
            sides = [
                setup_dramatiq(res, mongo_url, work, base, smtp_port, image_path, args.processes, args.threads),
                setup_shiftflow(res, mongo_url, work, base, smtp_port, image_ref, args.processes, args.threads),
            ]
            for side in sides:
                side.workers.start()
            time.sleep(3)
            for side in sides:
                side.workers.check_alive()
            print(f"{socket.gethostname()}: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start, "
                  f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {args.processes} processes x "
                  f"{args.threads} threads each side", flush=True)
            # Warm up every tool on both sides: connections, caches, Chromium started.
            for tool in args.tools:
                for side in sides:
                    run_block(side, tool, f"warm-{side.key}-{tool}", 2 * args.processes * args.threads)
            print(f"{'tool':<20} {'calls':>5} {'sf/s':>8} {'bare/s':>8} {'ratio':>6} "
                  f"{'sf ms':>8} {'bare ms':>8} {'ratio':>6}   (worker CPU ms per call)", flush=True)
            for tool in args.tools:
                n = max(args.processes * args.threads, int(CALLS[tool] * args.scale / args.blocks))
                for block in range(args.blocks):
                    for side in sides:  # bare first, then ShiftFlow: alternating blocks
                        wall, cpu = run_block(side, tool, f"{side.key}-{tool}-{block}", n)
                        total = side.totals.setdefault(tool, [0.0, 0.0, 0.0])
                        total[0] += n
                        total[1] += wall
                        total[2] += cpu
                dq, sf = sides[0].totals[tool], sides[1].totals[tool]
                dq_rate, sf_rate = dq[0] / dq[1], sf[0] / sf[1]
                dq_cpu, sf_cpu = dq[2] / dq[0], sf[2] / sf[0]
                print(f"{tool:<20} {int(sf[0]):>5} {sf_rate:>8.1f} {dq_rate:>8.1f} {sf_rate / dq_rate:>6.2f} "
                      f"{sf_cpu:>8.1f} {dq_cpu:>8.1f} {sf_cpu / dq_cpu if dq_cpu else float('nan'):>6.2f}", flush=True)
            print(f"\nload average {os.getloadavg()[0]:.1f} at the end on {os.cpu_count()} cores")
        finally:
            for side in sides:
                with contextlib.suppress(Exception):
                    side.workers.stop()
                if side.conn is not None:
                    with contextlib.suppress(Exception):
                        side.conn.close()
            for side in sides:
                if isinstance(side, ShiftFlowSide):
                    with contextlib.suppress(Exception):
                        side.publisher.close()
            for process in servers:
                if process.poll() is None:
                    process.terminate()
                    process.wait(timeout=10)
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
