"""Services and processes for ``bench_engine.py``: databases, vhosts, worker processes, CPU.

Every name this module creates starts with ``sf_t_b`` and carries the owner mark of
``tests.support.ownership`` (host and pid) in its comment or description, so a benchmark killed
with SIGKILL leaves nothing that the next test session or benchmark does not reap.
Everything created is registered on an ``ExitStack`` and removed when it unwinds,
Ctrl-C included.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support.ownership import OWNER, token  # noqa: E402 - after the path fix above
from tests.support.postgres import PG_ADMIN_URL, drop_pg_database, pg_admin, reap_pg, with_database  # noqa: E402
from tests.support.rabbitmq import VhostAdmin, amqp_url_for  # noqa: E402
from tests.support.redis_db import leased_redis_db  # noqa: E402
from tests.support.secantus import SecantusProcess, _die_with_parent  # noqa: E402

BIN = Path(sys.executable).parent
PG_ADMIN = os.environ.get("SHIFTFLOW_TEST_PG_ADMIN_URL") or PG_ADMIN_URL


class Resources:
    """Creates the benchmark's databases and vhosts and removes them on ``close``."""

    def __init__(self, stack: contextlib.ExitStack) -> None:
        self.stack = stack
        self.run = f"sf_t_b{token()[:8]}"
        self.vhosts = VhostAdmin()
        for reap in (lambda: reap_pg(PG_ADMIN), self.vhosts.reap):
            with contextlib.suppress(Exception):  # leftovers of killed runs: a courtesy
                reap()

    def pg_database(self, system: str) -> str:
        """A new, empty PostgreSQL database for ``system``; returns its URL (dropped at exit)."""
        name = f"{self.run}_{system}"
        with pg_admin(PG_ADMIN) as conn, conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
            self.stack.callback(drop_pg_database, PG_ADMIN, name)
            cur.execute(f"COMMENT ON DATABASE \"{name}\" IS '{OWNER}'")
        return with_database(PG_ADMIN, name)

    def vhost(self, system: str) -> str:
        """A new RabbitMQ vhost for ``system``; returns its guest AMQP URL (deleted at exit)."""
        name = f"{self.run}_{system}"
        self.vhosts.create(name)
        self.stack.callback(self.vhosts.delete, name)
        return amqp_url_for(name)

    def redis(self) -> str:
        """A leased Redis database for this run (flushed and given back at exit)."""
        return str(self.stack.enter_context(leased_redis_db()))

    def mongo(self) -> tuple[str, SecantusProcess]:
        """A SecantusDB server for this run (URL with ``retryWrites=false``), stopped at exit."""
        server = SecantusProcess()
        url = server.start()
        self.stack.callback(server.stop)
        return url, server


@dataclass
class Workers:
    """Worker processes of one system, each in its own session (process group)."""

    name: str
    commands: list[list[str]]
    env: dict[str, str]
    log_dir: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self) -> None:
        """Start every command; their output goes to ``log_dir/<name>-<i>.log``."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for i, command in enumerate(self.commands):
            with (self.log_dir / f"{self.name}-{i}.log").open("ab") as log:
                self.procs.append(
                    subprocess.Popen(
                        command,
                        env=self.env,
                        cwd=ROOT,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                        preexec_fn=_die_with_parent,
                    )
                )

    def pids(self) -> list[int]:
        """Pids of the started processes (the roots of their trees)."""
        return [p.pid for p in self.procs]

    def check_alive(self) -> None:
        """Raise with the log tail when a worker process exited on its own."""
        for i, proc in enumerate(self.procs):
            if proc.poll() is not None:
                raise RuntimeError(f"{self.name} worker exited with {proc.returncode}:\n{self.log_tail(i)}")

    def log_tail(self, i: int = 0, chars: int = 2500) -> str:
        """The end of worker ``i``'s log."""
        path = self.log_dir / f"{self.name}-{i}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM every process group, wait, then SIGKILL what is left."""
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        # Stragglers of a group whose leader exited (forked workers) go too.
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        self.procs.clear()


# --------------------------------------------------------------------------- CPU accounting

_TICK = os.sysconf("SC_CLK_TCK")


