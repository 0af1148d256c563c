"""A RabbitMQ node of one test's own, which the test may stop and start again.

The machine's RabbitMQ is shared by every session and must never be stopped. A test
that takes the broker away starts this one instead: its own node name, AMQP port,
distribution port and Erlang port mapper (epmd) port, its data, logs, config and Erlang
cookie under a temporary directory, no plugins. ``stop`` kills only the processes it
started, by pid (its session's group); ``start`` again reuses the same data.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support.ownership import token
from tests.support.ports import free_port, port_open

#: The server script itself: /usr/sbin/rabbitmq-server switches to the rabbitmq user.
SERVER = next((p for p in ("/usr/lib/rabbitmq/bin/rabbitmq-server", shutil.which("rabbitmq-server")) if p
               and os.path.exists(p)), "rabbitmq-server")


class OwnRabbitMQ:
    """A private RabbitMQ node on loopback: ``start``, ``stop``, ``start`` again, ``close``."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="sf-rabbit-"))
        self.node = f"sf-{token()}@localhost"
        self.port, self.dist_port, self.epmd_port = free_port(), free_port(), free_port()
        self.server: subprocess.Popen[bytes] | None = None
        self.epmd: subprocess.Popen[bytes] | None = None
        for name in ("mnesia", "log", "home"):
            (self.dir / name).mkdir()
        (self.dir / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.port}\nloopback_users.guest = true\n"
        )
        (self.dir / "enabled_plugins").write_text("[].\n")
        (self.dir / "rabbitmq-env.conf").write_text("")  # not /etc/rabbitmq's (the shared node's)

    @property
    def url(self) -> str:
        """The guest URL of the default vhost."""
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    def _env(self) -> dict[str, str]:
        return {
            **os.environ,
            "HOME": str(self.dir / "home"),  # its own Erlang cookie
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_CONF_ENV_FILE": str(self.dir / "rabbitmq-env.conf"),
            "RABBITMQ_PID_FILE": str(self.dir / "rabbitmq.pid"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    def start(self, timeout: float = 90.0) -> str:
        """Start the node (and its epmd) and return its URL once AMQP answers.

        Raises:
            RuntimeError: it did not answer within ``timeout`` seconds (with its log's end).
        """
        env = self._env()
        if self.epmd is None or self.epmd.poll() is not None:
            self.epmd = subprocess.Popen(["epmd", "-port", str(self.epmd_port), "-address", "127.0.0.1"],
                                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                         start_new_session=True)
            # Listening before the node starts, or the node would start a daemon of its own.
            deadline = time.monotonic() + 10
            while not port_open("127.0.0.1", self.epmd_port, timeout=0.2) and time.monotonic() < deadline:
                time.sleep(0.05)
        with (self.dir / "server.log").open("ab") as log:
            self.server = subprocess.Popen([SERVER], env=env, stdout=log, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.server.poll() is not None:
                break
            if port_open("127.0.0.1", self.port, timeout=0.5) and self.answers():
                return self.url
            time.sleep(0.2)
        tail = (self.dir / "server.log").read_text(errors="replace")[-3000:]
        self.stop()
        raise RuntimeError(f"own RabbitMQ node {self.node} did not start within {timeout:g}s:\n{tail}")

    def answers(self) -> bool:
        """True when an AMQP connection as guest opens."""
        import pika

        params = pika.URLParameters(self.url)
        params.connection_attempts, params.socket_timeout = 1, 2
        try:
            pika.BlockingConnection(params).close()
            return True
        except Exception:
            return False

    def stop(self, sig: signal.Signals = signal.SIGKILL) -> None:
        """Stop the node's processes (SIGKILL: the broker vanishes, as in a crash); keep its data."""
        if self.server is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.server.pid, sig)
            try:
                self.server.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.server.pid, signal.SIGKILL)
                self.server.wait(10)
            self.server = None

    def close(self) -> None:
        """Stop the node and its epmd; remove the directory."""
        self.stop()
        if self.epmd is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.epmd.pid, signal.SIGKILL)
            self.epmd.wait(10)
            self.epmd = None
        shutil.rmtree(self.dir, ignore_errors=True)
