"""A barrier for tests with an in-process Dramatiq worker: every message handled, none in flight.

A test that must show that something did *not* happen (a duplicate made no second
execution, a refused result planned no further step) cannot wait a fixed time and look:
on a slow machine the suspect message is still queued when it looks, and the test passes
while proving nothing. ``MessageTally``, added to the worker's broker before the worker
starts, counts instead:

* every message this process enqueued on the broker (``send`` from the test, from the
  actors, from a timer tick), by message id; a delayed message counts from the moment it is
  enqueued on its delay queue (a retry too), so it is awaited while it waits there;
* every message the worker started, and finished (processed or skipped), by actor name
  and by message id (``handled``: ``send`` returns the id).

``settled()`` is true once every message enqueued here has finished and nothing is being
processed: a positive signal, read after the suspect messages were sent. Messages
published by another process (the ingress's own publisher) are not enqueued here: wait
for them by count (``finished(actor) >= n``) first, then for ``settled()``.
"""

from __future__ import annotations

import collections
import threading
from typing import Any

import dramatiq


class MessageTally(dramatiq.Middleware):
    """Counts enqueued, running and finished messages of one broker (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Per message id: copies enqueued here and not finished yet; copies waiting on a
        # delay queue (moved to the work queue by the worker, which enqueues them again).
        self._pending: collections.Counter[str] = collections.Counter()
        self._delayed: collections.Counter[str] = collections.Counter()
        self._running: collections.Counter[str] = collections.Counter()
        self._finished: collections.Counter[str] = collections.Counter()
        self._handled: set[str] = set()

    def after_enqueue(self, broker: dramatiq.Broker, message: dramatiq.Message[Any], delay: int | None) -> None:
        """Count a message enqueued here; a delayed one is awaited from its delay queue on."""
        with self._lock:
            if delay is not None:
                self._delayed[message.message_id] += 1
            elif self._delayed[message.message_id] > 0:  # the worker moving it off the delay queue
                self._delayed[message.message_id] -= 1
                self._pending[message.message_id] += 1
            else:
                self._pending[message.message_id] += 1

    def before_process_message(self, broker: dramatiq.Broker, message: dramatiq.Message[Any]) -> None:
        """A worker thread took the message."""
        with self._lock:
            self._running[message.message_id] += 1

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: dramatiq.Message[Any],
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        """The message was handled, whatever the outcome (a retry was enqueued, delayed)."""
        self._done(message)

    def after_skip_message(self, broker: dramatiq.Broker, message: dramatiq.Message[Any]) -> None:
        """A middleware skipped the message: handled too."""
        self._done(message)

    def _done(self, message: dramatiq.Message[Any]) -> None:
        with self._lock:
            self._running[message.message_id] -= 1
            self._pending[message.message_id] -= 1  # below zero for a message from elsewhere
            self._finished[message.actor_name] += 1
            self._handled.add(message.message_id)

    def finished(self, actor_name: str | None = None) -> int:
        """Messages finished so far, of ``actor_name`` (e.g. ``triggers.start``) or in all."""
        with self._lock:
            return self._finished[actor_name] if actor_name else sum(self._finished.values())

    def handled(self, message_id: str) -> bool:
        """True once the message with this id (``send`` returns it) was handled at least once."""
        with self._lock:
            return message_id in self._handled

    def settled(self) -> bool:
        """True when every message enqueued here has finished and none is being processed."""
        with self._lock:
            return (
                all(n <= 0 for n in self._pending.values())
                and not any(self._delayed.values())
                and not any(self._running.values())
            )
