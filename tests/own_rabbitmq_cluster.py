"""A RabbitMQ cluster of one test's own: three nodes on loopback, joined with ``join_cluster``.

Each node is an ``OwnRabbitMQ`` (its own node name, AMQP and distribution ports, data,
logs and config under a temporary directory); the three share one Erlang port mapper
(epmd, on a port of the cluster's own) and one Erlang cookie, which clustering needs.
``kill`` stops one node by its pid (SIGKILL, as a crash); ``close`` stops them all and
their epmd, by pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
from pathlib import Path

from tests.own_rabbitmq import OwnRabbitMQ
from tests.support.ports import free_port

CTL = next((p for p in ("/usr/lib/rabbitmq/bin/rabbitmqctl", shutil.which("rabbitmqctl")) if p and os.path.exists(p)),
           "rabbitmqctl")


class _ClusterNode(OwnRabbitMQ):
    """An ``OwnRabbitMQ`` on the cluster's epmd port, with the cluster's cookie."""

    def __init__(self, epmd_port: int, cookie: str, index: int) -> None:
        super().__init__()
        self.epmd_port = epmd_port
        self.node = self.node.replace("sf-", f"sf{index}-", 1)
        cookie_file = self.dir / "home" / ".erlang.cookie"
        cookie_file.write_text(cookie)
        os.chmod(cookie_file, 0o400)

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

    def node_named(self, name: str) -> _ClusterNode:
        """The node whose Erlang name is ``name``."""
        return next(node for node in self.nodes if node.node == name)

    def kill(self, node: _ClusterNode) -> None:
        """SIGKILL ``node`` (its process group only); its data stays for a restart."""
        node.stop(signal.SIGKILL)

    def close(self) -> None:
        """Stop every node, then the cluster's epmd (each node's ``close`` kills the epmd it
        started; they share one, so only the first started it), and remove the files."""
        for node in self.nodes:
            node.close()


def log_tail(node: OwnRabbitMQ, chars: int = 2000) -> str:
    """The end of a node's server log, for a failure message."""
    path = Path(node.dir) / "server.log"
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""
