"""A PostgreSQL cluster of one test's own, for tests that crash the database.

The machine's shared PostgreSQL serves every session and is never stopped; a test that
needs an outage makes its own cluster with ``initdb`` in a temporary directory, runs it
on a port of its own, and crashes and restarts only that cluster (``pg_ctl`` acts on the
postmaster whose PID is in the cluster's own data directory). As root, the server
programs run as the ``postgres`` user (``initdb`` refuses root).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg2

from tests.support.ports import free_port


def _bindir() -> Path:
    """Where ``initdb`` and ``pg_ctl`` are: the newest ``/usr/lib/postgresql/*/bin``, else ``PATH``."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl is None:
        raise RuntimeError("pg_ctl not found: install PostgreSQL's server programs")
    return Path(os.path.realpath(pg_ctl)).parent


class OwnPostgres:
    """``initdb`` + ``pg_ctl`` on a temporary directory and a free loopback port.

    ``start`` and ``crash`` (an immediate stop: no shutdown checkpoint, crash recovery on
    the next start) may alternate; ``close`` stops the cluster and removes its files.
    """

    def __init__(self) -> None:
        # A short path: the Unix socket lives here too (socket paths are limited to ~100 bytes).
        self.root = Path(tempfile.mkdtemp(prefix="sf-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.port = free_port()
        self.bindir = _bindir()
        self.user = "postgres" if os.geteuid() == 0 else None
        if self.user:
            shutil.chown(self.root, self.user)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                  "--locale=C", "--no-sync")

    def _run(self, program: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        command = [str(self.bindir / program), *args]
        if self.user:
            command = ["runuser", "-u", self.user, "--", *command]
        done = subprocess.run(command, capture_output=True, timeout=120, check=False)
        if check and done.returncode != 0:
            raise RuntimeError(f"{program} failed ({done.returncode}): {done.stderr.decode(errors='replace')}"
                               f"\n{self.log_tail()}")
        return done

    def url(self, database: str = "postgres") -> str:
        """``postgresql://postgres@127.0.0.1:<port>/<database>``."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        """Start the cluster and wait until it accepts connections."""
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off "
                   "-c max_connections=200 -c full_page_writes=off")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start")

    def crash(self) -> None:
        """Stop the cluster at once, as a crash would (``pg_ctl stop -m immediate``)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def create_database(self, name: str) -> str:
        """Create database ``name``; return its URL."""
        conn = psycopg2.connect(self.url())
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return self.url(name)

    def log_tail(self, chars: int = 2000) -> str:
        """The end of the server log."""
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no server log)"

    def close(self) -> None:
        """Stop the cluster (if it runs) and remove its directory."""
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(self.root, ignore_errors=True)
