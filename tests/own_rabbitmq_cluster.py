"""A RabbitMQ cluster of one test's own: three nodes on loopback, joined with ``join_cluster``.

Each node is an ``OwnRabbitMQ`` (its own node name, AMQP and distribution ports, data,
logs and config under a temporary directory); the three share one Erlang port mapper
(epmd, on a port of the cluster's own) and one Erlang cookie, which clustering needs.
``kill`` stops one node by its pid (SIGKILL, as a crash); ``restart`` starts it again
with the same name and data, and ``wait_joined`` waits until it is back in the cluster and
every quorum queue has all its members online; ``close`` stops them all and their epmd,
by pid.

A port picked by ``free_port`` may be taken by another process before the node binds it
(``eaddrinuse``, ``dist_port_already_used``): ``start`` then tries again on fresh ports.
A node that crashes writes its ``erl_crash.dump`` into its own directory, never into the
caller's current directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path

from tests.own_rabbitmq import OwnRabbitMQ
from tests.support.ports import free_port

CTL = next((p for p in ("/usr/lib/rabbitmq/bin/rabbitmqctl", shutil.which("rabbitmqctl")) if p and os.path.exists(p)),
           "rabbitmqctl")

#: What a node's log says when a port picked for it was taken before it bound it.
PORT_TAKEN = ("eaddrinuse", "dist_port_already_used")


class _ClusterNode(OwnRabbitMQ):
    """An ``OwnRabbitMQ`` on the cluster's epmd port, with the cluster's cookie."""

    def __init__(self, epmd_port: int, cookie: str, index: int) -> None:
        super().__init__()
        self.epmd_port = epmd_port
        self.node = self.node.replace("sf-", f"sf{index}-", 1)
        cookie_file = self.dir / "home" / ".erlang.cookie"
        cookie_file.write_text(cookie)
        os.chmod(cookie_file, 0o400)
        #: Once started, the AMQP port is fixed: clients were given the node's URL.
        self.started_once = False

    def _env(self) -> dict[str, str]:
        # The Erlang VM writes its crash dump into the current directory unless told where.
        return {**super()._env(), "ERL_CRASH_DUMP": str(self.dir / "erl_crash.dump")}

    def start(self, timeout: float = 90.0, attempts: int = 4) -> str:
        """Start the node (see ``OwnRabbitMQ.start``); when a port picked for it was taken
        before it bound it, try again (``attempts`` in all) on a fresh distribution port,
        and on a fresh AMQP port too unless it started before (its URL is known).

        Raises:
            RuntimeError: it did not start, for another reason or ``attempts`` times.
        """
        log = self.dir / "server.log"
        for attempt in range(1, attempts + 1):
            seen = log.stat().st_size if log.exists() else 0
            try:
                url = super().start(timeout)
            except RuntimeError:
                with log.open("rb") as f:
                    f.seek(seen)
                    said = f.read().decode(errors="replace")
                if attempt == attempts or not any(reason in said for reason in PORT_TAKEN):
                    raise
                self.dist_port = free_port()
                if not self.started_once:
                    self.port = free_port()
                    (self.dir / "rabbitmq.conf").write_text(
                        f"listeners.tcp.1 = 127.0.0.1:{self.port}\nloopback_users.guest = true\n"
                    )
                continue
            self.started_once = True
            return url
        raise AssertionError("unreachable")

    def ctl(self, *args: str, timeout: float = 60) -> str:
        """Run ``rabbitmqctl -n <this node> ...`` with the node's environment; return stdout."""
        # The script itself, not /usr/sbin's wrapper: the wrapper switches to the rabbitmq
        # user and its home, whose cookie is the machine's node's, not the cluster's.
        done = subprocess.run([CTL, "-q", "-n", self.node, *args], env=self._env(),
                              capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} on {self.node}: {done.stderr or done.stdout}")
        return done.stdout


