"""Servers of the fault suite's own: RabbitMQ, PostgreSQL, Redis and a MongoDB-wire store.

The fault scenarios kill, stop and restart the servers underneath ShiftFlow, so they
never use the machine's shared ones: each class here starts a server of its own, on
loopback ports of its own, with every file in a directory of its own, and stops it by
the PID it started (never by name). ``start``/``kill``/``stop`` may be called again and
again: a restart reuses the same port and data, as a crashed server restarted in place.

* ``OwnRabbitMQ``: a node ``sfrel-<hex>@localhost`` with its own ``epmd``, Erlang
  cookie (``HOME``), config, data, log and PID file; ``rabbitmqctl -n`` reaches it with
  the same ``HOME``. Its config is the project's ``deploy/rabbitmq.conf`` plus the
  listener.
* ``OwnPostgres``: a cluster made with ``initdb``, run by the ``postgres`` binary itself
  (so its PID is the postmaster's), as the ``postgres`` user when the suite runs as
  root (``initdb`` refuses root). ``crash`` is an immediate stop (SIGQUIT: no
  checkpoint, crash recovery at the next start).
* ``OwnRedis``: ``redis-server`` without persistence.
* ``OwnSecantus``: ``secantusd-py`` (SecantusDB, the test extra) on a fixed port and data dir.

Binaries are looked up once (``find_binaries``); a missing one fails with its name.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.ports import free_port, port_open

ROOT = Path(__file__).resolve().parents[2]


class ServiceError(RuntimeError):
    """A server of the suite's own could not be found, started or stopped."""


@dataclass(frozen=True)
class Binaries:
    """Where the server programs are."""

    rabbitmq_server: str
    rabbitmqctl: str
    epmd: str
    pg_bin: str
    redis_server: str
    secantusd: list[str]


def find_binaries() -> Binaries:
    """Locate every server program the suite needs.

    RabbitMQ: the upstream scripts under ``/usr/lib/rabbitmq/bin`` when present (Debian's
    ``/usr/sbin`` wrappers switch to the ``rabbitmq`` user and its home, whose cookie and
    logs belong to the shared node), else the ones on ``PATH``. PostgreSQL: the newest
    ``/usr/lib/postgresql/*/bin`` (Debian), else ``initdb`` on ``PATH``.

    Raises:
        ServiceError: a program is missing; the message names every missing one.
    """
    missing: list[str] = []

    def which(name: str, *preferred: str) -> str:
        for path in preferred:
            if os.access(path, os.X_OK):
                return path
        found = shutil.which(name)
        if found is None:
            missing.append(name)
            return ""
        return found

    rabbit_dirs = sorted(glob.glob("/usr/lib/rabbitmq/bin"))
    rabbitmq_server = which("rabbitmq-server", *(d + "/rabbitmq-server" for d in rabbit_dirs))
    rabbitmqctl = which("rabbitmqctl", *(d + "/rabbitmqctl" for d in rabbit_dirs))
    epmd = which("epmd")
    pg_dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: [int(x) for x in re.findall(r"\d+", d)])
    initdb = which("initdb", *(d + "/initdb" for d in reversed(pg_dirs)))
    redis_server = which("redis-server")
    exe = Path(sys.executable).with_name("secantusd-py")
    secantusd = [str(exe)] if exe.exists() else [sys.executable, "-m", "secantus"]
    if missing:
        raise ServiceError(
            "the reliability suite needs " + ", ".join(missing) + " (RabbitMQ server, PostgreSQL server "
            "binaries from Debian's postgresql package, redis-server); it starts servers of its own "
            "and never uses the shared ones"
        )
    return Binaries(rabbitmq_server, rabbitmqctl, epmd, str(Path(initdb).parent), redis_server, secantusd)


def _die_with_parent() -> None:  # runs in the child between fork and exec
    # PR_SET_PDEATHSIG: a pytest session killed outright leaves no server behind. The
    # signal comes when the *thread* that started the child ends, so servers are started
    # from the test's main thread only.
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


