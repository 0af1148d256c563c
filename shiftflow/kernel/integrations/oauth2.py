"""An OAuth2 token client: the client-credentials and refresh-token grants (RFC 6749 4.4 and 6).

``OAuth2Client.token(connection_id, credentials, store)`` returns a usable access token
for a connection:

1. The token in ``credentials`` (``access_token``, ``expires_at``) is used while it is
   fresh: until ``margin`` seconds before it expires (at most half its lifetime, so a
   token living 60 s is not refreshed on every call). A token without an expiry is used
   until a caller reports it rejected (``rejected=``, after a 401).
2. Otherwise the client takes the connection's refresh lock (one refresh at a time per
   connection, across processes through Redis; ``locks``), reads the connection again
   from ``store`` (another worker may have refreshed it meanwhile: then that token is
   used and no request is made), and asks the token endpoint for a new one: with the
   client's credentials (``grant_type=client_credentials``) or with the refresh token
   (``grant_type=refresh_token``).
3. The new tokens go to ``store.save`` before the lock is released. A provider that
   rotates refresh tokens sends a new one with each answer, and the old one stops
   working: the new one must be stored, or the connection is lost. A provider that does
   not rotate sends none, and the old one is kept.

The client authenticates to the token endpoint with HTTP Basic (``client_secret_basic``,
the id and secret form-encoded first, as RFC 6749 2.3.1 says) or in the form body
(``client_secret_post``), or sends its id only (``none``, a public client). The request
goes through the HTTP tool's client: same address rules, deadline and size cap.

Answers: ``invalid_grant`` on a refresh is ``ReauthorisationRequired`` (permanent: the
user revoked access, the token expired for good, or it was rotated and the new one was
lost; only a person connecting again can fix it); other OAuth2 errors
(``invalid_client``, ``invalid_scope``...) are ``OAuth2Error`` (permanent); a 429 is
``RateLimited``; a timeout or a 5xx is ``ToolUnavailable``. Secrets never appear in a
message.

Persistence belongs to the engine: ``TokenStore`` is what it implements (load the
connection's current credentials, decrypted; save new tokens, encrypted, with the
connection's ``expires_at``).
"""

from __future__ import annotations

import base64
import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote_plus, urlencode

from shiftflow.kernel.errors import NotFound, ToolError, ToolUnavailable
from shiftflow.kernel.integrations.locks import LocalLocks, Locks, RedisLocks
from shiftflow.kernel.redaction import scrubber
from shiftflow.kernel.tools import http

if TYPE_CHECKING:
    from shiftflow.kernel.settings import Settings

log = logging.getLogger(__name__)

GRANTS = ("client_credentials", "refresh_token")
AUTH_METHODS = ("client_secret_basic", "client_secret_post", "none")
#: The credential fields holding the token state (encrypted with the rest).
#: ``scope`` stays what the connection asks for; what the server granted is ``granted_scope``.
TOKEN_FIELDS = ("access_token", "token_type", "expires_at", "issued_at", "refresh_token", "granted_scope")
#: Characters of a token endpoint's ``error_description`` kept in a message.
DESCRIPTION_CHARS = 200
#: OAuth2 error codes that mean "try again later" rather than "this request is wrong".
_TRANSIENT_CODES = frozenset({"temporarily_unavailable", "server_error", "slow_down"})


class OAuth2Error(ToolError):
    """Raised when the token endpoint refused the request (an OAuth2 ``error`` code, or a
    malformed answer); permanent: a person must fix the connection.

    Parameters:
        code: the OAuth2 error code (``invalid_client``...), None for a malformed answer.
    """

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class ReauthorisationRequired(OAuth2Error):
    """Raised when the refresh token was refused (``invalid_grant``): the connection must be
    authorised again by a person; no retry can help.

    Parameters:
        connection_id: the connection concerned.
    """

    def __init__(self, message: str, *, connection_id: str | None, code: str | None = "invalid_grant") -> None:
        super().__init__(message, code=code)
        self.connection_id = connection_id


