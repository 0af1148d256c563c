"""Redis: live execution updates (pub/sub), short locks and caches (seed 003).

Redis is never the truth: a lost update or an expired lock must be harmless, because
PostgreSQL's unique keys and status checks are what make work happen once.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis

log = logging.getLogger(__name__)

_client: redis.Redis | None = None
_client_pid = -1
_url = ""

#: Lua: delete the lock only if we still own it (a lock that expired and was taken by
#: someone else must not be released by us).
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"


def configure_redis(url: str) -> None:
    """Set the Redis URL of this process (empty: Redis features are off)."""
    global _url, _client
    _url, _client = url, None


def get_redis() -> redis.Redis | None:
    """This process's client (re-created after a fork), or None when Redis is off."""
    global _client, _client_pid
    if not _url:
        return None
    if _client is None or _client_pid != os.getpid():
        _client = redis.Redis.from_url(_url, socket_timeout=2, socket_connect_timeout=2, health_check_interval=30)
        _client_pid = os.getpid()
    return _client


def channel(execution_id: str) -> str:
    """The pub/sub channel of one execution's updates."""
    return f"shiftflow:execution:{execution_id}"


def publish_update(execution_id: str, update: dict[str, Any]) -> None:
    """Publish a live update; failures are logged, never raised (Redis is not the truth)."""
    client = get_redis()
    if client is None:
        return
    try:
        client.publish(channel(execution_id), json.dumps(update, default=str))
    except redis.RedisError as exc:
        log.warning("live update for %s not published: %s", execution_id, exc)


@contextmanager
def lock(name: str, ttl_ms: int = 30_000) -> Iterator[bool]:
    """A best-effort lock: yields True if taken. An optimisation only, never a guarantee."""
    client = get_redis()
    if client is None:
        yield True
        return
    key, token = f"shiftflow:lock:{name}", uuid.uuid4().hex
    taken = bool(client.set(key, token, nx=True, px=ttl_ms))
    try:
        yield taken
    finally:
        if taken:
            client.eval(_RELEASE, 1, key, token)
