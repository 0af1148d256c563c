"""The HTTP tool against a real local HTTP server: answers, error classes, and one TLS
context per process (loading the CA bundle per call was most of an HTTP step's cost)."""

from __future__ import annotations

import httpx
import pytest

from shiftflow.kernel.errors import ToolError, ToolUnavailable
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
