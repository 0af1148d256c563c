"""Admission quotas: token buckets per tenant, shared by every producer process through Redis.

A bucket holds at most ``burst`` tokens and refills at ``rate`` tokens per second; an
admitted request takes one. Over quota, the caller learns how long until the next token
(the ``Retry-After`` of a 429). Buckets live

* in Redis when one is configured (``RedisBuckets``, ``AsyncRedisBuckets``): one Lua script,
  one round trip, timed by Redis's own clock, so every ingress and API process of a
  deployment draws from the same bucket;
* in this process otherwise (``LocalBuckets``: dev mode, one process).

The ingress cannot afford a Redis round trip per webhook (it would cost more than the
ingress's whole CPU budget per webhook: docs/benchmarks.md#ingress-cpu), so
``AsyncAdmission`` *leases* tokens: one round trip takes a few tokens for this process
(about 50 ms of the bucket's rate, more while requests wait), the next requests spend
them without leaving the event loop, and a refusal is remembered until the next token is
due, so a flood over quota costs one round trip per token interval, not one per request.
Leased tokens come out of the shared bucket, so all processes together never admit more
than ``burst + rate x seconds``; a lease unused after ``LEASE_SECONDS`` is dropped (it
is never handed back), which can only admit less.

Redis is never the truth here either: when it cannot be reached, admission falls back to
this process's own buckets for ``FALLBACK_SECONDS`` (each process then enforces the whole
limit on its own) and says so in the log and in ``shiftflow_quota_fallbacks_total``. A
quota is protection, not bookkeeping: failing closed would turn a Redis outage into an
outage of every tenant's webhooks.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import Counter

from shiftflow.kernel.errors import TransientError

log = logging.getLogger(__name__)

#: Seconds of a bucket's rate one lease asks for, on top of the requests already waiting.
LEASE_AHEAD_SECONDS = 0.05
#: The most tokens one lease takes.
MAX_LEASE = 256
#: Seconds a leased token stays usable; unused ones are dropped after that.
LEASE_SECONDS = 1.0
#: Seconds admission uses this process's buckets after Redis failed, before trying it again.
FALLBACK_SECONDS = 5.0
#: Retry-After of a bucket that never refills (rate 0 with no burst left cannot happen:
#: rate 0 means no limit; this caps the wait a huge deficit could ask for).
MAX_RETRY_AFTER = 3600.0

FALLBACKS = Counter(
    "shiftflow_quota_fallbacks_total",
    "Times admission fell back to in-process buckets because Redis failed.",
)


@dataclass(frozen=True)
class Limit:
    """At most ``burst`` at once and ``rate`` per second on average; ``rate`` 0 means no limit."""

    rate: float
    burst: int

    @property
    def unlimited(self) -> bool:
        """True when nothing is limited (``rate`` 0)."""
        return self.rate <= 0

    def describe(self, unit: str) -> str:
        """``"100 webhooks/s (burst 200)"``: the limit in words, for a 429's body."""
        rate = f"{self.rate:g}"
        return f"{rate} {unit}/s (burst {self.burst})"


class QuotaStoreUnavailable(TransientError):
    """Raised when the shared buckets (Redis) cannot be reached."""


def refill(tokens: float, elapsed: float, limit: Limit) -> float:
    """The tokens of a bucket ``elapsed`` seconds after it held ``tokens``."""
    return min(float(limit.burst), tokens + max(0.0, elapsed) * limit.rate)


def wait_for_token(tokens: float, limit: Limit) -> float:
    """Seconds until a bucket holding ``tokens`` (< 1) has a whole token."""
    return min(MAX_RETRY_AFTER, max(0.001, (1.0 - tokens) / limit.rate))


class Buckets(Protocol):
    """Where buckets live; ``take`` checks and takes atomically."""

    def take(self, key: str, limit: Limit, want: int = 1) -> tuple[int, float]:
        """Take up to ``want`` tokens of bucket ``key``.

        Returns:
            (tokens taken, 0.0) when at least one was available, else (0, seconds until
            one is).

        Raises:
            QuotaStoreUnavailable: the store cannot be reached.
        """
        ...