@dataclass(frozen=True)
class TokenSet:
    """The tokens of a connection.

    Parameters:
        access_token: the bearer token.
        token_type: as the server said (``Bearer``).
        expires_at: Unix seconds when it expires; None when the server did not say.
        issued_at: Unix seconds when it was issued (bounds the refresh margin).
        refresh_token: the token to get the next one with, if any.
        scope: the scope granted, as the server said (space-separated).
    """

    access_token: str
    token_type: str = "Bearer"
    expires_at: float | None = None
    issued_at: float | None = None
    refresh_token: str | None = None
    scope: str | None = None

    def fresh(self, now: float, margin: float) -> bool:
        """True while the token may be used: before ``expires_at`` minus the margin, the
        margin being at most half the token's lifetime."""
        if self.expires_at is None:
            return True
        lifetime = self.expires_at - self.issued_at if self.issued_at is not None else 2 * margin
        return now < self.expires_at - min(margin, max(0.0, lifetime) / 2)

    def to_credentials(self) -> dict[str, Any]:
        """The token fields to store in the connection's credentials (None left out)."""
        values = {"access_token": self.access_token, "token_type": self.token_type, "expires_at": self.expires_at,
                  "issued_at": self.issued_at, "refresh_token": self.refresh_token, "granted_scope": self.scope}
        return {k: v for k, v in values.items() if v is not None}

    @classmethod
    def from_credentials(cls, credentials: Mapping[str, Any]) -> TokenSet | None:
        """The tokens stored in ``credentials``, or None when there is no access token."""
        access = credentials.get("access_token")
        if not isinstance(access, str) or not access:
            return None
        return cls(
            access_token=access,
            token_type=str(credentials.get("token_type") or "Bearer"),
            expires_at=_number(credentials.get("expires_at")),
            issued_at=_number(credentials.get("issued_at")),
            refresh_token=credentials.get("refresh_token") or None,
            scope=credentials.get("granted_scope") if isinstance(credentials.get("granted_scope"), str) else None,
        )


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def merge_tokens(credentials: Mapping[str, Any], tokens: TokenSet) -> dict[str, Any]:
    """``credentials`` with their token fields replaced by those of ``tokens`` (what the
    store encrypts); the other fields (client id and secret, scope asked for) are kept."""
    return {**{k: v for k, v in credentials.items() if k not in TOKEN_FIELDS}, **tokens.to_credentials()}


class TokenStore(Protocol):
    """Where a connection's tokens are kept; the engine implements it over the connection table."""

    def load(self, connection_id: str) -> Mapping[str, Any] | None:
        """The connection's current credentials, decrypted, read again from the store;
        None when the connection no longer exists."""
        ...

    def save(self, connection_id: str, tokens: TokenSet) -> None:
        """Store ``tokens`` for the connection (``merge_tokens`` into its credentials,
        encrypted; ``expires_at`` in its clear column) before returning.

        Raises whatever the store raises; the client lets it through.
        """
        ...


def _scope(value: Any) -> str | None:
    if isinstance(value, list):
        return " ".join(str(v) for v in value) or None
    return str(value) if value else None


