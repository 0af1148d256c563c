"""Webhook lookup for the ingress: token -> ``HookInfo``, with a small in-process TTL cache.

The ingress must stay thin and keep accepting for known hooks while PostgreSQL blips
(docs/architecture.md#the-webhook-ingress): a found hook is cached for ``ttl`` seconds, and if the database
fails after that, the last known entry is served for up to ``stale_ttl`` more seconds
before the ingress answers 503. Unknown tokens are cached briefly (``negative_ttl``) so
that a sender hammering a deleted hook does not cost one query per request, but not
for long, so that a newly created hook starts working within seconds. The workspace's
webhook quota overrides come with the hook (one query), so a changed quota applies
within ``ttl`` too.

Each database read opens and closes its own connection (``connection_context``): a
request never holds a Peewee connection after the lookup returns.

Signing secrets are stored sealed (``models.tables.webhook_secrets``) and opened here, once per
database read: the cached ``HookInfo`` (and the ingress's per-token memo in front of it)
holds them opened, so a request costs no decryption. A secret no configured key opens
(``SHIFTFLOW_SECRET_KEYS`` missing or wrong on this process) makes the lookup fail like
a database outage, 503 with ``Retry-After``: senders retry and nothing is lost once the
keys are fixed, where a 401 would have made them give up.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import peewee
from playhouse.pool import MaxConnectionsExceeded

from shiftflow.kernel.db import database
from shiftflow.kernel.errors import SettingsError, TransientError
from shiftflow.kernel.secretbox import DecryptionError
from shiftflow.models.tables import webhook_secrets
from shiftflow.models.tables.tenancy import Workspace
from shiftflow.models.tables.workflows import Webhook, Workflow

log = logging.getLogger(__name__)

#: Longest token ``Webhook.token`` can hold; longer ones cannot exist, so skip the query.
MAX_TOKEN_LENGTH = 64


class HookStoreUnavailable(TransientError):
    """Raised when the webhook table could not be read and no usable cached entry exists."""


@dataclass(frozen=True)
class HookInfo:
    """What the ingress needs to know about one webhook endpoint.

    ``active`` is true only when the webhook is active *and* its workflow is ACTIVE;
    the ingress answers 404 otherwise, the same as for an unknown token, so that a
    caller cannot tell a paused workflow from a missing one.
    """

    token: str
    scheme: str
    secrets: tuple[str, ...]
    workflow_id: str
    workspace_id: str
    active: bool
    #: The workspace's webhook quota overrides (``Workspace.quota_webhooks_*``); None: the default.
    quota_rate: float | None = None
    quota_burst: int | None = None


Lookup = Callable[[str], HookInfo | None]


def valid_token(token: str) -> bool:
    """True when ``token`` could be a stored token (URL-safe ASCII, at most 64 characters)."""
    return (
        0 < len(token) <= MAX_TOKEN_LENGTH
        and token.isascii()
        and all(c.isalnum() or c in "-_" for c in token)
    )


def load_hook(token: str) -> HookInfo | None:
    """Read one webhook and its workflow from the database, uncached.

    Parameters:
        token: the ``{token}`` path segment of ``POST /hooks/{token}``.

    Returns:
        The hook, or None when no webhook has this token.

    Raises:
        HookStoreUnavailable: the database could not be reached or the query failed, or the
            hook's signing secrets cannot be opened with the configured keys.
    """
    try:
        with database.connection_context():
            # Plain columns as a tuple: no model instance whose lazy foreign keys could
            # query again after the connection is closed.
            row = cast(
                "tuple[Any, ...] | None",
                Webhook.select(
                    Webhook.token,
                    Webhook.scheme,
                    Webhook.sealed_secrets,
                    Webhook.is_active,
                    Workflow.id,
                    Workflow.workspace,
                    Workflow.status,
                    Workspace.quota_webhooks_per_second,
                    Workspace.quota_webhooks_burst,
                )
                .join(Workflow)
                .join(Workspace)
                .where(Webhook.token == token)
                .tuples()
                .get_or_none(),
            )
    except (peewee.PeeweeException, MaxConnectionsExceeded) as exc:
        raise HookStoreUnavailable(f"could not read webhook: {exc.__class__.__name__}") from exc
    if row is None:
        return None
    found_token, scheme, sealed, is_active, workflow_id, workspace_id, status, rate, burst = row
    try:
        secrets = webhook_secrets.open_sealed(sealed)
    except (DecryptionError, SettingsError) as exc:
        log.error("webhook %s...: its signing secrets cannot be opened: %s", found_token[:6], exc)
        raise HookStoreUnavailable("webhook secrets cannot be opened with the configured keys") from None
    return HookInfo(
        token=found_token,
        scheme=scheme,
        secrets=tuple(secrets),
        workflow_id=str(workflow_id),
        workspace_id=str(workspace_id),
        active=bool(is_active) and status == "ACTIVE",
        quota_rate=None if rate is None else float(rate),
        quota_burst=None if burst is None else int(burst),
    )


def make_lookup(
    loader: Lookup = load_hook,
    *,
    ttl: float = 30.0,
    negative_ttl: float = 5.0,
    stale_ttl: float = 300.0,
    max_entries: int = 10_000,
    clock: Callable[[], float] = time.monotonic,
) -> Lookup:
    """Wrap ``loader`` in a thread-safe TTL cache.

    Parameters:
        loader: the uncached lookup (``load_hook`` in production, a fake in tests).
        ttl: seconds a found hook is served from the cache.
        negative_ttl: seconds an unknown token is remembered as unknown.
        stale_ttl: seconds past ``ttl`` a found hook is still served when ``loader`` raises
            ``TransientError`` (a database blip); bounded so that a revoked secret does not
            stay accepted through a long outage.
        max_entries: cache size bound; a flood of random tokens evicts the oldest entries.
        clock: monotonic seconds (injected by tests).

    Returns:
        ``lookup(token) -> HookInfo | None``; raises ``TransientError`` (from ``loader``)
        when the store is down and no usable entry is cached.
    """
    lock = threading.Lock()
    # token -> (fresh until, hook or None); dicts keep insertion order, which gives FIFO eviction.
    entries: dict[str, tuple[float, HookInfo | None]] = {}

    def store(token: str, expires: float, hook: HookInfo | None) -> None:
        with lock:
            entries.pop(token, None)
            if len(entries) >= max_entries:
                del entries[next(iter(entries))]
            entries[token] = (expires, hook)

    def lookup(token: str) -> HookInfo | None:
        if not valid_token(token):
            return None  # cannot exist: no query, and no cache entry for an attacker to fill
        now = clock()
        with lock:
            cached = entries.get(token)
        if cached is not None and now < cached[0]:
            return cached[1]
        # Load outside the lock: a slow query must not block lookups of other tokens.
        try:
            hook = loader(token)
        except TransientError:
            if cached is not None and cached[1] is not None and now < cached[0] + stale_ttl:
                return cached[1]
            raise
        store(token, now + (ttl if hook is not None else negative_ttl), hook)
        return hook

    return lookup


#: The process-wide cached lookup the ingress uses by default.
lookup: Lookup = make_lookup()