def _wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    try:
        proc.wait(timeout)
        return True
    except subprocess.TimeoutExpired:
        return False


class OwnServer:
    """One server process: started, killed and stopped by its PID, logging to ``log``."""

    name = "server"

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.log = root / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    # -- to override ------------------------------------------------------------------
    def command(self) -> list[str]:
        """The server's command line."""
        raise NotImplementedError

    def environment(self) -> dict[str, str] | None:
        """The server's environment (None: inherit)."""
        return None

    def ready(self) -> bool:
        """True once the server answers."""
        raise NotImplementedError

    def user(self) -> str | None:
        """The user to run as (None: the suite's own)."""
        return None

    # -- life -------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        """The server's PID while it runs."""
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def running(self) -> bool:
        """True while the process this object started is alive."""
        return self.pid is not None

    def start(self, timeout: float = 60.0) -> None:
        """Start the server (unless it runs) and wait until it answers.

        Raises:
            ServiceError: it exited or did not answer within ``timeout`` (with its log).
        """
        if not self.running():
            self.spawn()
        self.wait_ready(timeout)

    def spawn(self) -> None:
        """Start the process without waiting for it to answer."""
        if self.running():
            return
        self.starts += 1
        with self.log.open("ab") as log:
            log.write(f"\n--- start {self.starts} at {time.strftime('%H:%M:%S')}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.command(),
                env=self.environment(),
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                user=self.user(),
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until the started server answers.

        Raises:
            ServiceError: it exited or did not answer within ``timeout``.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                break
            if self.ready():
                return
            time.sleep(0.1)
        code = None if self.proc is None else self.proc.poll()
        raise ServiceError(f"{self.name} did not start (exit {code}); its log ends:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL the server (a crash) and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the server gracefully (SIGTERM), SIGKILL after ``timeout``."""
        self.signal_and_wait(signal.SIGTERM, timeout)

    def signal_and_wait(self, sig: signal.Signals, timeout: float) -> None:
        """Send ``sig``, wait up to ``timeout`` for the exit, SIGKILL if it is still there."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        if not _wait_exit(self.proc, timeout):
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def log_tail(self, chars: int = 2500) -> str:
        """The end of the server's log."""
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"


# --------------------------------------------------------------------------- RabbitMQ


class OwnEpmd(OwnServer):
    """An Erlang port mapper of the suite's own (the node and ``rabbitmqctl`` use its port)."""

    name = "epmd"

    def __init__(self, root: Path, binary: str) -> None:
        super().__init__(root)
        self.binary = binary
        self.port = free_port()

    def command(self) -> list[str]:
        return [self.binary, "-port", str(self.port), "-address", "127.0.0.1"]

    def ready(self) -> bool:
        return port_open("127.0.0.1", self.port, 0.5)


class OwnRabbitMQ(OwnServer):
    """A RabbitMQ node of the suite's own; guest/guest on loopback.

    The PID is the Erlang VM's: with ``RUNNING_UNDER_SYSTEMD`` set, ``rabbitmq-server``
    ``exec``s into it, so SIGKILL is a real broker crash and SIGTERM its orderly shutdown.
    """

    name = "rabbitmq"

    def __init__(self, root: Path, binaries: Binaries) -> None:
        super().__init__(root)
        self.binaries = binaries
        self.node = f"sfrel-{secrets.token_hex(4)}@localhost"
        self.port = free_port()
        self.dist_port = free_port()
        self.epmd = OwnEpmd(root / "epmd", binaries.epmd)
        self.home = root / "home"
        self.home.mkdir(exist_ok=True)
        cookie = self.home / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(16).upper())
        cookie.chmod(0o400)
        (root / "rabbitmq-env.conf").write_text("# empty: the shared node's env file must not apply\n")
        (root / "enabled_plugins").write_text("[].\n")
        deployed = (ROOT / "deploy" / "rabbitmq.conf").read_text()
        (root / "rabbitmq.conf").write_text(
            "# deploy/rabbitmq.conf, then this node's listener\n"
            + deployed
            + f"\nlisteners.tcp.1 = 127.0.0.1:{self.port}\n"
        )

    def environment(self) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        return {
            **base,
            "HOME": str(self.home),  # the Erlang cookie of this node and of rabbitmqctl
            "RABBITMQ_CONF_ENV_FILE": str(self.root / "rabbitmq-env.conf"),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.root / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.root / "log"),
            "RABBITMQ_PID_FILE": str(self.root / "rabbitmq.pid"),
            "RABBITMQ_CONFIG_FILE": str(self.root / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.root / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.root / "enabled_plugins"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            # The script then execs the Erlang VM instead of waiting on it from a shell, so
            # the PID started is the broker's own (SIGKILL is a broker crash).
            "RUNNING_UNDER_SYSTEMD": "true",
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "ERL_EPMD_PORT": str(self.epmd.port),
        }

    def command(self) -> list[str]:
        return [self.binaries.rabbitmq_server]

    def spawn(self) -> None:
        self.epmd.start(10)
        super().spawn()

    def ready(self) -> bool:
        if not port_open("127.0.0.1", self.port, 0.5):
            return False
        import pika

        params = pika.ConnectionParameters(
            "127.0.0.1", self.port, "/", pika.PlainCredentials("guest", "guest"),
            connection_attempts=1, socket_timeout=3, blocked_connection_timeout=5,
        )
        try:
            pika.BlockingConnection(params).close()
        except Exception:
            return False
        return True

    def url(self, vhost: str) -> str:
        """The guest AMQP URL of ``vhost``."""
        from urllib.parse import quote

        return f"amqp://guest:guest@127.0.0.1:{self.port}/{quote(vhost, safe='')}"

    def ctl(self, *args: str, timeout: float = 60.0) -> str:
        """Run ``rabbitmqctl -n <node> args``; return its output.

        Raises:
            ServiceError: it failed (with its output).
        """
        result = subprocess.run(
            [self.binaries.rabbitmqctl, "-n", self.node, "-q", *args],
            env=self.environment(), capture_output=True, text=True, timeout=timeout, cwd=self.root,
        )
        if result.returncode != 0:
            raise ServiceError(f"rabbitmqctl {' '.join(args)}: exit {result.returncode}\n{result.stdout}{result.stderr}")
        return result.stdout

    def add_vhost(self, name: str) -> str:
        """Create vhost ``name`` with every permission for guest; return its AMQP URL."""
        self.ctl("add_vhost", name)
        self.ctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        return self.url(name)

    def stop(self, timeout: float = 60.0) -> None:
        """Stop the node (SIGTERM: RabbitMQ's orderly shutdown), then its epmd."""
        super().stop(timeout)
        self.epmd.stop(10)


# --------------------------------------------------------------------------- PostgreSQL


class OwnPostgres(OwnServer):
    """A PostgreSQL cluster of the suite's own; role ``postgres``, trust, 127.0.0.1 only.

    ``fsync=off``: the operating system never crashes here, only the server, and a
    server crash loses nothing that was written (the WAL is in the page cache); commits
    stay synchronous, so a committed transaction survives ``crash``.
    """

    name = "postgres"

    def __init__(self, root: Path, binaries: Binaries) -> None:
        super().__init__(root)
        self.binaries = binaries
        self.port = free_port()
        self.data = root / "data"
        self.sockets = root / "sockets"
        self._user = None
        if os.geteuid() == 0:  # initdb refuses root
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                raise ServiceError("running as root, the suite needs a 'postgres' user to run PostgreSQL") from None
            self._user = "postgres"
            root.chmod(0o755)
            for parent in root.parents:  # the postgres user must reach the data directory
                if parent == Path("/") or str(parent) == "/tmp":
                    break
                parent.chmod(parent.stat().st_mode | 0o011)

    def user(self) -> str | None:
        return self._user

    def initdb(self) -> None:
        """Create the cluster (once).

        Raises:
            ServiceError: ``initdb`` failed (with its output).
        """
        if (self.data / "PG_VERSION").exists():
            return
        for directory in (self.data, self.sockets):
            directory.mkdir(exist_ok=True)
            if self._user:
                shutil.chown(directory, self._user)
        result = subprocess.run(
            [f"{self.binaries.pg_bin}/initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust",
             "-E", "UTF8", "--locale=C", "--no-sync"],
            user=self._user, capture_output=True, text=True, timeout=120, cwd=self.root,
        )
        if result.returncode != 0:
            raise ServiceError(f"initdb failed: {result.stdout}{result.stderr}")

    def spawn(self) -> None:
        self.initdb()
        super().spawn()

    def command(self) -> list[str]:
        return [
            f"{self.binaries.pg_bin}/postgres", "-D", str(self.data), "-p", str(self.port),
            "-k", str(self.sockets), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
            "-c", "full_page_writes=off", "-c", "max_connections=300", "-c", "shared_buffers=64MB",
        ]

    @property
    def admin_url(self) -> str:
        """``postgresql://postgres@127.0.0.1:<port>/postgres``."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def ready(self) -> bool:
        import psycopg2

        try:
            psycopg2.connect(self.admin_url, connect_timeout=2).close()
        except psycopg2.Error:
            return False
        return True

    def crash(self) -> None:
        """Immediate stop (``pg_ctl -m immediate``: SIGQUIT to the postmaster), no checkpoint."""
        self.signal_and_wait(signal.SIGQUIT, 30)

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (SIGINT: running transactions rolled back, then a checkpoint)."""
        self.signal_and_wait(signal.SIGINT, timeout)


# --------------------------------------------------------------------------- Redis


class OwnRedis(OwnServer):
    """``redis-server`` of the suite's own, without persistence."""

    name = "redis"

    def __init__(self, root: Path, binaries: Binaries) -> None:
        super().__init__(root)
        self.binaries = binaries
        self.port = free_port()

    def command(self) -> list[str]:
        return [
            self.binaries.redis_server, "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", str(self.root), "--databases", "64",
        ]

    def url(self, db: int) -> str:
        """``redis://127.0.0.1:<port>/<db>``."""
        return f"redis://127.0.0.1:{self.port}/{db}"

    def ready(self) -> bool:
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1, socket_connect_timeout=1)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()