class LocalBuckets:
    """Token buckets in this process's memory; thread-safe.

    Parameters:
        clock: monotonic seconds (tests pass a fake).
        max_keys: buckets kept at most; beyond it the oldest are forgotten (a forgotten
            bucket starts full again, which admits at most one more burst).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000) -> None:
        self._clock = clock
        self._max_keys = max_keys
        self._lock = threading.Lock()
        self._buckets: dict[str, list[float]] = {}  # key -> [tokens, at]

    def take(self, key: str, limit: Limit, want: int = 1) -> tuple[int, float]:
        """See ``Buckets.take``."""
        with self._lock:
            now = self._clock()
            bucket = self._buckets.get(key)
            if bucket is None:
                if len(self._buckets) >= self._max_keys:
                    del self._buckets[next(iter(self._buckets))]
                bucket = self._buckets[key] = [float(limit.burst), now]
            else:
                bucket[0] = refill(bucket[0], now - bucket[1], limit)
                bucket[1] = now
            granted = min(want, int(bucket[0]))
            if granted >= 1:
                bucket[0] -= granted
                return granted, 0.0
            return 0, wait_for_token(bucket[0], limit)


# KEYS[1]: the bucket (a hash: t = tokens, at = Redis time in microseconds).
# ARGV: rate per second, burst, tokens wanted. Returns {taken, microseconds until a token}.
_TAKE_LUA = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 't', 'at')
local tokens = tonumber(state[1])
local at = tonumber(state[2])
if tokens == nil or at == nil then
  tokens = burst
  at = now
end
if now > at then
  tokens = math.min(burst, tokens + (now - at) * rate / 1000000)
  at = now
end
local taken = math.min(want, math.floor(tokens))
if taken < 0 then taken = 0 end
tokens = tokens - taken
redis.call('HSET', KEYS[1], 't', tostring(tokens), 'at', tostring(at))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
if taken > 0 then return {taken, 0} end
return {0, math.ceil((1 - tokens) / rate * 1000000)}
"""

#: Key prefix of the buckets in Redis.
PREFIX = "shiftflow:quota"


def _result(raw: Any) -> tuple[int, float]:
    taken, wait_us = int(raw[0]), int(raw[1])
    return taken, 0.0 if taken else min(MAX_RETRY_AFTER, max(0.001, wait_us / 1_000_000))


class RedisBuckets:
    """Token buckets in Redis through a synchronous client (API handlers run in threads).

    Parameters:
        client: a ``redis.Redis``; its socket timeouts bound each call.
        prefix: key prefix (tests use their own).
    """

    def __init__(self, client: Any, prefix: str = PREFIX) -> None:
        self._client = client
        self._prefix = prefix
        self._script = client.register_script(_TAKE_LUA)

    def take(self, key: str, limit: Limit, want: int = 1) -> tuple[int, float]:
        """See ``Buckets.take``."""
        import redis  # dev mode runs without Redis

        try:
            raw = self._script(keys=[f"{self._prefix}:{key}"], args=[limit.rate, limit.burst, want])
        except redis.RedisError as exc:
            raise QuotaStoreUnavailable(f"quota store unavailable: {exc}") from exc
        return _result(raw)


class AsyncRedisBuckets:
    """Token buckets in Redis through an asyncio client (the ingress's event loop).

    Parameters:
        client: a ``redis.asyncio.Redis`` bound to the running loop.
        prefix: key prefix (tests use their own).
    """

    def __init__(self, client: Any, prefix: str = PREFIX) -> None:
        self._client = client
        self._prefix = prefix
        self._script = client.register_script(_TAKE_LUA)

    async def take(self, key: str, limit: Limit, want: int = 1) -> tuple[int, float]:
        """See ``Buckets.take`` (awaited)."""
        import redis

        try:
            raw = await self._script(keys=[f"{self._prefix}:{key}"], args=[limit.rate, limit.burst, want])
        except (redis.RedisError, OSError) as exc:
            raise QuotaStoreUnavailable(f"quota store unavailable: {exc}") from exc
        return _result(raw)

    async def close(self) -> None:
        """Close the client's connections."""
        await self._client.aclose()


