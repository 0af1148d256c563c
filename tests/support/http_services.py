"""Real HTTP services on loopback that stand for the outside world in tests."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class JsonService:
    """A real HTTP service on loopback for tests: answers JSON, records every request.

    Every POST/GET is recorded in ``calls`` as ``{"method", "path", "body", "headers", "at"}``;
    the answer echoes the body as ``{"received": body, "got": body}``. ``script`` holds
    status codes for the next requests (then 200); ``delay`` slows every answer.
    """

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.script: list[int] = []
        self.delay = 0.0
        service = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                service.calls.append({"method": self.command, "path": self.path, "body": body,
                                      "headers": dict(self.headers), "at": time.time()})
                time.sleep(service.delay)
                status = service.script.pop(0) if service.script else 200
                out = json.dumps({"received": body, "got": body}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            do_POST = do_GET = do_PUT = _answer

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def bodies(self) -> list[Any]:
        """The request bodies, in arrival order."""
        return [call["body"] for call in self.calls]

    def close(self) -> None:
        """Stop serving and free the port."""
        self._server.shutdown()
        self._server.server_close()
