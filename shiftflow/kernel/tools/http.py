"""The HTTP tool: one request with its own timeout, a size cap and an SSRF guard.

Errors decide retries: a timeout, a refused connection, a 429 or a 5xx is
``ToolUnavailable`` (transient); any other 4xx or a malformed request is ``ToolError``.
A 429, and a 503 that says ``Retry-After``, is ``RateLimited`` (a ``ToolUnavailable``)
carrying the seconds the server asked for, so the caller can wait that long instead of
retrying blindly.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import socket
import ssl
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx

from shiftflow.kernel.errors import RateLimited, ToolError, ToolUnavailable
from shiftflow.kernel.retry_after import parse_retry_after
from shiftflow.kernel.tools.base import Tool, ToolContext

#: The largest response body kept (the rest is refused, not truncated silently).
MAX_RESPONSE_BYTES = 1_048_576
_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD")


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The verifying TLS context of this process, shared by every outside call.

    Building one loads the CA bundle: about 20 ms of CPU, which per request was most of
    an HTTP step's cost (a client per call with httpx's default ``verify=True`` does
    exactly that). A context is safe to share between threads; it honours
    ``SSL_CERT_FILE``/``SSL_CERT_DIR`` as httpx does.
    """
    return httpx.create_ssl_context()


def check_destination(url: str, *, allow_private: bool) -> None:
    """Refuse URLs that are not http(s) or whose host resolves to a non-public address.

    Every resolved address is checked, not the string: ``2130706433`` and
    ``0x7f000001`` both mean 127.0.0.1 to the resolver.

    Raises:
        ToolError: bad scheme, no host, or a private/loopback/link-local destination.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ToolError(f"url {url!r}: only http and https are allowed")
    if not parts.hostname:
        raise ToolError(f"url {url!r}: no host")
    if allow_private:
        return
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or 0, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise ToolUnavailable(f"cannot resolve {parts.hostname!r}: {exc}") from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global:
            raise ToolError(f"url {url!r}: destination {address} is not a public address")


def call(inputs: Mapping[str, Any], *, timeout: float, allow_private: bool) -> dict[str, Any]:
    """Make one HTTP request described by a rendered step's inputs.

    Parameters:
        inputs: ``url`` (required), ``method`` (GET), ``headers``, ``json`` or ``body``, ``params``.
        timeout: connect and read timeout in seconds.
        allow_private: let the call reach loopback/private addresses (dev mode, tests).

    Returns:
        ``{"status": int, "json": ... }`` or ``{"status": int, "text": str}``.

    Raises:
        RateLimited: 429, or 503 with ``Retry-After`` (retry after ``retry_after`` seconds).
        ToolUnavailable: timeout, connection error or another 5xx (retry).
        ToolError: anything a retry cannot fix.
    """
    url = inputs.get("url")
    if not isinstance(url, str):
        raise ToolError("http step needs a 'url' string")
    method = str(inputs.get("method", "GET")).upper()
    if method not in _METHODS:
        raise ToolError(f"http step method {method!r}: expected one of {', '.join(_METHODS)}")
    check_destination(url, allow_private=allow_private)
    try:
        with httpx.Client(timeout=httpx.Timeout(timeout), follow_redirects=False, verify=tls_context()) as client:
            with client.stream(
                method,
                url,
                headers=inputs.get("headers") or None,
                params=inputs.get("params") or None,
                json=inputs.get("json"),
                content=inputs.get("body") if "json" not in inputs else None,
            ) as response:
                buffer = bytearray()  # appending to bytes would copy the whole body per chunk
                for chunk in response.iter_bytes():
                    buffer += chunk
                    if len(buffer) > MAX_RESPONSE_BYTES:
                        raise ToolError(f"response from {url} is larger than {MAX_RESPONSE_BYTES} bytes")
        body = bytes(buffer)
    except httpx.TimeoutException:
        raise ToolUnavailable(f"{method} {url} timed out after {timeout} s") from None
    except httpx.TransportError as exc:
        raise ToolUnavailable(f"{method} {url} failed: {exc}") from None
    status = response.status_code
    retry_after = parse_retry_after(response.headers.get("retry-after"))
    if status == 429 or (status == 503 and retry_after is not None):
        waited = "" if retry_after is None else f" (Retry-After: {retry_after:g} s)"
        raise RateLimited(f"{method} {url} answered {status}{waited}", retry_after=retry_after)
    if status >= 500:
        raise ToolUnavailable(f"{method} {url} answered {status}")
    if status >= 400:
        raise ToolError(f"{method} {url} answered {status}: {body[:200]!r}")
    if "json" in response.headers.get("content-type", ""):
        try:
            return {"status": status, "json": json.loads(body)}
        except ValueError:
            raise ToolError(f"{method} {url} sent invalid JSON") from None
    return {"status": status, "text": body.decode("utf-8", "replace")}


def _run(params: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
    return call(params, timeout=ctx.limits.http_timeout, allow_private=ctx.allow_private)


#: ``http.request``: the HTTP step as a registered tool (same inputs, same answers).
TOOL = Tool(
    name="http.request",
    description="Make one HTTP request (SSRF-guarded, size-capped) and return its status and body.",
    category="http",
    queue="tools",
    # Like the http step's own default; a step that POSTs a payment declares ``effect: once``.
    effect="repeatable",
    params_schema={
        "type": "object",
        "required": ["url"],
        "additionalProperties": False,
        "properties": {
            "url": {"type": "string", "minLength": 1},
            "method": {"enum": [*_METHODS, *(m.lower() for m in _METHODS)]},
            "headers": {"type": "object", "additionalProperties": {"type": "string"}},
            "params": {"type": "object"},
            "json": {},
            "body": {"type": "string"},
        },
    },
    result_schema={
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"type": "integer"}, "json": {}, "text": {"type": "string"}},
    },
    run=_run,
)
