"""The HTTP tool: one request with one deadline, a size cap and an SSRF guard that holds.

SSRF: the URL's host is resolved once and every address is checked (``destination``):
loopback, private, link-local, multicast and reserved addresses are refused, and so is an
IPv6 address that embeds one of them (IPv4-mapped, IPv4-compatible, NAT64 ``64:ff9b::/96``,
local-use NAT64 ``64:ff9b:1::/48``, 6to4 ``2002::/16``, Teredo ``2001::/32``). The
connection then goes to a checked address (``tools.pinned``): a DNS server that answers a
public address to the check and 127.0.0.1 to the connect is never asked twice. Proxy
variables and ``.netrc`` are ignored (``trust_env=False``): a proxy would make the check
meaningless. Redirects are not followed.

Deadline: ``timeout`` bounds the whole call (connect, TLS, request, every read), not
each read.

Errors decide retries, and every failure of the client is one of two: a timeout, a
refused or broken connection, a malformed answer, a 429 or a 5xx is ``ToolUnavailable``
(transient); a bad request (URL, method, header, body), a refused destination, a
certificate that does not match, an undecodable body, any other 4xx is ``ToolError``.
A 429, and a 503 that says ``Retry-After``, is ``RateLimited`` (a ``ToolUnavailable``)
carrying the seconds the server asked for, so the caller can wait that long instead of
retrying blindly.
Messages pass through the caller's ``redact`` (secret values masked) before anything
shortens them.

httpx logs every request's full URL, query string included, at INFO: its loggers (and
httpcore's) are held at WARNING here, so a secret in a URL never reaches a worker's log.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import logging
import re
import socket
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

import httpcore
import httpx

from shiftflow.kernel.errors import RateLimited, ShiftFlowError, ToolError, ToolUnavailable
from shiftflow.kernel.retry_after import parse_retry_after
from shiftflow.kernel.tools import http_auth
from shiftflow.kernel.tools.base import Tool, ToolContext
from shiftflow.kernel.tools.pinned import pooled

for _name in ("httpx", "httpcore"):
    logging.getLogger(_name).setLevel(logging.WARNING)

#: The largest response body kept (the rest is refused, not truncated silently).
MAX_RESPONSE_BYTES = 1_048_576
#: Characters of a 4xx answer quoted in the step's error (after secrets are masked).
ERROR_EXCERPT_CHARS = 200
_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD")
#: RFC 9110 token characters: what a header name may hold.
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
#: A host name as DNS and httpcore take it (IDNA already applied by the URL parser).
_HOST = re.compile(r"^[A-Za-z0-9_.-]+$")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_LOCAL_NAT64 = ipaddress.ip_network("64:ff9b:1::/48")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")

Redact = Callable[[str], str]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _same(text: str) -> str:
    return text


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The verifying TLS context of this process, shared by every outside call.

    Building one loads the CA bundle, which per request was most of an HTTP step's cost
    (docs/benchmarks.md#outside-calls) (a client per call with httpx's default ``verify=True`` does
    exactly that). A context is safe to share between threads; it honours
    ``SSL_CERT_FILE``/``SSL_CERT_DIR`` as httpx does.
    """
    return httpx.create_ssl_context()


def embedded_ipv4(address: IPAddress) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries (mapped, compatible, NAT64, 6to4, Teredo)."""
    if not isinstance(address, ipaddress.IPv6Address):
        return []
    found: list[ipaddress.IPv4Address] = []
    if address.ipv4_mapped is not None:
        found.append(address.ipv4_mapped)
    if address.sixtofour is not None:
        found.append(address.sixtofour)
    if address.teredo is not None:
        found.extend(address.teredo)
    if address in _NAT64 or address in _IPV4_COMPATIBLE:
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF))
    return found


def refusal(address: IPAddress) -> str | None:
    """Why ``address`` is not a destination the tool may reach, or None when it is public."""
    if not address.is_global or address.is_multicast:
        return f"destination {address} is not a public address"
    if address in _LOCAL_NAT64:
        return f"destination {address} is not a public address (local-use NAT64)"
    for inner in embedded_ipv4(address):
        if not inner.is_global or inner.is_multicast:
            return f"destination {address} is not a public address (it embeds {inner})"
    return None


def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to, in the resolver's order, without repeats.

    Raises:
        ToolUnavailable: the name does not resolve (DNS may answer later).
    """
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise ToolUnavailable(f"cannot resolve {host!r}: {exc}") from None
    except UnicodeError:
        raise ToolError(f"host {host!r} is not a valid name") from None
    seen: list[str] = []
    for info in infos:
        address = str(info[4][0])
        if address not in seen:
            seen.append(address)
    return seen


