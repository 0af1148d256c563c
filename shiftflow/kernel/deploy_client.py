"""A client of a deploy API (the ``deploy`` step's outside service), Vercel-like.

``POST {url}/deployments`` starts a deployment (with an ``Idempotency-Key``, so a repeated
start names the same one), ``GET {url}/deployments/{id}`` reads its status: ``queued``,
``building``, then ``ready`` (with a ``url``), ``error`` or ``canceled``. The local fake
(``fakes/deploy.py``) speaks this API.

Errors: a 429 or 503 with ``Retry-After`` is ``RateLimited``; other 5xx, timeouts and
refused connections are ``TransientError`` (retried); any other 4xx is ``PermanentError``
naming the field the service named.
"""

from __future__ import annotations

from typing import Any

import httpx

from shiftflow.kernel.errors import PermanentError, RateLimited, TransientError

#: Seconds to connect and to read an answer.
TIMEOUT = httpx.Timeout(10.0, connect=5.0)
#: Statuses a deployment ends in.
FINAL = ("ready", "error", "canceled")


def _headers(token: str | None, key: str | None = None) -> dict[str, str]:
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if key:
        headers["Idempotency-Key"] = key
    return headers


def _answer(response: httpx.Response, what: str) -> dict[str, Any]:
    if response.status_code in (429, 503) and response.headers.get("retry-after"):
        try:
            wait = float(response.headers["retry-after"])
        except ValueError:
            wait = None
        raise RateLimited(f"deploy API: {what}: {response.status_code}", retry_after=wait)
    if response.status_code >= 500:
        raise TransientError(f"deploy API: {what}: {response.status_code}")
    try:
        body = response.json()
    except ValueError:
        raise TransientError(f"deploy API: {what}: {response.status_code}, not JSON") from None
    if response.status_code >= 400:
        error = body.get("error", {}) if isinstance(body, dict) else {}
        field = f" ({error['field']})" if isinstance(error, dict) and error.get("field") else ""
        message = error.get("message") if isinstance(error, dict) else None
        raise PermanentError(f"deploy API: {what}: {response.status_code}{field}: {message or 'refused'}")
    if not isinstance(body, dict) or not isinstance(body.get("id"), str) or not isinstance(body.get("status"), str):
        raise TransientError(f"deploy API: {what}: an answer without id and status")
    return body


def _call(method: str, url: str, what: str, **kwargs: Any) -> dict[str, Any]:
    try:
        response = httpx.request(method, url, timeout=TIMEOUT, **kwargs)
    except httpx.HTTPError as exc:
        raise TransientError(f"deploy API: {what}: {type(exc).__name__}: {exc}") from None
    return _answer(response, what)


def start(url: str, *, project: str, ref: str, environment: str | None, metadata: dict[str, Any] | None,
          token: str | None, key: str) -> dict[str, Any]:
    """Start a deployment (or find the one this ``key`` started): the deployment."""
    body: dict[str, Any] = {"project": project, "ref": ref}
    if environment:
        body["environment"] = environment
    if metadata:
        body["metadata"] = metadata
    return _call("POST", url.rstrip("/") + "/deployments", "start a deployment", json=body,
                 headers=_headers(token, key))


def status(url: str, deployment_id: str, *, token: str | None) -> dict[str, Any]:
    """A deployment as it is now."""
    return _call("GET", f"{url.rstrip('/')}/deployments/{deployment_id}", f"read deployment {deployment_id}",
                 headers=_headers(token))
