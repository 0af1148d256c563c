"""Client-side rate limits that hold across every worker process.

SideShift allows, per IP, 5 shift creations (fixed and variable together) and 20 quotes
per minute (docs/sideshift.md section 8); above that it answers 429. All our workers usually
share one egress IP, so the count must be shared too: ``RedisBackend`` keeps a sliding
window per key in a Redis sorted set, updated by one Lua script (atomic, and timed by
Redis's own clock so that workers with skewed clocks agree). ``InProcessBackend`` does
the same in memory for dev mode and single-process use.

Policy (``RateLimiter.acquire``): when the window is full, wait for a free slot if it
frees within ``max_wait`` seconds, otherwise raise ``RateLimited(local=True)`` at once
with ``retry_after`` set, so that a worker thread is not parked for up to a minute and the
message is retried later by the broker. Every attempt takes a slot, even one SideShift
later refuses: SideShift presumably counts it too, and over-counting only costs latency.
If Redis cannot be reached the limiter fails CLOSED (``LimiterUnavailable``, transient):
nothing is sent that could not be counted.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from shiftflow.kernel import observe
from shiftflow.kernel.sideshift.errors import LimiterUnavailable, RateLimited

#: The published per-IP limits (docs/sideshift.md section 8).
SHIFTS = "shifts"
QUOTES = "quotes"


@dataclass(frozen=True)
class Rate:
    """At most ``limit`` calls in any ``window`` seconds."""

    limit: int
    window: float = 60.0


DEFAULT_RATES: Mapping[str, Rate] = {SHIFTS: Rate(5, 60.0), QUOTES: Rate(20, 60.0)}


class LimiterBackend(Protocol):
    """Where the sliding windows live. One call must check and take a slot atomically."""

    def try_acquire(self, key: str, rate: Rate) -> float:
        """Take a slot of ``key`` if one is free.

        Parameters:
            key: the window's name (kind and bucket, e.g. ``"shifts:egress"``).
            rate: the limit and window.

        Returns:
            0.0 when a slot was taken, else the seconds until the oldest slot frees.

        Raises:
            LimiterUnavailable: the backend cannot be reached.
        """
        ...


class InProcessBackend:
    """Sliding windows in this process's memory (dev mode, tests, one process only).

    Parameters:
        clock: a monotonic clock in seconds; ``time.monotonic`` by default.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: dict[str, deque[float]] = {}

    def try_acquire(self, key: str, rate: Rate) -> float:
        """See ``LimiterBackend.try_acquire``."""
        with self._lock:
            now = self._clock()
            window = self._windows.setdefault(key, deque())
            while window and window[0] <= now - rate.window:
                window.popleft()
            if len(window) < rate.limit:
                window.append(now)
                return 0.0
            return max(window[0] + rate.window - now, 0.001)


# KEYS[1]: the sorted set; ARGV: limit, window in microseconds, a unique member.
# Scores are Redis TIME in microseconds. Returns 0 when a slot was taken, else the
# microseconds until the oldest entry leaves the window.
_ACQUIRE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], math.ceil(window / 1000) + 1000)
  return 0
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return math.max(tonumber(oldest[2]) + window - now, 1000)
"""


class RedisBackend:
    """Sliding windows in Redis, shared by every process that uses the same ``prefix``.

    Parameters:
        client: a ``redis.Redis`` client (sync). Its socket timeouts bound each call.
        prefix: key prefix; tests use a unique one and delete ``prefix + "*"`` after.
    """

    def __init__(self, client: Any, prefix: str = "shiftflow:sideshift:ratelimit") -> None:
        self._client = client
        self._prefix = prefix
        self._script = client.register_script(_ACQUIRE_LUA)

    def key(self, key: str) -> str:
        """The Redis key of the window ``key``."""
        return f"{self._prefix}:{key}"

    def try_acquire(self, key: str, rate: Rate) -> float:
        """See ``LimiterBackend.try_acquire``."""
        import redis  # the kernel may use third-party packages; imported here so dev mode needs no Redis

        try:
            wait_us = self._script(
                keys=[self.key(key)], args=[rate.limit, int(rate.window * 1_000_000), uuid.uuid4().hex]
            )
        except redis.RedisError as exc:
            raise LimiterUnavailable(f"rate limiter unavailable: {exc}") from exc
        return int(wait_us) / 1_000_000


class RateLimiter:
    """Applies the per-kind rates through a backend; see the module docstring for the policy.

    Parameters:
        backend: where the windows live (``InProcessBackend`` or ``RedisBackend``).
        rates: the rate per kind (``SHIFTS``, ``QUOTES``); a kind not listed is not limited.
        max_wait: the longest this call may block waiting for a slot, in seconds; 0 never waits.
        sleep: the sleep function (tests may pass a fake).
        clock: a monotonic clock used to bound the total wait.
    """

    def __init__(
        self,
        backend: LimiterBackend,
        rates: Mapping[str, Rate] = DEFAULT_RATES,
        *,
        max_wait: float = 5.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        self.rates = dict(rates)
        self.max_wait = max_wait
        self._sleep = sleep
        self._clock = clock

    def acquire(self, kind: str, bucket: str = "egress") -> None:
        """Take one slot of ``kind`` for ``bucket``, waiting up to ``max_wait`` if needed.

        Parameters:
            kind: ``SHIFTS`` or ``QUOTES`` (anything else passes unlimited).
            bucket: whose budget: ``"egress"`` (our IP) or an end user's IP.

        Raises:
            RateLimited: no slot within ``max_wait``; ``retry_after`` says when one frees
                and ``local`` is True (nothing was sent).
            LimiterUnavailable: the backend cannot be reached (fail closed).
        """
        rate = self.rates.get(kind)
        if rate is None:
            return
        deadline = self._clock() + self.max_wait
        while True:
            wait = self.backend.try_acquire(f"{kind}:{bucket}", rate)
            if wait <= 0:
                return
            if self._clock() + wait > deadline:
                observe.SIDESHIFT_LIMIT_WAITS.labels(kind, "refused").inc()
                raise RateLimited(
                    f"local limit of {rate.limit} {kind} per {rate.window:g}s reached; retry in {wait:.2f}s",
                    retry_after=wait,
                    local=True,
                )
            observe.SIDESHIFT_LIMIT_WAITS.labels(kind, "waited").inc()
            observe.SIDESHIFT_LIMIT_WAIT_SECONDS.labels(kind).inc(wait)
            self._sleep(wait)
