"""Redis: live execution updates (pub/sub), short locks and caches.

Redis is never the truth: a lost update or an expired lock must be harmless, because
PostgreSQL's unique keys and status checks are what make work happen once.
"""

from __future__ import annotations

import atexit
import collections
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
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


#: Live-update messages kept while Redis is slow or down; older ones are dropped first.
MAX_PENDING_UPDATES = 10_000
#: The most messages sent in one pipeline.
UPDATE_BATCH = 500
#: How long the sender lets messages gather before a pipeline (latency of a live update):
#: as long as a log document may wait for its batch (``SHIFTFLOW_LOG_FLUSH_MS``, 100 ms), so
#: the steps an execution finishes meanwhile (a chain in one worker) share one message.
LINGER_SECONDS = 0.1


def _lines(updates: list[dict[str, Any]]) -> str:
    """The JSON of ``updates`` without its brackets: one queued piece of a channel's message."""
    return json.dumps(updates, default=str)[1:-1]


def _coalesce(batch: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """One message per channel of ``batch`` (queued ``(channel, lines)`` pieces): its pieces
    joined in the order they were queued, at the place of the channel's first piece.

    A subscriber reads one execution's channel, so only the order within a channel is
    kept; every line is kept (nothing is merged away, a final state included).
    """
    joined: dict[str, list[str]] = {}
    for name, lines in batch:
        joined.setdefault(name, []).append(lines)
    return [(name, '{"updates": [' + ", ".join(pieces) + "]}") for name, pieces in joined.items()]


class _LiveUpdates:
    """A per-process background sender: message threads queue, one thread publishes.

    Publishing on the message thread cost a Redis round trip per transition, a visible
    share of a worker's CPU (docs/benchmarks.md#the-trigger-path). Queued here, the
    transitions of many messages go out in one pipeline without the message thread waiting
    for Redis, and the transitions of one execution queued since the last send go out as
    one PUBLISH (``_coalesce``: a chained execution's steps, finished within one linger,
    cost one message, not one per step). Live updates are best effort (Redis is not the
    truth): a full queue drops its oldest piece, a failed send is logged and dropped.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queue: collections.deque[tuple[str, str]] = collections.deque()
        self._pid = -1
        self._busy = False
        self._idle = False
        #: PUBLISH commands sent by this process (a count for the benchmark's trace).
        self.published = 0

    def put(self, messages: list[tuple[str, str]]) -> None:
        with self._cond:
            if self._pid != os.getpid():  # a fork inherits the queue, not the thread
                self._queue.clear()
                self._busy = self._idle = False
                self._pid = os.getpid()
                threading.Thread(target=self._run, name="shiftflow-live-updates", daemon=True).start()
                # The sender is a daemon that lingers before it sends: a process that exits
                # normally (API, ingress, CLI) sends what is queued first. A worker process
                # (a multiprocessing child: no atexit) is flushed by ``LiveUpdatesLifecycle``.
                atexit.register(self.flush, 2.0)
            overflow = len(self._queue) + len(messages) - MAX_PENDING_UPDATES
            for _ in range(max(0, overflow)):
                self._queue.popleft()
            self._queue.extend(messages)
            if self._idle:  # wake the sender only when it sleeps on an empty queue
                self._cond.notify()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until the queue is sent (tests, shutdown); False if ``timeout`` passed first."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue or self._busy:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.05))
        return True

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue:
                    self._busy = False
                    self._idle = True
                    self._cond.notify_all()
                    self._cond.wait()
                self._idle = False
                self._busy = True
                if len(self._queue) < UPDATE_BATCH:
                    # Let the transitions of other threads gather: one pipeline for many.
                    self._cond.wait(LINGER_SECONDS)
                batch = [self._queue.popleft() for _ in range(min(UPDATE_BATCH, len(self._queue)))]
            client = get_redis()
            if client is None:
                continue
            messages = _coalesce(batch)
            try:
                pipe = client.pipeline(transaction=False)
                for name, data in messages:
                    pipe.publish(name, data)
                pipe.execute()
                self.published += len(messages)
            except redis.RedisError as exc:
                log.warning("%d live update message(s) not published: %s", len(messages), exc)


_live = _LiveUpdates()


def publish_updates(updates: Sequence[tuple[str, dict[str, Any]]]) -> None:
    """Queue the live updates of one transition for each execution's channel, where they
    are published as ``{"updates": [update, ...]}`` in the order they happened.

    A transition that writes five log lines (created, three inline steps, finished) is
    one PUBLISH, not five; a background thread sends the messages of many transitions in
    one pipeline, and the transitions of one execution queued since its last send in one
    message (``_LiveUpdates``). Never raises, never blocks on Redis.
    """
    if not _url or not updates:
        return
    grouped: dict[str, list[dict[str, Any]]] = {}
    for execution_id, update in updates:
        grouped.setdefault(execution_id, []).append(update)
    _live.put([(channel(execution_id), _lines(lines)) for execution_id, lines in grouped.items()])


def messages_published() -> int:
    """How many live-update messages (PUBLISH commands) this process has sent."""
    return _live.published


def flush_updates(timeout: float = 5.0) -> bool:
    """Wait until queued live updates were sent; False if ``timeout`` passed first."""
    return _live.flush(timeout)


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
