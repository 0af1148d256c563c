"""The outside world of the harness tests: a local HTTP service that records every call.

It records each call with the execution id, the step id and the time it was received,
which the checker (``checker.py``) compares with the step's ``completed_at``.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .checker import OutsideCall


class OutsideService:
    """A local HTTP service that records every call it receives.

    The workflow's HTTP steps POST ``{"execution": ..., "step": ...}``; the service answers
    ``{"ok": true, "echo": <body>}`` after ``delay`` seconds (a delay widens the window in
    which a kill lands between the call and the commit), or after ``step_delays[step]``.
    ``failures[step]`` calls of a step are answered 503 first (a transient failure).
    A body naming an ``iteration`` (a ``for_each`` item) is recorded as that item's call;
    ``in_flight`` says how many calls are being answered right now.
    """

    def __init__(
        self,
        delay: float = 0.0,
        step_delays: dict[str, float] | None = None,
        failures: dict[str, int] | None = None,
    ) -> None:
        self.delay = delay
        self.step_delays = dict(step_delays or {})
        self.failures = dict(failures or {})
        self.calls: list[OutsideCall] = []
        self.in_flight = 0
        self._lock = threading.Lock()
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                at = dt.datetime.now(dt.UTC).replace(tzinfo=None)
                if len(raw) < length:  # the caller was killed mid-request: no call happened
                    self.close_connection = True
                    return
                body = json.loads(raw)
                step = str(body.get("step"))
                with service._lock:
                    service.calls.append(OutsideCall(str(body.get("execution")), step, at,
                                                     int(body.get("iteration") or 0)))
                    failing = service.failures.get(step, 0) > 0
                    if failing:
                        service.failures[step] -= 1
                    service.in_flight += 1
                try:
                    pause = service.step_delays.get(step, service.delay)
                    if pause:
                        time.sleep(pause)
                finally:
                    with service._lock:
                        service.in_flight -= 1
                out = json.dumps({"ok": not failing, "echo": body}).encode()
                self.send_response(503 if failing else 200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                try:
                    self.wfile.write(out)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the caller was SIGKILLed while we answered: its call still counts

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/effect"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> OutsideService:
        """Serve in a background thread; returns ``self``."""
        self._thread.start()
        return self

    def recorded(self) -> list[OutsideCall]:
        """A copy of the calls received so far."""
        with self._lock:
            return list(self.calls)

    def close(self) -> None:
        """Stop serving and free the port."""
        self.server.shutdown()
        self.server.server_close()