class OwnRabbitMQCluster:
    """Three clustered nodes: ``start``, ``urls``, ``leader_of``, ``kill``, ``close``."""

    def __init__(self, size: int = 3) -> None:
        self.epmd_port = free_port()
        cookie = secrets.token_hex(16).upper()
        self.nodes = [_ClusterNode(self.epmd_port, cookie, i) for i in range(size)]

    def start(self) -> list[str]:
        """Start every node and join the others to the first; return their URLs."""
        first = self.nodes[0]
        first.start()
        for node in self.nodes[1:]:
            node.start()
            node.ctl("stop_app")
            node.ctl("join_cluster", first.node)
            node.ctl("start_app")
        running = json.loads(first.ctl("cluster_status", "--formatter", "json"))["running_nodes"]
        if sorted(running) != sorted(n.node for n in self.nodes):
            raise RuntimeError(f"cluster did not form: running {running}")
        return self.urls

    @property
    def urls(self) -> list[str]:
        """Every node's guest URL, in node order."""
        return [node.url for node in self.nodes]

    def leader_of(self, queue: str, vhost: str = "/") -> str:
        """The node name of ``queue``'s leader (a quorum queue), asked of a live node."""
        for node in self.nodes:
            if node.server is None:
                continue
            with contextlib.suppress(RuntimeError):
                out = node.ctl("list_queues", "-p", vhost, "name", "leader", "--formatter", "json")
                for row in json.loads(out):
                    if row["name"] == queue:
                        return str(row["leader"])
        raise RuntimeError(f"no leader found for {queue}")

    def queues(self, vhost: str = "/") -> dict[str, dict[str, object]]:
        """Each queue's ``leader``, ``messages``, ``members`` and ``online`` members (quorum
        queues), asked of a live node."""
        for node in self.nodes:
            if node.server is None:
                continue
            with contextlib.suppress(RuntimeError):
                out = node.ctl("list_queues", "-p", vhost, "name", "leader", "messages", "members", "online",
                               "--formatter", "json", timeout=20)
                return {str(row.pop("name")): row for row in json.loads(out)}
        raise RuntimeError("no live node answered list_queues")

    def node_named(self, name: str) -> _ClusterNode:
        """The node whose Erlang name is ``name``."""
        return next(node for node in self.nodes if node.node == name)

    def kill(self, node: _ClusterNode) -> None:
        """SIGKILL ``node`` (its process group only); its data stays for a restart."""
        node.stop(signal.SIGKILL)

    def restart(self, node: _ClusterNode, timeout: float = 90.0) -> None:
        """Start a killed ``node`` again: same name, same data directory (so same cluster
        membership), same AMQP port; it rejoins the others by itself."""
        node.start(timeout)

    def wait_joined(self, queues: list[str], vhost: str = "/", timeout: float = 90.0) -> None:
        """Wait until every node runs in the cluster and each of ``queues`` has every node
        as an online member.

        Raises:
            RuntimeError: not so within ``timeout`` seconds (with what was seen last).
        """
        names = sorted(n.node for n in self.nodes)
        deadline = time.monotonic() + timeout
        seen: object = None
        while time.monotonic() < deadline:
            with contextlib.suppress(RuntimeError, ValueError, KeyError, StopIteration):
                live = next(n for n in self.nodes if n.server is not None)
                running = json.loads(live.ctl("cluster_status", "--formatter", "json", timeout=20))["running_nodes"]
                found = self.queues(vhost)
                seen = (running, {q: found.get(q, {}).get("online") for q in queues})
                if sorted(running) == names and all(
                    sorted(found[q]["online"]) == names for q in queues  # type: ignore[call-overload]
                ):
                    return
            time.sleep(0.5)
        raise RuntimeError(f"cluster not whole within {timeout:g}s: running and online members {seen}")

    def close(self) -> None:
        """Stop every node, then the cluster's epmd (each node's ``close`` kills the epmd it
        started; they share one, so only the first started it), and remove the files."""
        for node in self.nodes:
            node.close()


def log_tail(node: OwnRabbitMQ, chars: int = 2000) -> str:
    """The end of a node's server log, for a failure message."""
    path = Path(node.dir) / "server.log"
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""
