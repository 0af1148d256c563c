"""A local OAuth2 authorisation server and protected API for tests and dev mode. Loopback only.

``POST /token`` serves the client-credentials and refresh-token grants (RFC 6749 4.4 and
6) with the standard answers: ``{"access_token", "token_type": "Bearer", "expires_in",
"refresh_token"?, "scope"}`` on success, ``{"error", "error_description"}`` with 400 (401
for a failed client authentication) otherwise. Clients authenticate with HTTP Basic or
in the form body, as each client is registered to. ``GET /resource`` is the protected
API: 200 with a valid, unexpired bearer token, else 401.

Knobs: ``expires_in`` (seconds of each new token), ``rotate`` (each refresh issues a new
refresh token and the old one stops working), ``delay`` (seconds the token endpoint
waits before answering: a slow server), ``fail_next(status, body, headers)``; refresh
tokens are made with ``issue_refresh_token`` (what an authorisation-code exchange would
have given the user) and revoked with ``revoke``. ``token_requests`` records each token
request (grant, client, how it authenticated)::

    with FakeOAuth2Server() as server:
        server.register("app", "s3cret")
        refresh = server.issue_refresh_token("app", scope="read")
        ...
        assert len(server.token_requests) == 1
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote_plus


@dataclass
class _Client:
    secret: str | None
    methods: tuple[str, ...]


@dataclass
class TokenRequest:
    """One request to ``/token`` as the server saw it."""

    grant_type: str
    client_id: str | None
    auth_method: str
    form: dict[str, str]
    status: int = 0


@dataclass
class _Refresh:
    client_id: str
    scope: str
    active: bool = True


@dataclass
class _Failure:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


class FakeOAuth2Server:
    """The fake server on ``127.0.0.1`` and a free port, served from a background thread.

    Parameters:
        expires_in: lifetime of each access token, seconds (None: the answer has no ``expires_in``).
        rotate: issue a new refresh token on each refresh and invalidate the old one.
    """

    def __init__(self, *, expires_in: int | None = 3600, rotate: bool = False) -> None:
        self.expires_in = expires_in
        self.rotate = rotate
        self.delay = 0.0
        self.token_requests: list[TokenRequest] = []
        self._lock = threading.Lock()
        self._clients: dict[str, _Client] = {}
        self._refresh: dict[str, _Refresh] = {}
        self._access: dict[str, float] = {}  # token -> expiry (time.time), inf when none
        self._failures: list[_Failure] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The server's root, ``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def token_url(self) -> str:
        """The token endpoint."""
        return self.url + "/token"

    # -- test controls ---------------------------------------------------------------

    def register(self, client_id: str, secret: str | None,
                 methods: tuple[str, ...] = ("client_secret_basic", "client_secret_post")) -> None:
        """Register a client; ``secret`` None makes a public client (``methods`` ``("none",)``)."""
        with self._lock:
            self._clients[client_id] = _Client(secret, methods if secret is not None else ("none",))

    def issue_refresh_token(self, client_id: str, scope: str = "") -> str:
        """A refresh token for ``client_id`` (what the user's consent would have produced)."""
        token = "rt-" + secrets.token_urlsafe(16)
        with self._lock:
            self._refresh[token] = _Refresh(client_id, scope)
        return token

    def revoke(self, refresh_token: str) -> None:
        """Make ``refresh_token`` invalid (the user withdrew consent)."""
        with self._lock:
            if refresh_token in self._refresh:
                self._refresh[refresh_token].active = False

    def fail_next(self, status: int, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None) -> None:
        """Answer the next token request with ``status`` and ``body`` (JSON)."""
        with self._lock:
            self._failures.append(_Failure(status, body or {}, headers or {}))

    def active_refresh_tokens(self) -> list[str]:
        """The refresh tokens that still work."""
        with self._lock:
            return [t for t, r in self._refresh.items() if r.active]

    # -- the endpoints ---------------------------------------------------------------

    def _client_auth(self, headers: Any, form: dict[str, str]) -> tuple[str | None, str, bool]:
        """(client id, method used, authenticated)."""
        header = headers.get("Authorization") or ""
        client_id: str | None
        secret: str | None
        if header.startswith("Basic "):
            try:
                raw = base64.b64decode(header[6:], validate=True).decode()
            except ValueError:
                return None, "client_secret_basic", False
            given_id, _, given_secret = raw.partition(":")
            client_id, secret = unquote_plus(given_id), unquote_plus(given_secret)
            method = "client_secret_basic"
        elif "client_secret" in form:
            client_id, secret, method = form.get("client_id"), form["client_secret"], "client_secret_post"
        else:
            client_id, secret, method = form.get("client_id"), None, "none"
        client = self._clients.get(client_id or "")
        ok = client is not None and method in client.methods and (method == "none" or secret == client.secret)
        return client_id, method, ok

    def _token(self, headers: Any, body: bytes) -> tuple[int, dict[str, Any], dict[str, str]]:
        form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True).items()}
        if self.delay:
            time.sleep(self.delay)
        with self._lock:
            client_id, method, ok = self._client_auth(headers, form)
            request = TokenRequest(form.get("grant_type", ""), client_id, method, form)
            self.token_requests.append(request)
            if self._failures:
                failure = self._failures.pop(0)
                request.status = failure.status
                return failure.status, failure.body, failure.headers
            status, answer = self._grant(form, client_id, ok)
            request.status = status
            return status, answer, {}

    def _grant(self, form: dict[str, str], client_id: str | None, ok: bool) -> tuple[int, dict[str, Any]]:
        if not ok:
            return 401, {"error": "invalid_client", "error_description": "client authentication failed"}
        grant = form.get("grant_type")
        if grant == "client_credentials":
            return 200, self._issue(form.get("scope", ""), None)
        if grant == "refresh_token":
            given = form.get("refresh_token", "")
            record = self._refresh.get(given)
            if record is None or not record.active or record.client_id != client_id:
                return 400, {"error": "invalid_grant", "error_description": "refresh token unknown, revoked or used"}
            scope = form.get("scope") or record.scope
            if self.rotate:
                record.active = False
                new = "rt-" + secrets.token_urlsafe(16)
                self._refresh[new] = _Refresh(record.client_id, record.scope)
                return 200, self._issue(scope, new)
            return 200, self._issue(scope, None)
        return 400, {"error": "unsupported_grant_type", "error_description": f"grant {grant!r} is not supported"}

    def _issue(self, scope: str, refresh: str | None) -> dict[str, Any]:
        token = "at-" + secrets.token_urlsafe(16)
        self._access[token] = time.time() + self.expires_in if self.expires_in is not None else float("inf")
        answer: dict[str, Any] = {"access_token": token, "token_type": "Bearer", "scope": scope}
        if self.expires_in is not None:
            answer["expires_in"] = self.expires_in
        if refresh is not None:
            answer["refresh_token"] = refresh
        return answer

    def _resource(self, headers: Any) -> tuple[int, dict[str, Any]]:
        header = headers.get("Authorization") or ""
        token = header[7:] if header.startswith("Bearer ") else ""
        with self._lock:
            expiry = self._access.get(token)
        if expiry is None or expiry <= time.time():
            return 401, {"error": "invalid_token"}
        return 200, {"ok": True}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Cache-Control", "no-store")
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if self.path.split("?", 1)[0] != "/token":
                    self._send(404, {"error": "not_found"})
                    return
                self._send(*server._token(self.headers, body))

            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] == "/resource":
                    self._send(*server._resource(self.headers))
                else:
                    self._send(404, {"error": "not_found"})

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

        return Handler

    def start(self) -> FakeOAuth2Server:
        """Serve in a background thread; returns ``self``."""
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="fake-oauth2",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and free the port."""
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeOAuth2Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