def _proc_table() -> dict[int, tuple[int, str, int]]:
    """pid -> (ppid, comm, CPU ticks) for every process."""
    table: dict[int, tuple[int, str, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        comm = raw[raw.index("(") + 1 : raw.rindex(")")]
        rest = raw[raw.rindex(")") + 2 :].split()
        # Fields after comm: state ppid ... utime(11) stime(12) cutime(13) cstime(14). Reaped
        # children count only for PostgreSQL (backends that exit during a phase); elsewhere a
        # reap between two snapshots would add a whole earlier process to its parent.
        ticks = int(rest[11]) + int(rest[12])
        if comm == "postgres":
            ticks += int(rest[13]) + int(rest[14])
        table[int(entry)] = (int(rest[1]), comm, ticks)
    return table


def _machine_busy() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


@dataclass
class CpuSnapshot:
    """CPU ticks per component at one moment."""

    at: float
    components: dict[str, int]
    busy: int
    total: int


def _descendants(table: dict[int, tuple[int, str, int]], roots: list[int]) -> set[int]:
    found = {r for r in roots if r in table}
    grew = True
    while grew:
        grew = False
        for pid, (ppid, _, _) in table.items():
            if ppid in found and pid not in found:
                found.add(pid)
                grew = True
    return found


def cpu_snapshot(workers: list[int], mongo: list[int]) -> CpuSnapshot:
    """CPU ticks (user+system) of each component of the benchmark.

    Components: the system's workers, PostgreSQL (every ``postgres`` process: also counts
    other users of the shared server), RabbitMQ (``beam.smp`` and helpers), the
    MongoDB-wire server, and this benchmark process (the producer and the poller).
    """
    table = _proc_table()
    groups: dict[str, Callable[[int, str], bool]] = {}
    worker_set, mongo_set = _descendants(table, workers), _descendants(table, mongo)
    groups["workers"] = lambda pid, comm: pid in worker_set
    groups["postgres"] = lambda pid, comm: comm == "postgres" or comm.startswith("postgres:")
    groups["rabbitmq"] = lambda pid, comm: comm in ("beam.smp", "erl_child_setup", "epmd", "inet_gethost")
    groups["mongo"] = lambda pid, comm: pid in mongo_set
    groups["bench"] = lambda pid, comm: pid == os.getpid()
    out = dict.fromkeys(groups, 0)
    for pid, (_, comm, ticks) in table.items():
        for name, member in groups.items():
            if member(pid, comm):
                out[name] += ticks
                break
    busy, total = _machine_busy()
    return CpuSnapshot(time.monotonic(), out, busy, total)


def cpu_ms_per_execution(before: CpuSnapshot, after: CpuSnapshot, executions: int) -> dict[str, float]:
    """CPU milliseconds per execution of each component between two snapshots, plus ``machine``
    (every process on the box) and ``utilisation`` (busy share of all cores, 0..1)."""
    n = max(1, executions)
    out = {k: (after.components[k] - before.components[k]) * 1000.0 / _TICK / n for k in after.components}
    out["machine"] = (after.busy - before.busy) * 1000.0 / _TICK / n
    out["utilisation"] = (after.busy - before.busy) / max(1, after.total - before.total)
    return out


def versions() -> dict[str, Any]:
    """Versions of the moving parts, for the report header."""
    from importlib import metadata

    out: dict[str, Any] = {}
    for dist in (
        "dramatiq",
        "pika",
        "celery",
        "kombu",
        "amqp",
        "psycopg2-binary",
        "peewee",
        "pymongo",
        "SecantusDB",
    ):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    with contextlib.suppress(Exception), pg_admin(PG_ADMIN) as conn, conn.cursor() as cur:
        cur.execute("SHOW server_version")
        out["postgresql"] = cur.fetchone()[0]
    with contextlib.suppress(Exception):
        out["rabbitmq"] = VhostAdmin._request("GET", "/overview", timeout=3)[1].get("rabbitmq_version")
    with contextlib.suppress(Exception):
        rev = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no", "shiftflow"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        out["shiftflow"] = rev + ("+dirty" if dirty else "")
    return out
