"""MongoDB: logs and analytics, written in batches by a per-process background thread.

Postgres is the truth about an execution; MongoDB holds its story (execution_logs),
product analytics (analytics_events) and tool usage (integration_usage), with the
collections and indexes listed in docs/seed-mapping.md.

Why batched: on the MongoDB-wire store used in tests and dev mode, log writes are the
largest CPU user of a step-per-document workflow (docs/architecture.md#components), and one ``insert_many``
per batch costs about as much as one ``insert_one``.

Why per process: pymongo is not fork-safe, so the client is created lazily in the
process that uses it and re-created if the process id changes.

Every document gets its ``_id`` before the first attempt, so a batch retried after a
network error cannot duplicate documents (duplicate-key errors are ignored).

One bad document costs only itself (``kernel.bson_guard``): each is encoded on its own,
one the encoder or the server refuses is replaced by a stand-in that says why (counted as
``replaced``), and nothing but a network error sends a batch back to the buffer.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING, DESCENDING, MongoClient
from pymongo.errors import BulkWriteError, PyMongoError

from shiftflow.kernel import bson_guard, metrics

log = logging.getLogger(__name__)

EXECUTION_LOGS = "execution_logs"
ANALYTICS_EVENTS = "analytics_events"
INTEGRATION_USAGE = "integration_usage"
#: Typed timeline events of long executions and pattern workspaces (``kernel.timeline_types``).
TIMELINE_EVENTS = "timeline_events"

#: Indexes of the three collections. Every index costs each insert, more than the document itself on
#: the MongoDB-wire store of the tests (docs/benchmarks.md#mongodb-wire-store), so
#: there is none that no query reads: tenant-filtered log queries lead with ``executionId``.
INDEXES: dict[str, list[list[tuple[str, int]]]] = {
    EXECUTION_LOGS: [
        [("executionId", ASCENDING), ("timestamp", ASCENDING)],
        [("workflowId", ASCENDING), ("timestamp", DESCENDING)],
    ],
    ANALYTICS_EVENTS: [
        [("workspaceId", ASCENDING), ("timestamp", DESCENDING)],
        [("event", ASCENDING), ("timestamp", DESCENDING)],
    ],
    INTEGRATION_USAGE: [
        [("integrationId", ASCENDING), ("timestamp", DESCENDING)],
        [("workspaceId", ASCENDING), ("timestamp", DESCENDING)],
    ],
    TIMELINE_EVENTS: [
        [("executionId", ASCENDING), ("seq", ASCENDING)],
        [("patternId", ASCENDING), ("seq", ASCENDING)],
    ],
}

#: Documents kept in memory while MongoDB is unreachable; older ones are dropped first.
MAX_BUFFERED = 50_000
#: Past this backlog a writing thread waits for room while MongoDB is reachable. Why: under
#: sustained load the one writer thread of a process fell behind its worker threads, and
#: the backlog grew by thousands of documents a second (about 1.1 kB resident each) up to
#: ``MAX_BUFFERED``, where documents were dropped (docs/engine-cost.md#worker-memory).
HIGH_WATER = 5_000
#: The longest one write waits for room; past it the document is queued anyway.
MAX_WAIT_SECONDS = 5.0
_DUPLICATE_KEY = 11000
#: Write errors about the server's state, not the document: the batch is tried again.
_RETRYABLE_CODES = frozenset({91, 189, 262, 6, 7, 89, 9001, 10107, 11600, 11602, 13435, 13436, 50})


class MongoSink:
    """A batching writer for log and analytics documents.

    Parameters:
        url: the MongoDB URL (``retryWrites=false`` is forced: see docs/architecture.md#components).
        db_name: the database holding the three collections.
        batch_size: the most documents sent in one ``insert_many``.
        flush_ms: the longest a document waits in memory before it is sent.
        max_document_bytes: a larger document is replaced by a stand-in before it is sent.
        high_water: past this many waiting documents, ``write`` waits (at most ``max_wait``
            seconds) for the writer to make room, unless the last send failed.
        max_wait: seconds one ``write`` waits for room at most.
    """

    def __init__(self, url: str, db_name: str, *, batch_size: int = 200, flush_ms: int = 100,
                 max_document_bytes: int = bson_guard.MAX_DOCUMENT_BYTES, high_water: int = HIGH_WATER,
                 max_wait: float = MAX_WAIT_SECONDS) -> None:
        self.url = url
        self.max_document_bytes = max_document_bytes
        self.db_name = db_name
        self.batch_size = batch_size
        self.flush_seconds = flush_ms / 1000.0
        self.high_water = high_water
        self.max_wait = max_wait
        self._buffer: deque[tuple[str, dict[str, Any]]] = deque()
        lock = threading.RLock()
        self._cond = threading.Condition(lock)  # the writer thread waits on it for documents
        self._room = threading.Condition(lock)  # writing threads wait on it for room
        #: Whether the last send reached MongoDB: only then is waiting for room worth it.
        self._sending = True
        self._pid = -1
        self._client: MongoClient[dict[str, Any]] | None = None
        self._thread: threading.Thread | None = None
        self._thread_pid = -1
        self._stopping = False
        self._inflight = 0
        self._indexes_ready = False

    # -- connection -------------------------------------------------------------------
    def client(self) -> MongoClient[dict[str, Any]]:
        """The pymongo client of this process (created after a fork, never inherited)."""
        if self._client is None or self._pid != os.getpid():
            self._client = MongoClient(
                self.url,
                retryWrites=False,
                serverSelectionTimeoutMS=5_000,
                connectTimeoutMS=5_000,
                socketTimeoutMS=15_000,
                tz_aware=False,
            )
            self._pid = os.getpid()
            self._indexes_ready = False
        return self._client

    def database(self) -> Any:
        """The pymongo database holding the log collections."""
        return self.client()[self.db_name]

    def ensure_indexes(self) -> None:
        """Create the collections' indexes (idempotent)."""
        db = self.database()
        for collection, indexes in INDEXES.items():
            for keys in indexes:
                db[collection].create_index(keys)
        self._indexes_ready = True

    # -- writing ----------------------------------------------------------------------
    def write(self, collection: str, document: dict[str, Any]) -> None:
        """Queue one document; it is sent within ``flush_ms``.

        Past ``high_water`` waiting documents it waits (``max_wait`` at most) for the writer
        to make room, so a writer slower than the worker threads slows them instead of
        filling memory; while MongoDB is unreachable it never waits.
        """
        document.setdefault("_id", ObjectId())
        with self._cond:
            self._start_thread()
            if len(self._buffer) >= self.high_water and self._sending:
                deadline = time.monotonic() + self.max_wait
                self._cond.notify()
                while len(self._buffer) >= self.high_water and self._sending and not self._stopping:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._room.wait(remaining)
            if len(self._buffer) >= MAX_BUFFERED:
                self._buffer.popleft()
                metrics.LOG_DOCUMENTS.labels("dropped").inc()
            self._buffer.append((collection, document))
            if len(self._buffer) >= self.batch_size:
                self._cond.notify()

    def buffered(self) -> int:
        """Documents waiting to be sent (the batch being sent not counted)."""
        with self._cond:
            return len(self._buffer)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued document was sent; False if ``timeout`` passed first."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._cond.notify()
            while self._buffer or self._inflight:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.05))
                self._cond.notify()
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Flush, stop the writer thread and close the client."""
        self.flush(timeout)
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            self._room.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._client is not None and self._pid == os.getpid():
            self._client.close()
        self._client = None
        self._thread = None
        self._stopping = False

    def _start_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive() or self._thread_pid != os.getpid():
            self._stopping = False
            self._thread_pid = os.getpid()
            self._thread = threading.Thread(target=self._run, name="shiftflow-mongo-writer", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._buffer and not self._stopping:
                    self._cond.wait(self.flush_seconds)
                if self._stopping and not self._buffer:
                    return
                batch = [self._buffer.popleft() for _ in range(min(self.batch_size, len(self._buffer)))]
                self._inflight = len(batch)
                if batch:
                    self._room.notify_all()
            try:
                if batch:
                    self._send(batch)
            except PyMongoError as exc:
                # MongoDB is not the truth: keep the documents and try again shortly.
                log.warning("MongoDB write failed, will retry: %s", str(exc)[:500])
                with self._cond:
                    self._buffer.extendleft(reversed(batch))
                    self._inflight = 0
                    self._sending = False  # writing threads stop waiting for room
                    self._room.notify_all()
                time.sleep(min(1.0, self.flush_seconds * 5))
                continue
            except Exception:
                # Not a network error, so retrying would fail the same way; losing this batch
                # is bad, a dead writer (every later document lost) is worse.
                log.exception("MongoDB writer dropped a batch of %d documents", len(batch))
                metrics.LOG_DOCUMENTS.labels("dropped").inc(len(batch))
            if batch:
                with self._cond:
                    self._inflight = 0
                    self._sending = True
                    self._cond.notify_all()

    def _send(self, batch: list[tuple[str, dict[str, Any]]]) -> None:
        if not self._indexes_ready:
            self.ensure_indexes()
        by_collection: dict[str, list[dict[str, Any]]] = {}
        for collection, document in batch:
            by_collection.setdefault(collection, []).append(document)
        db = self.database()
        for collection, documents in by_collection.items():
            encoded = []
            for document in documents:
                raw, reason = bson_guard.encode(document, self.max_document_bytes)
                if reason is not None:
                    log.warning("log document %s replaced by a stand-in: %s", document.get("_id"), reason)
                    metrics.LOG_DOCUMENTS.labels("replaced").inc()
                encoded.append(raw)
            refused, lost = self._insert(db[collection], encoded, documents), 0
            if refused:
                # Refused by the server (too large for it, invalid for it): once more as
                # stand-ins; a stand-in refused too is dropped, never retried forever.
                standins = [bson_guard.stand_in(documents[i], reason) for i, reason in refused]
                metrics.LOG_DOCUMENTS.labels("replaced").inc(len(standins))
                again = self._insert(db[collection], [bson_guard.encode(s)[0] for s in standins], standins)
                if again:
                    log.error("MongoDB refused %d log stand-ins: %s", len(again), again[0][1])
                    metrics.LOG_DOCUMENTS.labels("dropped").inc(len(again))
                    lost = len(again)
            metrics.LOG_DOCUMENTS.labels("written").inc(len(documents) - lost)

    @staticmethod
    def _insert(collection: Any, encoded: list[Any], documents: list[dict[str, Any]]) -> list[tuple[int, str]]:
        """Insert ``encoded`` (unordered); return ``(index, reason)`` of each document the
        server refused for what it holds. Duplicates (a batch sent twice) are success."""
        try:
            collection.insert_many(encoded, ordered=False)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if any(e.get("code") in _RETRYABLE_CODES for e in errors):
                raise
            return [(int(e["index"]), f"refused by MongoDB: {str(e.get('errmsg', ''))[:300]}")
                    for e in errors if e.get("code") != _DUPLICATE_KEY]
        return []


_sink: MongoSink | None = None


def configure_sink(sink: MongoSink | None) -> MongoSink | None:
    """Install the process-wide sink (worker boot, dev mode, tests)."""
    global _sink
    _sink = sink
    return sink


def get_sink() -> MongoSink | None:
    """The process-wide sink, or None when logging to MongoDB is off."""
    return _sink