class Admission:
    """Admit or refuse one request at a time (synchronous: the management API's threads).

    Parameters:
        shared: the Redis buckets, or None for in-process ones only.
        local: the in-process buckets (also the fallback while Redis fails).
        clock: monotonic seconds.
    """

    def __init__(
        self,
        shared: Buckets | None = None,
        local: LocalBuckets | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._shared = shared
        self._local = local or LocalBuckets(clock)
        self._clock = clock
        self._fallback_until = 0.0

    def admit(self, key: str, limit: Limit) -> float:
        """Take one token of ``key``; 0.0 when admitted, else the seconds until a token is due."""
        if limit.unlimited:
            return 0.0
        if self._shared is not None and self._clock() >= self._fallback_until:
            try:
                return self._shared.take(key, limit)[1]
            except QuotaStoreUnavailable as exc:
                self._fallback_until = self._clock() + FALLBACK_SECONDS
                FALLBACKS.inc()
                log.warning("quotas: %s; using this process's own buckets for %g s", exc, FALLBACK_SECONDS)
        return self._local.take(key, limit)[1]


class AsyncBuckets(Protocol):
    """``Buckets`` whose ``take`` is awaited (``AsyncRedisBuckets``)."""

    async def take(self, key: str, limit: Limit, want: int = 1) -> tuple[int, float]:
        """See ``Buckets.take``."""
        ...


class _Lease:
    """One bucket's share held by this process: tokens to spend, or a refusal to repeat."""

    __slots__ = ("tokens", "expires", "refused_until", "pending", "waiting")

    def __init__(self) -> None:
        self.tokens = 0
        self.expires = 0.0
        self.refused_until = 0.0
        self.pending: asyncio.Future[None] | None = None
        self.waiting = 0


class AsyncAdmission:
    """Admission on an event loop, leasing tokens from shared buckets (see the module docstring).

    Use ``try_admit`` first (no awaiting: the common case); when it returns None, await
    ``admit``. Without shared buckets every answer comes from ``try_admit``.

    Parameters:
        shared: the Redis buckets (``AsyncRedisBuckets``), or None.
        local: the in-process buckets (also the fallback while Redis fails).
        clock: monotonic seconds.
    """

    def __init__(
        self,
        shared: AsyncBuckets | None = None,
        local: LocalBuckets | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.shared = shared
        self._local = local or LocalBuckets(clock)
        self._clock = clock
        self._leases: dict[str, _Lease] = {}
        self._fallback_until = 0.0

    def try_admit(self, key: str, limit: Limit) -> float | None:
        """0.0 admitted, > 0 refused (seconds until a token), None: ``await admit`` to know."""
        if limit.unlimited:
            return 0.0
        now = self._clock()
        if self.shared is None or now < self._fallback_until:
            return self._local.take(key, limit)[1]
        lease = self._leases.get(key)
        if lease is None:
            return None
        if lease.tokens > 0:
            if now < lease.expires:
                lease.tokens -= 1
                return 0.0
            lease.tokens = 0
        if now < lease.refused_until:
            return lease.refused_until - now
        return None

    async def admit(self, key: str, limit: Limit) -> float:
        """Take one token of ``key``, leasing more from Redis if needed; as ``try_admit`` but never None."""
        while True:
            answer = self.try_admit(key, limit)
            if answer is not None:
                return answer
            lease = self._leases.get(key)
            if lease is None:
                if len(self._leases) >= 100_000:
                    self._leases.clear()
                lease = self._leases[key] = _Lease()
            if lease.pending is not None:
                # Another request is leasing for this bucket: wait for it, then look again.
                lease.waiting += 1
                try:
                    await asyncio.shield(lease.pending)
                finally:
                    lease.waiting -= 1
                continue
            lease.pending = asyncio.get_running_loop().create_future()
            try:
                return await self._lease(key, limit, lease)
            finally:
                pending, lease.pending = lease.pending, None
                if not pending.done():
                    pending.set_result(None)

    async def _lease(self, key: str, limit: Limit, lease: _Lease) -> float:
        want = min(MAX_LEASE, 1 + lease.waiting + math.ceil(limit.rate * LEASE_AHEAD_SECONDS))
        assert self.shared is not None
        try:
            taken, wait = await self.shared.take(key, limit, want)
        except QuotaStoreUnavailable as exc:
            self._fallback_until = self._clock() + FALLBACK_SECONDS
            FALLBACKS.inc()
            log.warning("quotas: %s; using this process's own buckets for %g s", exc, FALLBACK_SECONDS)
            return self._local.take(key, limit)[1]
        now = self._clock()
        if taken:
            # One for this request; the rest for the requests that follow (or wait now).
            lease.tokens = taken - 1
            lease.expires = now + LEASE_SECONDS
            lease.refused_until = 0.0
            return 0.0
        lease.refused_until = now + wait
        return wait
