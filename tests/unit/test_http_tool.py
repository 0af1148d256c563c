"""The HTTP tool against a real local HTTP server: answers, error classes, and one TLS
context per process (loading the CA bundle per call was most of an HTTP step's cost)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from shiftflow.kernel.errors import RateLimited, ToolError, ToolUnavailable
from shiftflow.kernel.tools import http


def test_json_answer_and_a_single_tls_context(json_service, monkeypatch):
    built = []
    real = httpx.create_ssl_context
    monkeypatch.setattr(httpx, "create_ssl_context", lambda *a, **k: built.append(1) or real(*a, **k))
    http.tls_context.cache_clear()
    try:
        for n in range(3):
            out = http.call({"url": json_service.url, "method": "POST", "json": {"n": n}}, timeout=5,
                            allow_private=True)
            assert out["status"] == 200 and out["json"]["received"] == {"n": n}
        assert len(built) == 1  # three calls, one CA bundle load
    finally:
        http.tls_context.cache_clear()


def test_private_destinations_are_refused_unless_allowed(json_service):
    with pytest.raises(ToolError, match="not a public address"):
        http.call({"url": json_service.url}, timeout=5, allow_private=False)


def test_refused_connection_is_transient():
    with pytest.raises(ToolUnavailable):
        http.call({"url": "http://127.0.0.1:1/"}, timeout=2, allow_private=True)


class _RateLimitedHandler(BaseHTTPRequestHandler):
    """Answers every request with the status and Retry-After header named by its path."""

    def do_GET(self) -> None:
        status, _, retry_after = self.path.strip("/").partition("/")
        self.send_response(int(status))
        if retry_after:
            self.send_header("Retry-After", retry_after)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


@pytest.fixture
def limited_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RateLimitedHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(("path", "seconds"), [("429/7", 7.0), ("503/3", 3.0), ("429", None)])
def test_rate_limit_answers_carry_retry_after(limited_server, path, seconds):
    with pytest.raises(RateLimited) as caught:
        http.call({"url": f"{limited_server}/{path}"}, timeout=5, allow_private=True)
    assert caught.value.retry_after == seconds
    assert isinstance(caught.value, ToolUnavailable)  # still transient for callers that only know that


def test_a_503_without_retry_after_is_a_plain_transient_error(limited_server):
    with pytest.raises(ToolUnavailable) as caught:
        http.call({"url": f"{limited_server}/503"}, timeout=5, allow_private=True)
    assert not isinstance(caught.value, RateLimited)