def destination(url: httpx.URL, *, allow_private: bool) -> list[str]:
    """The checked addresses to connect to for ``url``: every resolved address must pass.

    Every resolved address is checked, not the string: ``2130706433`` and ``0x7f000001``
    both mean 127.0.0.1 to the resolver.

    Raises:
        ToolError: bad scheme, no host, or a non-public destination.
        ToolUnavailable: the host does not resolve.
    """
    if url.scheme not in ("http", "https"):
        raise ToolError(f"url {str(url)!r}: only http and https are allowed")
    if not url.raw_host:
        raise ToolError(f"url {str(url)!r}: no host")
    host = url.raw_host.decode("ascii")
    if not (_HOST.match(host) or ":" in host):  # a name, an IPv4 or an IPv6 literal (brackets removed)
        raise ToolError(f"url {str(url)!r}: {url.host!r} is not a valid host name")
    if url.port is not None and not 0 < url.port < 65536:
        raise ToolError(f"url {str(url)!r}: port {url.port} is out of range")
    addresses = resolve(host, url.port or (443 if url.scheme == "https" else 80))
    if not addresses:
        raise ToolUnavailable(f"{url.host!r} resolves to no address")
    if not allow_private:
        for address in addresses:
            reason = refusal(ipaddress.ip_address(address.split("%", 1)[0]))
            if reason:
                raise ToolError(f"url {str(url)!r}: {reason}")
    return addresses


def check_destination(url: str, *, allow_private: bool) -> list[str]:
    """``destination`` for a URL given as text (parsed as the client parses it).

    Raises:
        ToolError: a malformed URL, or one ``destination`` refuses.
        ToolUnavailable: the host does not resolve.
    """
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise ToolError(f"url {url!r} is malformed: {exc}") from None
    return destination(parsed, allow_private=allow_private)


def _header_value(name: str, value: Any) -> str:
    if isinstance(value, bool):
        value = "true" if value else "false"
    elif isinstance(value, int | float):
        value = str(value)
    if not isinstance(value, str):
        raise ToolError(f"http step header {name!r}: a value must be a string, not {type(value).__name__}")
    if not value.isascii() or any(c in value for c in "\r\n\0"):
        raise ToolError(f"http step header {name!r}: a value must be ASCII text on one line")
    return value


def _headers(raw: Any) -> dict[str, str] | None:
    if raw is None or raw == {}:
        return None
    if not isinstance(raw, Mapping):
        raise ToolError("http step 'headers' must be an object of name: value")
    out: dict[str, str] = {}
    for name, value in raw.items():
        if not isinstance(name, str) or not _TOKEN.match(name):
            raise ToolError(f"http step header name {name!r} is not a valid header name")
        out[name] = _header_value(name, value)
    return out


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _params(raw: Any) -> Any:
    if raw is None or raw == {} or isinstance(raw, str):
        return raw or None
    if not isinstance(raw, Mapping):
        raise ToolError("http step 'params' must be an object or a query string")
    for name, value in raw.items():
        if not (_scalar(value) or (isinstance(value, list) and all(_scalar(v) for v in value))):
            raise ToolError(f"http step param {name!r}: a value must be text, a number or a list of them")
    return raw


def _build(client: httpx.Client, inputs: Mapping[str, Any], method: str, url: str) -> httpx.Request:
    body = inputs.get("body") if "json" not in inputs else None
    if body is not None and not isinstance(body, str):
        raise ToolError(f"http step 'body' must be text, not {type(body).__name__} (send an object with 'json')")
    try:
        return client.build_request(method, url, headers=_headers(inputs.get("headers")),
                                    params=_params(inputs.get("params")), json=inputs.get("json"), content=body)
    except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
        raise ToolError(f"url {url!r} is malformed: {exc}") from None
    except (TypeError, ValueError) as exc:  # UnicodeEncodeError included
        raise ToolError(f"http step request cannot be built: {exc}") from None


def _classify(exc: Exception) -> type[ShiftFlowError]:
    """Permanent or transient, for every exception the client may raise while sending."""
    # httpcore wraps the ssl error as the ConnectError's argument (its pool drops the cause).
    causes = (exc.__cause__, exc.__context__, *exc.args)
    if isinstance(exc, httpcore.ConnectError) and any(isinstance(c, ssl.SSLCertVerificationError) for c in causes):
        return ToolError  # the certificate does not match: a retry meets the same one
    if isinstance(exc, httpcore.LocalProtocolError | httpcore.UnsupportedProtocol | httpx.DecodingError):
        return ToolError
    if isinstance(exc, httpcore.TimeoutException | httpcore.NetworkError | httpcore.ProtocolError | OSError):
        return ToolUnavailable
    return ToolError


@dataclass(frozen=True)
class Exchange:
    """One answered request before its status is judged (``exchange``'s result).

    Parameters:
        method / url: what was asked (for messages).
        status: the HTTP status.
        headers: the answer's headers.
        body: the whole body (at most ``MAX_RESPONSE_BYTES``).
    """

    method: str
    url: str
    status: int
    headers: httpx.Headers
    body: bytes


