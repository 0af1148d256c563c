"""One holder at a time per name: in this process, or across every process through Redis.

The OAuth2 client refreshes a connection's token under such a lock, so that two workers
whose tokens expire together make one token request: with refresh-token rotation, the
second request would present a refresh token the first one just used up, and the
provider would answer ``invalid_grant`` (or, with reuse detection, revoke the whole
grant).

``LocalLocks`` serve one process (dev mode). ``RedisLocks`` hold a key set with ``NX`` and
a TTL (``PX``), so a holder that dies frees the lock when the TTL runs out; release
deletes the key only if it still holds our token. Each process also takes an in-process
lock first, so its own threads queue there rather than polling Redis. Waiting polls with
a growing pause (10 ms, doubling, at most 100 ms) until ``wait`` seconds have passed.

Redis is not optional once configured: when it cannot be reached, ``hold`` raises
``ToolUnavailable`` rather than falling back to a lock other processes cannot see.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from shiftflow.kernel.errors import ToolUnavailable

log = logging.getLogger(__name__)

_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"
#: Key prefix of the locks in Redis.
PREFIX = "shiftflow:lock"
_FIRST_PAUSE, _MAX_PAUSE = 0.01, 0.1


class LockTimeout(ToolUnavailable):
    """Raised when another holder kept the lock longer than the caller would wait."""


class Locks(Protocol):
    """Named locks; ``hold`` blocks at most ``wait`` seconds."""

    def hold(self, name: str, wait: float) -> Any:
        """A context manager holding the lock ``name``.

        Raises:
            LockTimeout: not taken within ``wait`` seconds.
            ToolUnavailable: the lock store cannot be reached.
        """
        ...


class LocalLocks:
    """Locks of this process (threads), one per name, made on first use."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    def _lock(self, name: str) -> threading.Lock:
        with self._guard:
            lock = self._locks.get(name)
            if lock is None:
                if len(self._locks) >= 10_000:
                    # Forget the idle ones; a held lock stays (its holder keeps a reference).
                    self._locks = {k: v for k, v in self._locks.items() if v.locked()}
                lock = self._locks[name] = threading.Lock()
            return lock

    @contextmanager
    def hold(self, name: str, wait: float) -> Iterator[None]:
        """See ``Locks.hold``."""
        lock = self._lock(name)
        if not lock.acquire(timeout=max(0.0, wait)):
            raise LockTimeout(f"lock {name!r} is held by another thread of this process for over {wait:g} s")
        try:
            yield
        finally:
            lock.release()


class RedisLocks:
    """Locks shared by every process through Redis (see the module docstring).

    Parameters:
        client: a ``redis.Redis``.
        ttl: seconds a lock lives if its holder never releases it (longer than any
            holder's work, so that a live holder is never overtaken).
        prefix: key prefix (tests use their own).
    """

    def __init__(self, client: Any, *, ttl: float, prefix: str = PREFIX) -> None:
        self._client = client
        self._ttl_ms = max(1, int(ttl * 1000))
        self._prefix = prefix
        self._local = LocalLocks()

    @contextmanager
    def hold(self, name: str, wait: float) -> Iterator[None]:
        """See ``Locks.hold``."""
        import redis

        deadline = time.monotonic() + wait
        with self._local.hold(name, wait):
            key, token = f"{self._prefix}:{name}", uuid.uuid4().hex
            pause = _FIRST_PAUSE
            try:
                while not self._client.set(key, token, nx=True, px=self._ttl_ms):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise LockTimeout(f"lock {name!r} is held by another process for over {wait:g} s")
                    time.sleep(min(pause, left))
                    pause = min(_MAX_PAUSE, pause * 2)
            except redis.RedisError as exc:
                raise ToolUnavailable(f"lock store unavailable: {exc}") from None
            try:
                yield
            finally:
                try:
                    self._client.eval(_RELEASE, 1, key, token)
                except redis.RedisError as exc:
                    # The work under the lock is done; the TTL frees the key.
                    log.warning("lock %r not released (%s); it expires by itself", name, exc)
