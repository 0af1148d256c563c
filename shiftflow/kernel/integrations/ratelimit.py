"""Rate limits per integration and per connection, shared by every worker through Redis.

Before a call to an outside service, the caller asks ``acquire(integration,
connection_id)``: None means go; a number is how many seconds to wait, and the caller
PARKS the step for that long (a durable timer) instead of sleeping in a worker or holding
a message. Three things can say wait, checked in this order:

1. a **cool-down**: the service itself answered 429 (or 503 with ``Retry-After``) to some
   worker; ``cool_down`` recorded how long it asked for, for that connection (or for the
   whole integration when the service counts by our address, ``cooldown_scope``), so
   every worker waits, not only the one that was told;
2. the **connection's buckets**: the integration's limits (``Integration.limits``, or
   the deployment default ``SHIFTFLOW_INTEGRATION_RATE_PER_SECOND``/``_BURST`` when it
   declares none), replaced per integration by ``SHIFTFLOW_INTEGRATION_LIMITS`` and per
   connection by the connection's own limits;
3. the **integration's shared buckets** (``Integration.shared_limits``), across all its
   connections.

Buckets are ``kernel/quota.py``'s token buckets (one Lua script per take, timed by Redis's
clock) through its ``Admission``, which falls back to this process's buckets while Redis
cannot be reached (each process then enforces the whole limit on its own: a short
over-admission, which the service's 429 and the cool-down then absorb; failing closed
would stop every outside call with Redis). A take that passes the connection's bucket
and is refused by the shared one has spent the connection's token: that can only admit
less. Cool-downs are Redis keys with a TTL (in this process without Redis).

Metrics: ``shiftflow_rate_limit_waits_total{integration}`` counts the waits ``acquire``
answers, ``shiftflow_rate_limit_cooldowns_total{integration}`` the cool-downs recorded.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import Counter

from shiftflow.kernel.integrations.base import RateLimits
from shiftflow.kernel.integrations.catalogue import IntegrationCatalogue, default_catalogue
from shiftflow.kernel.quota import FALLBACK_SECONDS, FALLBACKS, Admission, RedisBuckets
from shiftflow.kernel.settings import Settings, get_settings

log = logging.getLogger(__name__)

#: Key prefix of the buckets and cool-downs in Redis.
PREFIX = "shiftflow:ratelimit"
#: The shortest cool-down: a 429 saying ``Retry-After: 0`` is still not retried at once.
MIN_COOLDOWN_SECONDS = 1.0
#: The connection part of the key of an integration-wide bucket or cool-down.
ALL_CONNECTIONS = "*"

WAITS = Counter(
    "shiftflow_rate_limit_waits_total",
    "Outside calls told to wait (their step parked) by a rate limit or a cool-down, by integration.",
    ["integration"],
)
COOLDOWNS = Counter(
    "shiftflow_rate_limit_cooldowns_total",
    "Cool-downs recorded after an outside service answered 429 (or 503 with Retry-After), by integration.",
    ["integration"],
)

# KEYS[1]: the cool-down key. ARGV[1]: milliseconds. Keeps the longer of the two; returns
# the milliseconds left.
_EXTEND_LUA = """
local left = redis.call('PTTL', KEYS[1])
local want = tonumber(ARGV[1])
if left < want then
  redis.call('SET', KEYS[1], '1', 'PX', want)
  return want
end
return left
"""


class _LocalCooldowns:
    """Cool-downs of this process: key -> monotonic deadline."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._until: dict[str, float] = {}

    def remaining(self, keys: list[str]) -> float:
        now = self._clock()
        with self._lock:
            return max([0.0, *(self._until.get(k, 0.0) - now for k in keys)])

    def extend(self, key: str, seconds: float) -> float:
        now = self._clock()
        with self._lock:
            if len(self._until) >= 100_000:
                self._until = {k: v for k, v in self._until.items() if v > now}
            until = max(self._until.get(key, 0.0), now + seconds)
            self._until[key] = until
            return until - now