class OAuth2Client:
    """Gets and refreshes OAuth2 tokens (see the module docstring). Thread-safe.

    Parameters:
        timeout: seconds one token request may take.
        margin: seconds before expiry a token is refreshed.
        lock_ttl: seconds a refresh lock lives if its holder dies; also the longest a
            caller waits for another's refresh. Raised to ``timeout + 5`` if shorter, so a
            slow refresh is never overtaken.
        allow_private: let the token endpoint be a loopback/private address (dev, tests).
        locks: the refresh locks; in-process ones when None (one process only).
        clock: Unix seconds (tests pass a fake).
    """

    def __init__(self, *, timeout: float = 10.0, margin: float = 60.0, lock_ttl: float = 30.0,
                 allow_private: bool = False, locks: Locks | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.timeout = timeout
        self.margin = margin
        self.lock_ttl = max(lock_ttl, timeout + 5.0)
        self.allow_private = allow_private
        self.locks: Locks = locks or LocalLocks()
        self.clock = clock

    @classmethod
    def from_settings(cls, settings: Settings, redis_client: Any | None = None) -> OAuth2Client:
        """A client on ``SHIFTFLOW_OAUTH2_*``, with Redis locks when a client is given."""
        ttl = max(settings.oauth2_lock_seconds, settings.oauth2_timeout_seconds + 5.0)
        locks = RedisLocks(redis_client, ttl=ttl) if redis_client is not None else None
        return cls(timeout=settings.oauth2_timeout_seconds, margin=settings.oauth2_expiry_margin_seconds,
                   lock_ttl=ttl, allow_private=settings.http_allow_private, locks=locks)

    def token(self, connection_id: str, credentials: Mapping[str, Any], store: TokenStore, *,
              rejected: str | None = None) -> TokenSet:
        """A usable token for the connection, refreshed (and stored) when needed.

        Parameters:
            connection_id: the connection (names its lock and its row in ``store``).
            credentials: its credentials as the caller has them (decrypted).
            store: where tokens are read again and saved.
            rejected: an access token the service just refused (a 401): not used again.

        Raises:
            ReauthorisationRequired: the refresh token was refused.
            OAuth2Error: the endpoint refused the client or the request.
            RateLimited / ToolUnavailable: try again later (nothing was lost).
            NotFound: the connection no longer exists.
        """
        current = TokenSet.from_credentials(credentials)
        if self._usable(current, rejected):
            assert current is not None
            return current
        with self.locks.hold(f"oauth2:{connection_id}", self.lock_ttl):
            latest = store.load(connection_id)
            if latest is None:
                raise NotFound(f"connection {connection_id} no longer exists")
            stored = TokenSet.from_credentials(latest)
            if self._usable(stored, rejected):
                assert stored is not None
                return stored  # another worker refreshed it while we waited
            tokens = self.request_token(latest, connection_id=connection_id)
            saved = False
            try:
                store.save(connection_id, tokens)
                saved = True
            finally:
                if not saved:
                    # The provider may have rotated the refresh token: losing this answer
                    # can lose the connection. Say so loudly; the store's error goes on.
                    log.error("connection %s: new OAuth2 tokens could not be stored", connection_id)
            return tokens

    def _usable(self, tokens: TokenSet | None, rejected: str | None) -> bool:
        return (tokens is not None and tokens.access_token != rejected
                and tokens.fresh(self.clock(), self.margin))

    def request_token(self, credentials: Mapping[str, Any], *, connection_id: str | None = None) -> TokenSet:
        """One token request for the connection's grant; nothing is locked or stored.

        For ``refresh_token`` the answer's refresh token replaces the old one (rotation),
        or the old one is kept when the answer has none.

        Raises:
            See ``token``; also ``OAuth2Error`` when the credentials lack a field the grant needs.
        """
        grant = str(credentials.get("grant_type") or "client_credentials")
        if grant not in GRANTS:
            raise OAuth2Error(f"credentials.grant_type: {grant!r} is not one of {', '.join(GRANTS)}")
        token_url, client_id = credentials.get("token_url"), credentials.get("client_id")
        if not token_url or not client_id:
            raise OAuth2Error("credentials: token_url and client_id are required")
        form: dict[str, str] = {"grant_type": grant}
        old_refresh = credentials.get("refresh_token")
        if grant == "refresh_token":
            if not old_refresh:
                raise ReauthorisationRequired("credentials.refresh_token: required for the refresh_token grant; "
                                              "the connection needs re-authorisation", connection_id=connection_id)
            form["refresh_token"] = str(old_refresh)
        scope = _scope(credentials.get("scope"))
        if scope:
            form["scope"] = scope
        for name, value in (credentials.get("extra_params") or {}).items():
            form.setdefault(str(name), str(value))
        headers = {"Accept": "application/json", "Content-Type": "application/x-www-form-urlencoded"}
        method = str(credentials.get("auth_method") or "client_secret_basic")
        secret = str(credentials.get("client_secret") or "")
        if method == "client_secret_basic":
            pair = f"{quote_plus(str(client_id))}:{quote_plus(secret)}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        elif method == "client_secret_post":
            form.update(client_id=str(client_id), client_secret=secret)
        elif method == "none":
            form["client_id"] = str(client_id)
        else:
            raise OAuth2Error(f"credentials.auth_method: {method!r} is not one of {', '.join(AUTH_METHODS)}")
        scrub = scrubber(str(v) for v in (secret, old_refresh, credentials.get("access_token")) if v)

        def redact(text: str) -> str:
            return str(scrub(text))

        issued = self.clock()
        answer = http.exchange({"url": str(token_url), "method": "POST", "headers": headers, "body": urlencode(form)},
                               timeout=self.timeout, allow_private=self.allow_private, redact=redact)
        tokens = self._read(answer, grant, connection_id, issued, redact)
        if grant == "refresh_token" and tokens.refresh_token is None:
            tokens = replace(tokens, refresh_token=str(old_refresh))
        return tokens

    def _read(self, answer: http.Exchange, grant: str, connection_id: str | None, issued: float,
              redact: Callable[[str], str]) -> TokenSet:
        where = f"token endpoint {answer.url}"
        limited = http.rate_limited(answer, redact)
        if limited is not None:
            raise limited
        body = _json(answer.body)
        if answer.status == 200:
            return _tokens(body, where, issued, redact)
        code = body.get("error") if isinstance(body, dict) and isinstance(body.get("error"), str) else None
        if answer.status >= 500 or code in _TRANSIENT_CODES:
            raise ToolUnavailable(redact(f"{where} answered {answer.status}" + (f" ({code})" if code else "")))
        described = ""
        if isinstance(body, dict) and isinstance(body.get("error_description"), str):
            described = ": " + redact(body["error_description"])[:DESCRIPTION_CHARS]
        if code == "invalid_grant" and grant == "refresh_token":
            raise ReauthorisationRequired(
                redact(f"{where} refused the refresh token (invalid_grant{described}); "
                       f"connection {connection_id or '?'} needs re-authorisation"),
                connection_id=connection_id)
        if code is not None:
            raise OAuth2Error(redact(f"{where} answered {answer.status} {code}{described}"), code=code)
        raise OAuth2Error(redact(f"{where} answered {answer.status} without an OAuth2 error"))


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


def _tokens(body: Any, where: str, issued: float, redact: Callable[[str], str]) -> TokenSet:
    if not isinstance(body, dict) or not isinstance(body.get("access_token"), str) or not body["access_token"]:
        raise OAuth2Error(f"{where} answered 200 without an access_token")
    token_type = body.get("token_type") or "Bearer"
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise OAuth2Error(redact(f"{where} issued a token of type {token_type!r}; only Bearer tokens are supported"))
    expires_in = body.get("expires_in")
    if isinstance(expires_in, str) and expires_in.strip().isdigit():
        expires_in = int(expires_in)  # some servers send it as text
    expires_at = None
    if isinstance(expires_in, int | float) and not isinstance(expires_in, bool) and math.isfinite(expires_in):
        expires_at = issued + max(0.0, float(expires_in))
    refresh = body.get("refresh_token")
    scope = body.get("scope")
    return TokenSet(
        access_token=body["access_token"],
        token_type="Bearer",
        expires_at=expires_at,
        issued_at=issued,
        refresh_token=refresh if isinstance(refresh, str) and refresh else None,
        scope=scope if isinstance(scope, str) else None,
    )
