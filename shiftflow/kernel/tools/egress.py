"""A loopback SOCKS5 proxy that lets a browser connect only where the guard allows.

The DevTools ``Fetch`` interception (``chromium.py``) sees HTTP requests but not WebSocket
handshakes, and WebRTC can use UDP. A guarded browser is therefore started with every
connection routed through this proxy (``--proxy-server=socks5://...``, loopback not
bypassed, WebRTC limited to proxied traffic): each ``CONNECT`` names a host and port; the
proxy resolves the host once, the guard (the HTTP tool's ``check_destination`` in
production) judges every address, and the connection goes to the judged addresses only
(so DNS rebinding cannot swap in another). A refused one gets SOCKS reply 2 (not allowed
by ruleset) without any connection being opened.

One thread accepts; each allowed connection is relayed by a thread of its own until
either side closes or stays idle longer than ``idle_timeout``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import selectors
import socket
import struct
import threading
from collections.abc import Callable

from shiftflow.kernel.errors import ShiftFlowError

#: SOCKS5 reply codes (RFC 1928 section 6).
_OK, _NOT_ALLOWED, _UNREACHABLE, _REFUSED, _UNSUPPORTED = 0, 2, 4, 5, 7


class _Closed(Exception):
    """The client went away in the middle of the handshake."""


def _exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise _Closed
        data += chunk
    return data


class EgressProxy:
    """SOCKS5 (no authentication, CONNECT only) on ``127.0.0.1:<port>``.

    Parameters:
        guard: called with ``http://host:port/`` for each connection; raises a
            ``ShiftFlowError`` to refuse it.
        connect_timeout: timeout of the connection to the destination.
        idle_timeout: a relayed connection with no traffic for this long is closed.
    """

    def __init__(self, guard: Callable[[str], None], *, connect_timeout: float = 10.0,
                 idle_timeout: float = 300.0) -> None:
        self.guard = guard
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        #: ``host:port`` -> why the guard refused it (the latest ones; for error messages).
        self.refused: dict[str, str] = {}
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.port: int = self._listener.getsockname()[1]
        self.url = f"socks5://127.0.0.1:{self.port}"
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, name="egress-proxy", daemon=True)
        self._thread.start()

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # listener closed
            threading.Thread(target=self._serve, args=(client,), name="egress-relay", daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with contextlib.ExitStack() as stack:
            stack.enter_context(client)
            client.settimeout(self.connect_timeout)
            try:
                version, count = _exactly(client, 2)
                _exactly(client, count)  # offered methods: we answer "no authentication"
                if version != 5:
                    return
                client.sendall(b"\x05\x00")
                version, command, _, kind = _exactly(client, 4)
                if kind == 1:
                    host = socket.inet_ntoa(_exactly(client, 4))
                elif kind == 3:
                    host = _exactly(client, _exactly(client, 1)[0]).decode("idna")
                elif kind == 4:
                    host = socket.inet_ntop(socket.AF_INET6, _exactly(client, 16))
                else:
                    self._reply(client, _UNSUPPORTED)
                    return
                port = struct.unpack(">H", _exactly(client, 2))[0]
            except (_Closed, OSError, UnicodeError):
                return
            if command != 1:
                self._reply(client, _UNSUPPORTED)
                return
            try:
                infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
            except (socket.gaierror, UnicodeError):
                self._reply(client, _UNREACHABLE)
                return
            addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
            try:
                # Every address the name has must pass (as the HTTP tool's check wants), and
                # the connection goes to those very addresses: a second DNS answer (rebinding)
                # has no say.
                for address in addresses:
                    self.guard(f"http://{f'[{address}]' if _is_ipv6(address) else address}:{port}/")
            except ShiftFlowError as exc:
                if len(self.refused) > 1000:
                    self.refused.clear()
                self.refused[f"{host}:{port}"] = str(exc)
                self._reply(client, _NOT_ALLOWED)
                return
            upstream = None
            for address in addresses:
                try:
                    upstream = socket.create_connection((address, port), timeout=self.connect_timeout)
                    break
                except OSError:
                    continue
            if upstream is None:
                self._reply(client, _REFUSED)
                return
            stack.enter_context(upstream)
            if not self._reply(client, _OK):
                return
            self._relay(client, upstream)
        return None

    @staticmethod
    def _reply(client: socket.socket, code: int) -> bool:
        try:
            client.sendall(bytes([5, code, 0, 1, 0, 0, 0, 0, 0, 0]))
        except OSError:
            return False
        return True

    def _relay(self, client: socket.socket, upstream: socket.socket) -> None:
        client.settimeout(None)
        upstream.settimeout(None)
        peer = {client: upstream, upstream: client}
        with selectors.DefaultSelector() as selector:
            for sock in peer:
                selector.register(sock, selectors.EVENT_READ)
            while not self._closed.is_set():
                ready = selector.select(timeout=self.idle_timeout)
                if not ready:
                    return  # idle too long
                for key, _ in ready:
                    source = key.fileobj
                    assert isinstance(source, socket.socket)
                    try:
                        data = source.recv(65536)
                        if not data:
                            return
                        peer[source].sendall(data)
                    except OSError:
                        return

    def close(self) -> None:
        """Stop accepting (relayed connections end when their browser closes them)."""
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() on Linux; close() alone does not
        with contextlib.suppress(OSError):
            self._listener.close()
        self._thread.join(timeout=5)


def _is_ipv6(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).version == 6
    except ValueError:
        return False