# --------------------------------------------------------------------------- MongoDB wire


class OwnSecantus(OwnServer):
    """``secantusd-py`` (SecantusDB) of the suite's own, on a fixed port and data directory."""

    name = "secantus"

    def __init__(self, root: Path, binaries: Binaries) -> None:
        super().__init__(root)
        self.binaries = binaries
        self.port = free_port()
        self.config = root / "secantusd.toml"
        self.config.write_text("# empty: stops discovery of ./secantusd.toml and /etc/secantus\n")

    def command(self) -> list[str]:
        return [
            *self.binaries.secantusd, "--config", str(self.config), "--host", "127.0.0.1",
            "--port", str(self.port), "--storage-path", str(self.root / "data"), "--log-level", "WARNING",
        ]

    @property
    def url(self) -> str:
        """The client URL (``retryWrites=false``: SecantusDB slows down with retryable writes)."""
        return f"mongodb://127.0.0.1:{self.port}/?retryWrites=false&serverSelectionTimeoutMS=5000"

    def ready(self) -> bool:
        if not port_open("127.0.0.1", self.port, 0.5):
            return False
        import pymongo

        client: Any = pymongo.MongoClient(self.url, serverSelectionTimeoutMS=2000, connectTimeoutMS=2000)
        try:
            client.admin.command("ping")
            return True
        except Exception:
            return False
        finally:
            client.close()
