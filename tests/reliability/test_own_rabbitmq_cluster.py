"""The cluster test's own RabbitMQ nodes: a port taken before the node binds it is retried,
and a crashed node's dump stays in its own directory."""

from __future__ import annotations

import secrets
import socket
from pathlib import Path

import pytest

from tests.own_rabbitmq_cluster import _ClusterNode
from tests.support.ports import free_port

pytestmark = [pytest.mark.acceptance, pytest.mark.reliability]


def test_a_crash_dump_goes_to_the_nodes_own_directory() -> None:
    node = _ClusterNode(free_port(), secrets.token_hex(16).upper(), 0)
    try:
        assert node._env()["ERL_CRASH_DUMP"] == str(node.dir / "erl_crash.dump")
    finally:
        node.close()


@pytest.mark.timeout(300)
def test_a_distribution_port_taken_before_the_node_binds_it_is_retried_on_a_fresh_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    node = _ClusterNode(free_port(), secrets.token_hex(16).upper(), 0)
    # Another process took the port free_port() picked, between the pick and the bind.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as thief:
        thief.bind(("127.0.0.1", 0))
        thief.listen()
        taken = thief.getsockname()[1]
        node.dist_port = taken
        try:
            node.start(timeout=120)
            assert node.answers()
            assert node.dist_port != taken
            assert "dist_port_already_used" in (node.dir / "server.log").read_text(errors="replace")
            # The failed attempt's VM wrote its crash dump beside the node's data, not here.
            assert (node.dir / "erl_crash.dump").exists()
            assert not (tmp_path / "erl_crash.dump").exists()
        finally:
            node.close()
