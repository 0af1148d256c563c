"""Throttling of failed API-key authentication, per client address and per key prefix.

Every failed authentication (a missing, malformed, unknown, revoked or expired key)
counts against the client's address, and, when the key is well formed, against its
lookup prefix (``sfk_<12 hex>``). Once either count reaches its limit within the window,
requests from that address (or naming that key) get 429 with ``Retry-After`` before
their key is looked at, until the window that started with the first failure ends.

Why both: the per-address count stops a client scanning for keys, the per-prefix one a
guesser spread over many addresses. A key's 256 random bits make guessing hopeless
anyway; what the throttle saves is the database query behind every failed attempt and
the noise in the logs. The price of the per-prefix count: someone who knows a key's
prefix (it is shown in key lists and safe to log) can make it answer 429 for a window.

Counts live in Redis when ``SHIFTFLOW_REDIS_URL`` is set, so every ingress process shares
them; otherwise, or while Redis cannot be reached, each process counts in memory. The
throttle never fails closed: a Redis outage must not lock every caller out of the API.

The client address is the one uvicorn reports: behind a reverse proxy, tell uvicorn to
trust its ``X-Forwarded-For`` (``FORWARDED_ALLOW_IPS``), or every caller shares the
proxy's address and its count.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from shiftflow.kernel.errors import PermanentError
from shiftflow.kernel.settings import Settings

log = logging.getLogger(__name__)

#: Most counters the in-memory store keeps; a flood of addresses drops expired ones
#: first, then clears the store (throttling briefly forgets rather than growing).
MAX_COUNTERS = 100_000


class Throttled(PermanentError):
    """Raised when a caller failed to authenticate too often: answer 429 with ``retry_after``."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class FailureStore(Protocol):
    """Counters that start at a first failure and expire ``window`` seconds later."""

    def count(self, keys: list[str]) -> list[tuple[int, float]]:
        """Each key's failures and seconds left in its window ((0, 0.0) when none)."""
        ...

    def add(self, keys: list[str], window: float) -> None:
        """Count one failure against every key."""
        ...


class MemoryStore:
    """Counters in this process's memory (dev mode, no Redis, or Redis unreachable)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._counters: dict[str, tuple[int, float]] = {}  # key -> (failures, window ends)

    def count(self, keys: list[str]) -> list[tuple[int, float]]:
        """See ``FailureStore.count``."""
        now = self._clock()
        out = []
        with self._lock:
            for key in keys:
                failures, ends = self._counters.get(key, (0, now))
                out.append((failures, ends - now) if ends > now else (0, 0.0))
        return out

    def add(self, keys: list[str], window: float) -> None:
        """See ``FailureStore.add``."""
        now = self._clock()
        with self._lock:
            if len(self._counters) >= MAX_COUNTERS:
                self._counters = {k: v for k, v in self._counters.items() if v[1] > now}
                if len(self._counters) >= MAX_COUNTERS:
                    self._counters.clear()
            for key in keys:
                failures, ends = self._counters.get(key, (0, now))
                self._counters[key] = (failures + 1, ends) if ends > now else (1, now + window)


class RedisStore:
    """Counters in Redis, shared by every process on the same Redis; each key expires with
    its window (``SET NX PX`` then ``INCR`` in one transaction, so no key lives forever).

    Falls back to ``fallback`` (in memory) for any call Redis cannot answer, and for the
    next ``pause`` seconds after one, so that requests do not each wait on a dead Redis.
    """

    def __init__(
        self,
        client: Any,
        fallback: FailureStore,
        prefix: str = "shiftflow:auth:failures",
        *,
        pause: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._fallback = fallback
        self._prefix = prefix
        self._pause = pause
        self._clock = clock
        self._down_until = 0.0

    def _key(self, key: str) -> str:
        return f"{self._prefix}:{key}"

    def _usable(self) -> bool:
        return self._clock() >= self._down_until

    def _failed(self, exc: Exception) -> None:
        log.warning("auth throttle: Redis unavailable, counting in memory for %g s: %s", self._pause, exc)
        self._down_until = self._clock() + self._pause

    def count(self, keys: list[str]) -> list[tuple[int, float]]:
        """See ``FailureStore.count``."""
        import redis

        if not self._usable():
            return self._fallback.count(keys)
        try:
            pipe = self._client.pipeline(transaction=False)
            for key in keys:
                pipe.get(self._key(key))
                pipe.pttl(self._key(key))
            replies = pipe.execute()
        except redis.RedisError as exc:
            self._failed(exc)
            return self._fallback.count(keys)
        out = []
        for value, ttl_ms in zip(replies[::2], replies[1::2], strict=True):
            failures = int(value or 0)
            out.append((failures, max(int(ttl_ms), 0) / 1000) if failures and ttl_ms != -2 else (0, 0.0))
        return out

    def add(self, keys: list[str], window: float) -> None:
        """See ``FailureStore.add``."""
        import redis

        if not self._usable():
            self._fallback.add(keys, window)
            return
        try:
            pipe = self._client.pipeline(transaction=True)
            for key in keys:
                pipe.set(self._key(key), 0, nx=True, px=max(int(window * 1000), 1))
                pipe.incr(self._key(key))
            pipe.execute()
        except redis.RedisError as exc:
            self._failed(exc)
            self._fallback.add(keys, window)


@dataclass(frozen=True)
class Limits:
    """Failures allowed per window; 0 turns a count off."""

    per_address: int = 20
    per_key: int = 10
    window: float = 60.0


class AuthThrottle:
    """Check before authenticating, count after a failure (``check`` and ``failed``).

    Parameters:
        store: where the counts live.
        limits: the limits and window.
    """

    def __init__(self, store: FailureStore, limits: Limits) -> None:
        self.store = store
        self.limits = limits

    def _keys(self, address: str | None, prefix: str | None) -> list[tuple[str, int, str]]:
        keys = []
        if address and self.limits.per_address:
            keys.append((f"address:{address}", self.limits.per_address, "from this address"))
        if prefix and self.limits.per_key:
            keys.append((f"key:{prefix}", self.limits.per_key, f"for key {prefix}"))
        return keys

    def check(self, address: str | None, prefix: str | None) -> None:
        """Refuse a caller whose address or key prefix reached its limit.

        Raises:
            Throttled: with the whole seconds until the window ends.
        """
        keys = self._keys(address, prefix)
        if not keys:
            return
        for (_, limit, what), (failures, left) in zip(keys, self.store.count([k for k, _, _ in keys]), strict=True):
            if failures >= limit:
                raise Throttled(
                    f"too many failed authentication attempts {what}; retry in {math.ceil(left)} s",
                    retry_after=max(1, math.ceil(left)),
                )

    def failed(self, address: str | None, prefix: str | None) -> None:
        """Count one failed authentication."""
        keys = [k for k, _, _ in self._keys(address, prefix)]
        if keys:
            self.store.add(keys, self.limits.window)


def from_settings(settings: Settings) -> AuthThrottle:
    """The throttle of one API app: Redis-backed when ``settings.redis_url`` is set."""
    limits = Limits(
        per_address=settings.auth_failures_per_address,
        per_key=settings.auth_failures_per_key,
        window=float(settings.auth_failure_window_seconds),
    )
    memory = MemoryStore()
    if not settings.redis_url:
        return AuthThrottle(memory, limits)
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    # No retries: a request waits at most one timeout on a dead Redis, then counts in memory.
    client = redis.Redis.from_url(
        settings.redis_url, socket_timeout=1, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0)
    )
    return AuthThrottle(RedisStore(client, memory), limits)
