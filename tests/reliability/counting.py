"""The counting server: the outside service of the fault scenarios, which counts every call.

The workflows' ``effect: once`` HTTP steps POST ``{"execution": ..., "step": ...}`` here.
The server answers 200 with ``{"ok": true, "echo": <body>}`` after ``delay`` seconds (a
delay keeps calls in flight when a fault lands), and records each call with the time
it arrived and whether its answer was written out. It never fails a call: in these
scenarios every call succeeds, so a failed execution is the engine's doing.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Call:
    """One call received: which execution and step made it, when, and whether it was answered."""

    execution_id: str
    step_id: str
    at: float
    answered: bool = False


class CountingServer:
    """A loopback HTTP server counting calls per (execution, step).

    Parameters:
        delay: seconds between receiving a call and answering it.
    """

    def __init__(self, delay: float = 0.1) -> None:
        self.delay = delay
        self._calls: list[Call] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if len(raw) < length:  # the caller died mid-request: no call was made
                    self.close_connection = True
                    return
                body = json.loads(raw or b"{}")
                call = Call(str(body.get("execution")), str(body.get("step")), time.time())
                with server._lock:
                    server._calls.append(call)
                if server.delay:
                    time.sleep(server.delay)
                out = json.dumps({"ok": True, "echo": body}).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(out)))
                    self.end_headers()
                    self.wfile.write(out)
                    self.wfile.flush()
                except OSError:  # the caller went away before the answer
                    return
                call.answered = True

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/effect"
        self._thread = threading.Thread(target=self._server.serve_forever, name="counting-server", daemon=True)
        self._thread.start()

    def calls(self) -> list[Call]:
        """A copy of every call received so far."""
        with self._lock:
            return list(self._calls)

    def per_step(self) -> Counter[tuple[str, str]]:
        """How many calls each (execution id, step id) made."""
        return Counter((c.execution_id, c.step_id) for c in self.calls())

    def close(self) -> None:
        """Stop serving and free the port."""
        self._server.shutdown()
        self._server.server_close()