class IntegrationLimiter:
    """``acquire`` and ``cool_down`` over shared buckets and cool-downs (see the module docstring).

    Parameters:
        catalogue: where integrations' limits come from; the default catalogue when None.
        settings: deployment defaults and overrides; the process settings when None.
        redis_client: a ``redis.Redis`` shared by the workers; None keeps everything in
            this process (dev mode).
        clock: monotonic seconds (tests).
        prefix: Redis key prefix (tests use their own).
    """

    def __init__(self, catalogue: IntegrationCatalogue | None = None, *, settings: Settings | None = None,
                 redis_client: Any | None = None, clock: Callable[[], float] = time.monotonic,
                 prefix: str = PREFIX) -> None:
        self.catalogue = catalogue if catalogue is not None else default_catalogue()
        self.settings = settings if settings is not None else get_settings()
        self._client = redis_client
        self._prefix = prefix
        self._clock = clock
        shared = RedisBuckets(redis_client, prefix=f"{prefix}:bucket") if redis_client is not None else None
        self._admission = Admission(shared, clock=clock)
        self._local = _LocalCooldowns(clock)
        self._extend = redis_client.register_script(_EXTEND_LUA) if redis_client is not None else None
        self._fallback_until = 0.0
        self._deployment = {key: (s, m, b) for key, s, m, b in self.settings.integration_limits}

    # -- limits ----------------------------------------------------------------------

    def limits(self, integration: str,
               override: Mapping[str, Any] | RateLimits | None = None) -> tuple[RateLimits, RateLimits | None]:
        """(limits per connection, limits shared by the integration's connections) for a call.

        Precedence, per field: the connection's ``override``, then
        ``SHIFTFLOW_INTEGRATION_LIMITS``, then the catalogue, then the deployment default.
        An integration the catalogue does not know (a custom one) gets the default.

        Raises:
            InvalidCredentials: ``override`` has an unknown field or a value out of range.
        """
        entry = self.catalogue.get(integration) if integration in self.catalogue else None
        base = entry.limits if entry is not None and entry.limits is not None else RateLimits(
            per_second=self.settings.integration_rate_per_second, burst=self.settings.integration_rate_burst)
        configured = self._deployment.get(integration)
        if configured is not None:
            per_second, per_minute, burst = configured
            base = RateLimits(per_second=base.per_second if per_second is None else per_second,
                              per_minute=base.per_minute if per_minute is None else per_minute,
                              burst=base.burst if burst is None else burst)
        return base.merged(override), entry.shared_limits if entry is not None else None

    # -- acquire ---------------------------------------------------------------------

    def acquire(self, integration: str, connection_id: str, *,
                override: Mapping[str, Any] | RateLimits | None = None) -> float | None:
        """Take a slot for one call of ``connection_id`` of ``integration``.

        Returns:
            None: call now. A number: seconds to wait first (park the step that long,
            then ask again); counted in ``shiftflow_rate_limit_waits_total``.
        """
        wait = self.cooling(integration, connection_id)
        if not wait:
            own, shared = self.limits(integration, override)
            wait = self._take(integration, str(connection_id), own) or (
                self._take(integration, ALL_CONNECTIONS, shared) if shared is not None else 0.0)
        if wait > 0:
            WAITS.labels(self._label(integration)).inc()
            return wait
        return None

    def _take(self, integration: str, connection: str, limits: RateLimits) -> float:
        for scale, limit in limits.buckets():
            wait = self._admission.admit(f"{integration}:{connection}:{scale}", limit)
            if wait > 0:
                return wait
        return 0.0

    # -- cool-downs ------------------------------------------------------------------

    def _keys(self, integration: str, connection_id: str) -> list[str]:
        return [f"{self._prefix}:cooldown:{integration}:{connection_id}",
                f"{self._prefix}:cooldown:{integration}:{ALL_CONNECTIONS}"]

    def cooling(self, integration: str, connection_id: str) -> float:
        """Seconds left of a cool-down on the connection or its integration (0.0: none)."""
        keys = self._keys(integration, str(connection_id))
        if self._client is not None and self._clock() >= self._fallback_until:
            import redis

            try:
                pipe = self._client.pipeline(transaction=False)
                for key in keys:
                    pipe.pttl(key)
                return max([0.0, *(ms / 1000.0 for ms in pipe.execute() if ms and ms > 0)])
            except redis.RedisError as exc:
                self._fall_back(exc)
        return self._local.remaining(keys)

    def cool_down(self, integration: str, connection_id: str, told: Any = None, *,
                  scope: str | None = None) -> float:
        """Record that the service asked us to slow down; returns the seconds to park.

        Parameters:
            told: what the service said: a ``RateLimited`` (or any error with
                ``retry_after``), a number of seconds, or None (no ``Retry-After``: the
                deployment's ``SHIFTFLOW_RATE_LIMIT_COOLDOWN_SECONDS``).
            scope: ``connection`` or ``integration``; the catalogue's ``cooldown_scope``
                when None.

        Returns:
            The seconds until calls may resume: at least ``MIN_COOLDOWN_SECONDS``, at most
            ``SHIFTFLOW_RATE_LIMIT_MAX_COOLDOWN_SECONDS``, and never less than a cool-down
            already running (a shorter answer does not shorten it).
        """
        seconds = getattr(told, "retry_after", told)
        if not isinstance(seconds, int | float) or isinstance(seconds, bool) or not math.isfinite(seconds):
            seconds = self.settings.rate_limit_cooldown_seconds
        seconds = min(max(float(seconds), MIN_COOLDOWN_SECONDS), self.settings.rate_limit_max_cooldown_seconds)
        if scope is None:
            scope = self.catalogue.get(integration).cooldown_scope if integration in self.catalogue else "connection"
        key = self._keys(integration, str(connection_id) if scope == "connection" else ALL_CONNECTIONS)[0]
        COOLDOWNS.labels(self._label(integration)).inc()
        if self._extend is not None and self._clock() >= self._fallback_until:
            import redis

            try:
                return float(self._extend(keys=[key], args=[math.ceil(seconds * 1000)])) / 1000.0
            except redis.RedisError as exc:
                self._fall_back(exc)
        return self._local.extend(key, seconds)

    def _label(self, integration: str) -> str:
        # Workspaces may create integrations of their own: one label for all of them keeps
        # the metric's label set bounded.
        return integration if integration in self.catalogue else "custom"

    def _fall_back(self, exc: Exception) -> None:
        self._fallback_until = self._clock() + FALLBACK_SECONDS
        FALLBACKS.inc()
        log.warning("rate limits: %s; using this process's own cool-downs for %g s", exc, FALLBACK_SECONDS)


_default: tuple[int, Any, IntegrationLimiter] | None = None
_default_lock = threading.Lock()


def default_limiter() -> IntegrationLimiter:
    """The process's limiter: the default catalogue, the process settings, and the
    process's Redis client (``kernel/redis_handle``; made again after a fork)."""
    global _default
    from shiftflow.kernel.redis_handle import get_redis

    client = get_redis()
    with _default_lock:
        if _default is None or _default[0] != os.getpid() or _default[1] is not client:
            _default = (os.getpid(), client, IntegrationLimiter(redis_client=client))
        return _default[2]


def acquire(integration: str, connection_id: str, *,
            override: Mapping[str, Any] | RateLimits | None = None) -> float | None:
    """``IntegrationLimiter.acquire`` on the process's limiter: None, or seconds to park."""
    return default_limiter().acquire(integration, connection_id, override=override)


def cool_down(integration: str, connection_id: str, told: Any = None, *, scope: str | None = None) -> float:
    """``IntegrationLimiter.cool_down`` on the process's limiter: the seconds to park."""
    return default_limiter().cool_down(integration, connection_id, told, scope=scope)
