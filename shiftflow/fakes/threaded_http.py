"""The HTTP plumbing the fake LLM and the fake deploy service share: a threaded server on
127.0.0.1 with keep-alive, that stops promptly (held answers cut, open connections closed)."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self


class TrackedServer(ThreadingHTTPServer):
    """A threading HTTP server that knows its open connections, so ``stop`` can close them.

    ``state`` is what the handlers serve; ``stopping`` is set when the server stops, so a
    handler holding an answer (a slow-answer fault) waits on it instead of sleeping.
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], state: Any) -> None:
        self.state = state
        self.stopping = threading.Event()
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet: a client that hung up (a timeout test) is not an error of the fake."""


class TrackedHandler(BaseHTTPRequestHandler):
    """A keep-alive handler that registers its connection with the server."""

    protocol_version = "HTTP/1.1"  # keep-alive, as clients pool connections
    server: TrackedServer

    def setup(self) -> None:
        """Register the connection (and answer without Nagle's delay)."""
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        """Forget the connection."""
        with self.server.connections_lock:
            self.server.connections.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass  # the connection was cut by stop() or by the client

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""

    def read_body(self) -> bytes:
        """The request body (by ``Content-Length``)."""
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        """Answer ``payload`` as JSON."""
        self.send_bytes(status, json.dumps(payload).encode(), headers)

    def send_bytes(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        """Answer a JSON body given as bytes."""
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


class BackgroundServer:
    """Runs a ``TrackedServer`` in a background thread on 127.0.0.1.

    Parameters:
        handler: the request handler class.
        state: what the handlers serve (``server.state``).
        port: 0 picks a free port (bound here, so there is no race for it).
        name: the thread's name.

    Raises:
        OSError: the port is taken.
    """

    def __init__(self, handler: type[TrackedHandler], state: Any, *, port: int = 0, name: str = "fake") -> None:
        self._server = TrackedServer(("127.0.0.1", port), handler, state)
        self._thread: threading.Thread | None = None
        self._name = name
        self.port = int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """The server's root, e.g. ``http://127.0.0.1:41234``."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Self:
        """Serve in a background thread; returns ``self``."""
        # A short poll: stop() waits for the serving loop to notice, up to one interval.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name=self._name, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving: held answers are cut, open connections closed, the port freed."""
        self._server.stopping.set()
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(5)
            self._thread = None
        with self._server.connections_lock:
            for conn in list(self._server.connections):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # already closed by its handler
        self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
