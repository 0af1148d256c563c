"""One SideShift HTTP call: headers, signing, timeouts and the mapping of every failure.

The rule that prevents double orders lives here. A failure that proves the request never
left (connect refused or timed out, no pooled connection) is ``ServiceUnavailable`` for
every call. Any later failure (read timeout, reset, close before the answer, a broken
body, a 5xx) is ``ServiceUnavailable`` for a safe call but ``UnknownOutcome`` for an
``unsafe`` one (a create): the order may exist and must be reconciled, not re-posted.
Unsafe calls use a pool without keep-alive, so a stale pooled connection that the server
already closed cannot fail a create after it "was sent" and fake an unknown outcome.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar

import httpx

from shiftflow.kernel.sideshift.errors import (
    BadRequest,
    NotFound,
    ServiceUnavailable,
    UnexpectedResponse,
    UnknownOutcome,
    error_from_response,
)
from shiftflow.kernel.tools.http import tls_context

T = TypeVar("T")


@dataclass(frozen=True)
class SignableRequest:
    """What a signer sees: the request exactly as it will be sent."""

    method: str
    path: str
    query: str
    body: bytes
    headers: Mapping[str, str]


#: A request signer: returns the headers to add (e.g. an Ed25519 signature and timestamp).
#: SideShift's signed-request scheme is undocumented in our sources, so none ships here.
Signer = Callable[[SignableRequest], Mapping[str, str]]


@dataclass(frozen=True)
class Timeouts:
    """Seconds allowed per phase of every call; ``read`` bounds the wait for the answer."""

    connect: float = 5.0
    read: float = 20.0
    write: float = 10.0
    pool: float = 5.0

    def httpx(self) -> httpx.Timeout:
        """The same limits as an ``httpx.Timeout``."""
        return httpx.Timeout(connect=self.connect, read=self.read, write=self.write, pool=self.pool)


# Failures that prove the request never reached the server: nothing can have been created.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)
_NOT_JSON: Any = object()


class Transport:
    """Sends SideShift requests and turns answers into results or mapped errors.

    Parameters:
        base_url: the API root.
        timeouts: per-phase timeouts of every call.
        secret: the ``x-sideshift-secret`` value for authenticated calls, or None.
        user_ip: the default ``x-user-ip``, or None.
        signer: optional hook adding signature headers.
        transport: an ``httpx`` transport for tests; None opens real connections.
    """

    def __init__(
        self,
        base_url: str,
        timeouts: Timeouts,
        *,
        secret: str | None,
        user_ip: str | None,
        signer: Signer | None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._secret = secret
        self._user_ip = user_ip
        self._signer = signer
        common: dict[str, Any] = {
            "base_url": base_url,
            "timeout": timeouts.httpx(),
            "follow_redirects": False,
            "headers": {"accept": "application/json", "user-agent": "shiftflow-sideshift/0.1"},
            "verify": tls_context(),  # one CA bundle load per process, not two per client
        }
        self._http = httpx.Client(transport=transport, **common)
        self._create_http = httpx.Client(
            transport=transport, limits=httpx.Limits(max_keepalive_connections=0), **common
        )

    def close(self) -> None:
        """Close both connection pools."""
        self._http.close()
        self._create_http.close()

    def call(
        self,
        method: str,
        path: str,
        *,
        parse: Callable[[Any], T] | None,
        params: Mapping[str, str] | None = None,
        json_body: Mapping[str, Any] | None = None,
        auth: bool = False,
        user_ip: str | None = None,
        unsafe: bool = False,
        not_found: type[NotFound] | None = None,
        bad_request_not_found: bool = False,
    ) -> T:
        """Send one request and return ``parse(json)`` (None when ``parse`` is None).

        Parameters:
            method, path, params: the request line (path under the base URL).
            parse: builds the result from the decoded JSON; None for 204 answers.
            json_body: the JSON body, if any.
            auth: send ``x-sideshift-secret`` (endpoints the docs mark as authenticated).
            user_ip: ``x-user-ip`` for this call; falls back to the default.
            unsafe: the call creates something: see the module docstring.
            not_found: the class a bare 404 becomes (e.g. ``ShiftNotFound``).
            bad_request_not_found: a plain 400 (no more precise meaning) becomes
                ``not_found`` too: on a call whose only input is an id, that is what it means.

        Raises:
            SideShiftError: a subclass chosen by ``error_from_response`` or the rules above.
        """
        headers: dict[str, str] = {}
        if auth and self._secret is not None:
            headers["x-sideshift-secret"] = self._secret
        ip = user_ip or self._user_ip
        if ip:
            headers["x-user-ip"] = ip
        content = None
        if json_body is not None:
            content = json.dumps(json_body, separators=(",", ":")).encode()
            headers["content-type"] = "application/json"
        http = self._create_http if unsafe else self._http
        request = http.build_request(method, path, params=params, content=content, headers=headers)
        if self._signer is not None:
            signable = SignableRequest(
                method, request.url.path, request.url.query.decode(), content or b"", dict(request.headers)
            )
            request.headers.update(self._signer(signable))
        try:
            response = http.send(request)
        except _NOT_SENT as exc:
            raise ServiceUnavailable(f"{method} {path}: not sent ({type(exc).__name__}: {exc})") from exc
        except httpx.HTTPError as exc:
            if unsafe:
                raise UnknownOutcome(
                    f"{method} {path}: sent, no answer read ({type(exc).__name__}: {exc}); "
                    "reconcile, do not re-post"
                ) from exc
            raise ServiceUnavailable(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        return _result(method, path, response, parse, unsafe, not_found, bad_request_not_found)


def _result(
    method: str,
    path: str,
    response: httpx.Response,
    parse: Callable[[Any], T] | None,
    unsafe: bool,
    not_found: type[NotFound] | None,
    bad_request_not_found: bool = False,
) -> T:
    text = response.text
    try:
        # parse_float=Decimal: a number in a body never passes through float.
        data = json.loads(text, parse_float=Decimal) if text.strip() else None
    except ValueError:
        data = _NOT_JSON
    if not response.is_success:
        error = data.get("error") if isinstance(data, dict) else None
        mapped = error_from_response(
            response.status_code,
            error if isinstance(error, dict) else None,
            text,
            response.headers,
            unsafe=unsafe,
        )
        plain_400 = bad_request_not_found and type(mapped) is BadRequest and mapped.status == 400
        if not_found is not None and (type(mapped) is NotFound or plain_400):
            # A bare 404 on a shift path means the shift: say so with the precise class.
            mapped = not_found(mapped.message, status=mapped.status, code=mapped.code, body=mapped.body)
        raise mapped
    if parse is None:
        return None  # type: ignore[return-value]  # 204 endpoints return nothing
    try:
        if data is _NOT_JSON:
            raise ValueError("body is not JSON")
        return parse(data)
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        detail = f"{method} {path}: unexpected {response.status_code} body ({type(exc).__name__}: {exc})"
        if unsafe:
            # The create probably succeeded; keep the body, it may hold the new order's id.
            raise UnknownOutcome(
                detail + "; reconcile, do not re-post", status=response.status_code, body=text[:4000]
            ) from exc
        raise UnexpectedResponse(detail, status=response.status_code, body=text[:4000]) from exc
