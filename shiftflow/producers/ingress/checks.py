"""The ingress's checks of one webhook request, below the app: content type, body size, JSON.

Each refusal is a ``Rejected`` carrying its HTTP status, the outcome label counted in
``shiftflow_webhooks_total`` and the reason sent back; ``respond`` writes a JSON answer at
the ASGI level (the webhook route's fast path uses no Starlette ``Response``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import Receive, Send

from shiftflow.kernel import storable
from shiftflow.kernel.quota import Limit

#: Seconds a sender should wait before retrying after a 503.
RETRY_AFTER_SECONDS = 5
#: Deepest JSON nesting accepted in a body (``storable.MAX_JSON_DEPTH``).
MAX_JSON_DEPTH = storable.MAX_JSON_DEPTH

class Rejected(Exception):
    """Stop handling a request with this status, outcome label, reason (and headers)."""

    def __init__(self, status: int, outcome: str, reason: str, headers: dict[str, str] | None = None):
        super().__init__(reason)
        self.status = status
        self.outcome = outcome
        self.reason = reason
        self.headers = headers


#: Renders error and 202 bodies exactly as Starlette's ``JSONResponse`` does.
_render_json = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode


def error_response(status: int, reason: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": reason}, status_code=status, headers=headers)


async def respond(
    send: Send, status: int, content: dict[str, Any], headers: dict[str, str] | None = None
) -> None:
    """Send a JSON response (the same bytes and headers as ``JSONResponse``) at the ASGI level."""
    body = _render_json(content).encode("utf-8")
    raw = [(b"content-length", str(len(body)).encode("latin-1")), (b"content-type", b"application/json")]
    if headers:
        raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class Headers(Mapping[str, str]):
    """Request headers by case-insensitive name; the first of repeated headers wins (as Starlette's)."""

    __slots__ = ("_by_name",)

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        by_name: dict[str, str] = {}
        for name, value in raw:
            key = name.decode("latin-1").lower()  # ASGI servers send lower case already
            if key not in by_name:
                by_name[key] = value.decode("latin-1")
        self._by_name = by_name

    def get(self, key: str, default: Any = None) -> Any:
        """``Mapping.get`` without raising and catching a KeyError per missing header."""
        return self._by_name.get(key.lower(), default)

    def __getitem__(self, key: str) -> str:
        return self._by_name[key.lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_name)

    def __len__(self) -> int:
        return len(self._by_name)


def check_content_type(headers: Mapping[str, str]) -> None:
    media_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != "application/json" and not (
        media_type.startswith("application/") and media_type.endswith("+json")
    ):
        raise Rejected(415, "unsupported_media_type", "content type must be application/json")
    # Signatures cover the bytes as sent; a compressed body would also dodge the size cap.
    encoding = headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise Rejected(415, "unsupported_media_type", "compressed bodies are not accepted")


async def read_body(receive: Receive, headers: Mapping[str, str], limit: int) -> bytes:
    """The request body, refused (413) once it is known or seen to exceed ``limit`` bytes."""
    declared = headers.get("content-length")
    if declared is not None:
        declared = declared.strip()
        if not (declared.isascii() and declared.isdigit()):
            raise Rejected(400, "bad_request", "malformed Content-Length")
        if int(declared) > limit:
            raise Rejected(413, "too_large", f"body larger than {limit} bytes")  # before reading a byte
    # Chunked bodies declare no length: count while streaming and stop at the limit.
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        kind = message["type"]
        if kind == "http.request":
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > limit:
                    raise Rejected(413, "too_large", f"body larger than {limit} bytes")
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        elif kind == "http.disconnect":
            raise Rejected(400, "bad_request", "client disconnected before the body was complete")
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _reject_constant(name: str) -> Any:
    # json accepts NaN/Infinity by default; PostgreSQL jsonb does not, so the trigger
    # actor could never store such a body: refuse it here rather than 202 and lose it.
    raise ValueError(f"{name} is not valid JSON")


class _OutOfRange(ValueError):
    """A number literal Python reads as infinity (``1e999``): valid JSON, not storable."""


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (math.inf, -math.inf):
        raise _OutOfRange("body " + storable.number_problem(f"{text[:40]}: beyond the range of a double"))
    return value


#: ``json.loads(..., parse_constant=...)`` builds a decoder per call; this one is made once.
#: Floats are checked as they are read (the C scanner calls ``parse_float`` per literal), so
#: an overflowing number is caught even when the value walk below is skipped.
_decode_json = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float).decode


def _plainly_storable(body: bytes, encoding: str) -> bool:
    """True when ``body`` cannot hold the text and nesting ``storable.unstorable`` looks for,
    judged from its bytes (numbers are checked while parsing).

    Valid JSON puts no raw control character (NUL included) inside a string, so a NUL or
    a lone surrogate can only come from a ``\\u`` escape, or a surrogate from bytes that are
    not strict UTF-8 (checked by the caller's strict decode); and every level of nesting
    needs a ``{`` or ``[``. Most webhooks pass all three, and skip the walk over every
    value, which was the largest cost of a small webhook's checks.
    """
    return (
        encoding == "utf-8"
        and b"\\u" not in body
        and body.count(b"{") + body.count(b"[") <= MAX_JSON_DEPTH
    )


def parse_object(body: bytes) -> dict[str, Any]:
    # As json.loads does for bytes: UTF-8, -16 or -32 by the first bytes.
    encoding = json.detect_encoding(body)
    plain = _plainly_storable(body, encoding)
    try:
        try:
            text = body.decode(encoding, "strict" if plain else "surrogatepass")
        except UnicodeDecodeError:
            if not plain:
                raise
            plain = False  # encoded surrogates, say: decode as before and walk the values
            text = body.decode(encoding, "surrogatepass")
        data = _decode_json(text)
    except _OutOfRange as exc:
        raise Rejected(422, "invalid", str(exc)) from None
    except RecursionError:
        raise Rejected(422, "invalid", f"body nests deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise Rejected(422, "invalid", f"body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise Rejected(422, "invalid", "body must be a JSON object")
    problem = None if plain else storable.unstorable(data)
    if problem:
        raise Rejected(422, "invalid", f"body {problem}")
    return data


def unavailable(reason: str, outcome: str = "unavailable") -> Rejected:
    return Rejected(503, outcome, reason, {"Retry-After": str(RETRY_AFTER_SECONDS)})


def over_quota(limit: Limit, wait: float) -> Rejected:
    return Rejected(
        429,
        "over_quota",
        f"webhook quota exceeded: this workspace may send {limit.describe('webhooks')}; "
        "retry after Retry-After seconds",
        {"Retry-After": str(max(1, math.ceil(wait)))},
    )