def exchange(inputs: Mapping[str, Any], *, timeout: float, allow_private: bool,
             redact: Redact = _same) -> Exchange:
    """Send one request described by ``inputs`` and read its whole answer, whatever its status.

    The part of ``call`` that talks to the network (same checks, deadline and size cap),
    for callers that read a 4xx answer themselves (an OAuth2 token endpoint's
    ``invalid_grant``) instead of taking ``call``'s verdict.

    Raises:
        ToolUnavailable: timeout, connection error or malformed answer (retry).
        ToolError: a bad request, a refused destination, a body over the cap.
    """

    def fail(kind: type[ShiftFlowError], text: str) -> NoReturn:
        raise kind(redact(text))

    deadline = time.monotonic() + timeout
    url = inputs.get("url")
    if not isinstance(url, str):
        fail(ToolError, "http step needs a 'url' string")
    raw_method = inputs.get("method", "GET")
    method = raw_method.upper() if isinstance(raw_method, str) else ""
    if method not in _METHODS:
        fail(ToolError, f"http step method {raw_method!r}: expected one of {', '.join(_METHODS)}")
    try:
        with httpx.Client(timeout=httpx.Timeout(timeout), follow_redirects=False, trust_env=False,
                          transport=httpx.BaseTransport()) as builder:
            request = _build(builder, inputs, method, url)
        addresses = destination(request.url, allow_private=allow_private)
    except (ToolError, ToolUnavailable) as exc:
        fail(type(exc), str(exc))
    # This thread's kept connection to exactly these checked addresses, if any (``pinned.pooled``).
    transport = pooled(request.url.scheme, request.url.raw_host.decode("ascii"), request.url.port, addresses,
                       deadline, tls_context())
    buffer = bytearray()  # appending to bytes would copy the whole body per chunk
    try:
        response = transport.handle_request(request)
        response.request = request
        try:
            for chunk in response.iter_bytes():
                buffer += chunk
                if len(buffer) > MAX_RESPONSE_BYTES:
                    fail(ToolError, f"response from {url} is larger than {MAX_RESPONSE_BYTES} bytes")
        finally:
            response.close()
    except (ToolError, ToolUnavailable):
        raise
    except httpcore.TimeoutException:
        fail(ToolUnavailable, f"{method} {url} timed out after {timeout} s")
    except (httpcore.ConnectError, httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol,
            httpx.HTTPError, httpx.StreamError, OSError, ValueError, TypeError) as exc:
        fail(_classify(exc), f"{method} {url} failed: {type(exc).__name__}: {exc}")
    return Exchange(method, url, response.status_code, response.headers, bytes(buffer))


def rate_limited(answer: Exchange, redact: Redact = _same) -> RateLimited | None:
    """The ``RateLimited`` error an answer means (a 429, or a 503 with ``Retry-After``), or None."""
    retry_after = parse_retry_after(answer.headers.get("retry-after"))
    if answer.status == 429 or (answer.status == 503 and retry_after is not None):
        waited = "" if retry_after is None else f" (Retry-After: {retry_after:g} s)"
        return RateLimited(redact(f"{answer.method} {answer.url} answered {answer.status}{waited}"),
                           retry_after=retry_after)
    return None


def call(inputs: Mapping[str, Any], *, timeout: float, allow_private: bool,
         redact: Redact = _same) -> dict[str, Any]:
    """Make one HTTP request described by a rendered step's inputs.

    Parameters:
        inputs: ``url`` (required), ``method`` (GET), ``headers``, ``json`` or ``body``, ``params``.
        timeout: seconds the whole call may take (connect, TLS, request and every read).
        allow_private: let the call reach loopback/private addresses (dev mode, tests).
        redact: masks secret values in a text; applied to every error message before it is
            shortened, so no part of a secret survives a cut.

    Returns:
        ``{"status": int, "json": ... }`` or ``{"status": int, "text": str}``.

    Raises:
        RateLimited: 429, or 503 with ``Retry-After`` (retry after ``retry_after`` seconds).
        ToolUnavailable: timeout, connection error, malformed answer or another 5xx (retry).
        ToolError: anything a retry cannot fix.
    """

    def fail(kind: type[ShiftFlowError], text: str) -> NoReturn:
        raise kind(redact(text))

    answer = exchange(inputs, timeout=timeout, allow_private=allow_private, redact=redact)
    method, url, status, body = answer.method, answer.url, answer.status, answer.body
    limited = rate_limited(answer, redact)
    if limited is not None:
        raise limited
    if status >= 500:
        fail(ToolUnavailable, f"{method} {url} answered {status}")
    if status >= 400:
        excerpt = redact(body.decode("utf-8", "replace"))[:ERROR_EXCERPT_CHARS]
        fail(ToolError, f"{method} {url} answered {status}: {excerpt!r}")
    if "json" in answer.headers.get("content-type", ""):
        try:
            return {"status": status, "json": json.loads(body)}
        except ValueError:
            fail(ToolError, f"{method} {url} sent invalid JSON")
    return {"status": status, "text": body.decode("utf-8", "replace")}


def _run(params: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
    if not ctx.credentials:
        return call(params, timeout=ctx.limits.http_timeout, allow_private=ctx.allow_private)
    # An ``http`` connection (or an OAuth2 one, as a bearer token): its credentials go on
    # the request, only to its base_url, and never into a message.
    redact = http_auth.redactor(ctx.credentials)
    try:
        inputs = http_auth.authorize(ctx.credentials, params)
    except ToolError as exc:
        raise ToolError(redact(str(exc))) from None
    return call(inputs, timeout=ctx.limits.http_timeout, allow_private=ctx.allow_private, redact=redact)


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
