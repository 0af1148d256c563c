"""Tracing set-up: SHIFTFLOW_OTLP_ENDPOINT is checked, and with it spans reach a real OTLP/HTTP
endpoint (a loopback server standing in for a collector)."""

from __future__ import annotations

import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from shiftflow.kernel import tracing
from shiftflow.kernel.contracts import TriggerPayload, execution_id_for
from shiftflow.kernel.errors import SettingsError
from shiftflow.kernel.settings import Settings


def test_the_endpoint_is_checked_and_off_by_default() -> None:
    assert Settings.from_env({"SHIFTFLOW_MODE": "dev"}).otlp_endpoint == ""
    with pytest.raises(SettingsError, match="SHIFTFLOW_OTLP_ENDPOINT"):
        Settings.from_env({"SHIFTFLOW_MODE": "dev", "SHIFTFLOW_OTLP_ENDPOINT": "collector:4318"})
    url = "http://127.0.0.1:4318/v1/traces"
    assert Settings.from_env({"SHIFTFLOW_MODE": "dev", "SHIFTFLOW_OTLP_ENDPOINT": url}).otlp_endpoint == url


def test_spans_are_exported_to_the_configured_endpoint() -> None:
    received: list[tuple[str, str, bytes]] = []

    class Collector(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            received.append((self.path, self.headers.get("Content-Type", ""), body))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_address[1]}/v1/traces"
        settings = Settings.from_env({"SHIFTFLOW_MODE": "dev", "SHIFTFLOW_OTLP_ENDPOINT": endpoint})
        assert tracing.configure(settings) and tracing.enabled()
        workflow = uuid.uuid4()
        options = tracing.stamp({"broker_priority": 3}, "triggers.start",
                                TriggerPayload(workflow_id=str(workflow), dedup_key="d", source="webhook"))
        assert options["traceparent"].split("-")[1] == f"{execution_id_for(workflow, 'd').int:032x}"
        tracing.flush()
        assert received and received[0][0] == "/v1/traces"
        assert received[0][1] == "application/x-protobuf"
        assert b"trigger webhook" in received[0][2]
    finally:
        tracing.install(None)
        server.shutdown()
    assert not tracing.enabled()
