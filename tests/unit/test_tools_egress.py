"""The browser's egress proxy (SOCKS5 on loopback) with a plain socket client: the guard
judges every address a name resolves to, and the connection goes to a judged address."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import pytest

from shiftflow.kernel.errors import ToolError
from shiftflow.kernel.tools.egress import EgressProxy
from tests.tool_servers import PageServer


@pytest.fixture
def page() -> Iterator[PageServer]:
    server = PageServer({"/": (200, {"Content-Type": "text/plain"}, b"hello")})
    yield server
    server.close()


def _socks_connect(proxy: EgressProxy, host: str, port: int) -> tuple[int, socket.socket]:
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    sock.sendall(b"\x05\x01\x00")
    assert sock.recv(2) == b"\x05\x00"
    name = host.encode()
    sock.sendall(b"\x05\x01\x00\x03" + bytes([len(name)]) + name + struct.pack(">H", port))
    reply = sock.recv(10)
    return reply[1], sock


def test_an_allowed_name_is_reached_through_the_address_the_guard_judged(page):
    judged: list[str] = []
    proxy = EgressProxy(judged.append)
    try:
        code, sock = _socks_connect(proxy, "localhost", page.port)
        with sock:
            assert code == 0
            sock.sendall(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
        assert answer.startswith(b"HTTP/1.0 200") and answer.endswith(b"hello")
        # The guard saw addresses, never the name: what it judged is what was dialled.
        assert judged and all("localhost" not in url for url in judged)
        assert f"http://127.0.0.1:{page.port}/" in judged
    finally:
        proxy.close()


def test_a_refused_destination_gets_socks_reply_2_and_no_connection(page):
    def refuse(url: str) -> None:
        raise ToolError(f"url {url!r}: destination is not a public address")

    proxy = EgressProxy(refuse)
    try:
        code, sock = _socks_connect(proxy, "127.0.0.1", page.port)
        sock.close()
        assert code == 2
        assert "not a public address" in proxy.refused[f"127.0.0.1:{page.port}"]
        assert page.hits == []
    finally:
        proxy.close()
