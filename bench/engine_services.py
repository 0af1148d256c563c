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

    def echo(self) -> tuple[str, int]:
        """The loopback echo service (``bench/echo_server.py``) in its own process; returns its
        URL and pid (stopped at exit)."""
        import tempfile

        folder = Path(tempfile.mkdtemp(prefix="sf-bench-echo-"))
        port_file = folder / "port"
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "echo_server.py"), str(port_file)],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )

        def stop() -> None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
            with contextlib.suppress(OSError):
                port_file.unlink()
            with contextlib.suppress(OSError):
                folder.rmdir()

        self.stack.callback(stop)
        deadline = time.monotonic() + 20
        while not port_file.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the echo service did not start")
            time.sleep(0.05)
        return f"http://127.0.0.1:{port_file.read_text().strip()}/echo", proc.pid

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


#: The echo service's pid (``Resources.echo``), a component of every snapshot once set.
ECHO_PIDS: list[int] = []


def cpu_snapshot(workers: list[int], mongo: list[int]) -> CpuSnapshot:
    """CPU ticks (user+system) of each component of the benchmark.

    Components: the system's workers, PostgreSQL (every ``postgres`` process: also counts
    other users of the shared server), RabbitMQ (``beam.smp`` and helpers), the
    MongoDB-wire server, this benchmark process (the producer and the poller), and the
    echo service of the outside-call workloads (``ECHO_PIDS``).
    """
    table = _proc_table()
    groups: dict[str, Callable[[int, str], bool]] = {}
    worker_set, mongo_set = _descendants(table, workers), _descendants(table, mongo)
    echo_set = set(ECHO_PIDS)
    groups["workers"] = lambda pid, comm: pid in worker_set
    groups["postgres"] = lambda pid, comm: comm == "postgres" or comm.startswith("postgres:")
    groups["rabbitmq"] = lambda pid, comm: comm in ("beam.smp", "erl_child_setup", "epmd", "inet_gethost")
    groups["mongo"] = lambda pid, comm: pid in mongo_set
    groups["bench"] = lambda pid, comm: pid == os.getpid()
    groups["echo"] = lambda pid, comm: pid in echo_set
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


# --------------------------------------------------------------------------- PostgreSQL work

_DB_COUNTERS = "xact_commit, tup_returned, tup_fetched, tup_inserted, tup_updated, tup_deleted, blks_hit, blks_read"


def pg_counters(url: str) -> dict[str, int]:
    """The work counters of the database at ``url`` (``pg_stat_database``) and of its tables
    (``pg_stat_user_tables``: ``<table>.ins``, ``.upd``, ``.hot``): deltas between two calls
    say what a phase made PostgreSQL do in this database only, whoever else loads the server.

    Backends report their counters when a transaction ends, at most once a second: wait a
    second or two after the work before the second call.
    """
    import psycopg2

    conn = psycopg2.connect(url, connect_timeout=5)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_stat_clear_snapshot()")
            cur.execute(f"SELECT {_DB_COUNTERS} FROM pg_stat_database WHERE datname = current_database()")
            row = cur.fetchone()
            out = dict(zip([c.strip() for c in _DB_COUNTERS.split(",")], map(int, row or ()), strict=False))
            cur.execute("SELECT relname, n_tup_ins, n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables")
            for name, ins, upd, hot in cur.fetchall():
                out[f"{name}.ins"], out[f"{name}.upd"], out[f"{name}.hot"] = int(ins), int(upd), int(hot)
        return out
    finally:
        conn.close()


def pg_indexes(url: str) -> dict[str, int]:
    """Indexes per table of the database at ``url`` (each row insert writes every one of them,
    and so does each update that is not HOT)."""
    import psycopg2

    conn = psycopg2.connect(url, connect_timeout=5)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT relname, count(*) FROM pg_stat_user_indexes GROUP BY relname")
            return {name: int(n) for name, n in cur.fetchall()}
    finally:
        conn.close()


def counter_delta(before: dict[str, int], after: dict[str, int], per: float) -> dict[str, float]:
    """``(after - before) / per`` for every counter (missing before = 0), non-zero ones only."""
    out = {k: (v - before.get(k, 0)) / max(per, 1e-9) for k, v in after.items()}
    return {k: v for k, v in out.items() if v}
