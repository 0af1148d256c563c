"""Putting an ``http`` connection's credentials on a request, and only on its own API.

An ``http`` connection (``kernel/integrations/http.py`` holds its credential schema)
says how a service wants to be authenticated (``auth``):

* ``none``: nothing added;
* ``api_key_header``: ``api_key`` in the header ``header_name`` (``X-API-Key`` by default);
* ``api_key_query``: ``api_key`` in the query parameter ``query_param`` (``api_key``);
* ``bearer``: ``Authorization: Bearer <token>``;
* ``basic``: ``Authorization: Basic`` of ``username:password``.

``headers`` adds fixed, non-secret headers (an API version) to every request.

The credentials go only to the connection's ``base_url``: a step's URL relative to it
is joined to it, an absolute URL must lie under it (same scheme, host, port, and path
prefix). Otherwise any workflow could send a workspace's API key to a server of its
choosing by naming the connection and another URL.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import unquote

import httpx

from shiftflow.kernel.errors import ToolError
from shiftflow.kernel.redaction import scrubber

AUTH_SCHEMES = ("none", "api_key_header", "api_key_query", "bearer", "basic")
#: The credential fields that are secrets (masked, scrubbed, prompted for without echo).
SECRET_FIELDS = ("api_key", "token", "password")
DEFAULT_HEADER = "X-API-Key"
DEFAULT_QUERY_PARAM = "api_key"


def _default_port(url: httpx.URL) -> int | None:
    return url.port or {"http": 80, "https": 443}.get(url.scheme)


def within(url: str, base_url: str) -> str:
    """``url`` as an absolute URL under ``base_url`` (a relative ``url`` is joined to it).

    Raises:
        ToolError: ``url`` points elsewhere, or carries a user name or password.
    """
    base = httpx.URL(base_url)
    try:
        target = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise ToolError(f"with.url: {url!r} is malformed: {exc}") from None
    if not target.scheme and not target.host:
        joined = str(base).rstrip("/") + "/" + url.strip().lstrip("/") if url.strip() else str(base)
        return within(joined, base_url)
    prefix = base.path if base.path.endswith("/") else base.path + "/"
    same_origin = (target.scheme == base.scheme and target.host.lower() == base.host.lower()
                   and _default_port(target) == _default_port(base))
    under = target.path == base.path.rstrip("/") or target.path.startswith(prefix) or base.path in ("", "/")
    # httpx resolves literal dot segments; encoded ones (%2e%2e) reach the server as they are.
    climbs = ".." in unquote(target.path).split("/")
    if not same_origin or not under or climbs or target.userinfo:
        raise ToolError(f"with.url: {url!r} is outside the connection's base_url {base_url!r}; "
                        "a connection's credentials are sent only to its own API")
    return str(target)


def _without(headers: Mapping[str, Any], name: str) -> dict[str, Any]:
    return {k: v for k, v in headers.items() if k.lower() != name.lower()}


def authorize(credentials: Mapping[str, Any], inputs: Mapping[str, Any]) -> dict[str, Any]:
    """The request ``inputs`` (``http.request``'s parameters) with the connection's auth applied.

    A header the connection sets (its auth, or its fixed ``headers`` such as an API
    version) replaces a step header of the same name (any case); the connection's query
    parameter replaces one the step gives.

    Raises:
        ToolError: the URL lies outside ``base_url``, the connection lacks a field its
            scheme needs, or the step's ``params`` is a query string where a parameter
            must be added.
    """
    scheme = str(credentials.get("auth") or "none")
    if scheme not in AUTH_SCHEMES:
        raise ToolError(f"connection: auth {scheme!r} is not one of {', '.join(AUTH_SCHEMES)}")
    out = dict(inputs)
    base_url = credentials.get("base_url")
    if base_url:
        out["url"] = within(str(inputs.get("url") or ""), str(base_url))
    elif scheme != "none":
        raise ToolError("connection: base_url is missing; credentials are sent only to a connection's own API")

    def need(name: str) -> str:
        value = credentials.get(name)
        if value in (None, ""):
            raise ToolError(f"connection: the credential {name!r} is missing (auth: {scheme})")
        return str(value)

    headers = dict(inputs.get("headers") or {})
    fixed = credentials.get("headers") or {}
    if not isinstance(fixed, Mapping):
        raise ToolError("connection: headers must be an object of name: value")
    for name, value in fixed.items():
        headers = {**_without(headers, str(name)), str(name): value}
    if scheme == "api_key_header":
        name = str(credentials.get("header_name") or DEFAULT_HEADER)
        headers = {**_without(headers, name), name: need("api_key")}
    elif scheme == "bearer":
        headers = {**_without(headers, "Authorization"), "Authorization": f"Bearer {need('token')}"}
    elif scheme == "basic":
        pair = f"{need('username')}:{credentials.get('password') or ''}".encode()
        headers = {**_without(headers, "Authorization"),
                   "Authorization": "Basic " + base64.b64encode(pair).decode("ascii")}
    elif scheme == "api_key_query":
        params = inputs.get("params") or {}
        if not isinstance(params, Mapping):
            raise ToolError("with.params: must be an object when the connection adds a query parameter")
        out["params"] = {**params, str(credentials.get("query_param") or DEFAULT_QUERY_PARAM): need("api_key")}
    if headers:
        out["headers"] = headers
    return out


def redactor(credentials: Mapping[str, Any]) -> Callable[[str], str]:
    """A function hiding the connection's secret values in a message."""
    scrub = scrubber(str(credentials[f]) for f in SECRET_FIELDS if credentials.get(f) not in (None, ""))

    def redact(text: str) -> str:
        return str(scrub(text))

    return redact
