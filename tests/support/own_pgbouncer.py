"""A PgBouncer of one test's own, in front of the machine's PostgreSQL.

Its settings are ``deploy/pgbouncer.ini``'s (pool mode, ignored startup parameters, the
database's ``connect_query``), with this test's port, pool size, files and database. It
runs as the ``postgres`` user (PgBouncer refuses root), in its own session; ``close``
stops it by its pid only.
"""

from __future__ import annotations

import configparser
import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import psycopg2

from tests.support.ports import free_port, port_open

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
TEMPLATE = Path(__file__).resolve().parents[2] / "deploy" / "pgbouncer.ini"


class OwnPgBouncer:
    """PgBouncer on a free loopback port, pooling the database of ``pg_url``."""

    def __init__(self, pg_url: str, *, pool_size: int, template: Path = TEMPLATE,
                 overrides: dict[str, str] | None = None, application_name: str = "") -> None:
        parts = urlsplit(pg_url)
        self.database = parts.path.lstrip("/")
        self.user = parts.username or "postgres"
        self.pool_size = pool_size
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="sf-pgbouncer-"))
        os.chmod(self.dir, 0o777)
        config = configparser.ConfigParser(interpolation=None)
        config.read(template)
        shipped = config["databases"]["shiftflow"]
        connect_query = re.search(r"connect_query='[^']*'", shipped)
        settings = dict(config["pgbouncer"])
        settings.update({
            "listen_addr": "127.0.0.1", "listen_port": str(self.port), "unix_socket_dir": "",
            "auth_type": "trust", "auth_file": str(self.dir / "userlist.txt"),
            "admin_users": self.user, "stats_users": self.user,
            "default_pool_size": str(pool_size), "max_db_connections": str(pool_size),
            "logfile": str(self.dir / "pgbouncer.log"), "pidfile": str(self.dir / "pgbouncer.pid"),
            **(overrides or {}),
        })
        entry = (f"host={parts.hostname or '127.0.0.1'} port={parts.port or 5432} dbname={self.database} "
                 f"user={self.user} {connect_query.group(0) if connect_query else ''}"
                 + (f" application_name={application_name}" if application_name else ""))
        lines = ["[databases]", f"{self.database} = {entry}", "", "[pgbouncer]"]
        lines += [f"{key} = {value}" for key, value in settings.items()]
        (self.dir / "pgbouncer.ini").write_text("\n".join(lines) + "\n")
        (self.dir / "userlist.txt").write_text(f'"{self.user}" ""\n')
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The pooled URL of the database."""
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{self.database}"

    def start(self, timeout: float = 20.0) -> str:
        """Start PgBouncer; return the pooled URL once it listens."""
        self.process = subprocess.Popen(
            [PGBOUNCER, "-u", "postgres", str(self.dir / "pgbouncer.ini")],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            if port_open("127.0.0.1", self.port, timeout=0.2):
                return self.url
            time.sleep(0.05)
        log = (self.dir / "pgbouncer.log").read_text(errors="replace") if (self.dir / "pgbouncer.log").exists() else ""
        self.close()
        raise RuntimeError(f"pgbouncer did not start within {timeout:g}s:\n{log[-2000:]}")

    def pools(self) -> list[dict[str, object]]:
        """``SHOW POOLS`` from the admin console, one dict per (database, user)."""
        conn = psycopg2.connect(host="127.0.0.1", port=self.port, dbname="pgbouncer", user=self.user)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute("SHOW POOLS")
                names = [d[0] for d in cur.description]
                return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
        finally:
            conn.close()

    def server_connections(self) -> int:
        """Server connections PgBouncer holds to this test's database now (any state)."""
        total = 0
        for pool in self.pools():
            if pool["database"] == self.database:
                total += sum(int(v) for k, v in pool.items() if str(k).startswith("sv_"))  # type: ignore[call-overload]
        return total

    def close(self) -> None:
        """Stop PgBouncer (by its pid) and remove its files."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
            self.process = None
        shutil.rmtree(self.dir, ignore_errors=True)
