"""Prometheus metrics: fixed label sets, never a secret or an unbounded id as a label.

Worker pools run several processes, so workers use prometheus_client's multiprocess
mode: ``consumers.worker`` sets ``PROMETHEUS_MULTIPROC_DIR`` before prometheus_client
is imported, every process writes its own files, and one exposition server per pool
(a Dramatiq fork) serves their sum. The ingress and dev mode are single processes and
serve the default registry on a listener of their own (``serve_registry``), never on the
public webhook port: metrics tell an outsider traffic, error rates and versions.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

MESSAGES = Counter(
    "shiftflow_messages_total",
    "Messages processed by actors, by outcome (ok, error, skipped).",
    ["queue", "actor", "outcome"],
)
MESSAGE_SECONDS = Histogram(
    "shiftflow_message_duration_seconds",
    "Time spent processing one message.",
    ["queue", "actor"],
    buckets=_LATENCY_BUCKETS,
)
IN_PROGRESS = Gauge(
    "shiftflow_messages_in_progress",
    "Messages being processed now.",
    ["queue", "actor"],
    multiprocess_mode="livesum",
)
EXECUTIONS = Counter(
    "shiftflow_executions_total",
    "Executions by transition (created, duplicate, succeeded, failed, cancelled; quarantined: "
    "a trigger that kept killing its worker, stored as a dead letter; refused: not queued, its "
    "workspace at its cap of queued executions, and failed).",
    ["outcome"],
)
STEPS = Counter(
    "shiftflow_steps_total",
    "Step runs by step type and outcome (succeeded, failed, skipped, already_done, quarantined).",
    ["step_type", "outcome"],
)
TRIGGER_TO_DONE_SECONDS = Histogram(
    "shiftflow_execution_seconds",
    "Time from trigger receipt to the execution's final state.",
    ["outcome"],
    buckets=_LATENCY_BUCKETS,
)
LOG_DOCUMENTS = Counter(
    "shiftflow_log_documents_total",
    "Log and analytics documents written to MongoDB, by outcome (written; replaced by a stand-in, "
    "which is also written; dropped).",
    ["outcome"],
)


def multiprocess_registry(directory: str) -> CollectorRegistry:
    """A registry that sums the files every worker process wrote into ``directory``."""
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)
    return registry


def serve_multiprocess(directory: str, host: str, port: int,
                       ready: Callable[[], tuple[int, dict[str, Any]]] | None = None) -> None:
    """Serve the summed metrics of a worker pool on ``host:port`` until killed (a pool fork).

    ``/healthz`` answers 200 (liveness); ``/readyz`` answers what ``ready`` returns (status
    and JSON body, ``kernel.readiness.answer``), 200 without one; any other path the metrics.
    """

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                self._send(200, b"ok", "text/plain; charset=utf-8")
            elif path == "/readyz":
                status, answer = ready() if ready is not None else (200, {"status": "ready", "checks": {}})
                self._send(status, json.dumps(answer).encode(), "application/json")
            else:
                self._send(200, generate_latest(multiprocess_registry(directory)), CONTENT_TYPE_LATEST)

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            """Scrapes are not worth a log line each."""

    ThreadingHTTPServer((host, port), Handler).serve_forever()


class _RegistryHandler(BaseHTTPRequestHandler):
    """``GET /metrics`` of this process's default registry; anything else is 404."""

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] != "/metrics":
            self.send_error(404)
            return
        body = generate_latest()
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE_LATEST)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Scrapes are not worth a log line each."""


def serve_registry(host: str, port: int) -> ThreadingHTTPServer:
    """Serve this process's metrics on ``http://host:port/metrics`` from a daemon thread.

    Returns:
        The running server (``shutdown()`` and ``server_close()`` stop it).

    Raises:
        OSError: the address cannot be bound (in use, not local).
    """
    server = ThreadingHTTPServer((host, port), _RegistryHandler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics-listener", daemon=True).start()
    return server


def mark_process_dead(directory: str, pid: int | None = None) -> None:
    """Drop the live gauges of process ``pid`` (default: this one) from the pool's sum.

    Called by a worker at shutdown, and by the pool's supervisor for a process that died
    without one. Only ``livesum``/``liveall`` gauge files go; counters and histograms of
    the dead process stay in the directory, so the pool's sums never go back.
    """
    from prometheus_client import multiprocess

    if directory and os.path.isdir(directory):
        multiprocess.mark_process_dead(os.getpid() if pid is None else pid, directory)
