"""Recycling a worker process: after N messages, or above a memory ceiling.

A long-lived worker process can grow (a leaking library, fragmentation after a large
payload). ``Recycler`` counts the messages this process finished and reads its resident
memory after each; past ``SHIFTFLOW_WORKER_MAX_MESSAGES`` or ``SHIFTFLOW_WORKER_MAX_MEMORY_MB``
it asks the process to stop exactly as SIGTERM does (``consumers.process``: no new
message, running ones finish, prefetched ones return to RabbitMQ unacknowledged), and the
process exits with ``EXIT_RECYCLED``, which its supervisor answers with a fresh process
at once (not a crash: no backoff). Nothing is lost: a message is acknowledged only after
it was processed, so whatever the old process had not finished is delivered again.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from dramatiq.middleware import Middleware

log = logging.getLogger("shiftflow.workers")

#: The exit code of a recycled worker process (the supervisor replaces it at once).
EXIT_RECYCLED = 3
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_mb() -> float:
    """This process's resident memory in MiB (Linux ``/proc/self/statm``; 0 elsewhere)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE / (1024 * 1024)
    except (OSError, IndexError, ValueError):
        return 0.0


class Recycler(Middleware):
    """Sets ``stop`` (and ``reason``) once this process is due for recycling."""

    def __init__(self, stop: threading.Event, max_messages: int, max_memory_mb: int,
                 memory: Callable[[], float] = resident_mb) -> None:
        self.stop = stop
        self.max_messages = max_messages
        self.max_memory_mb = max_memory_mb
        self.memory = memory
        self.processed = 0
        self.reason = ""
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        """Whether either limit is set."""
        return bool(self.max_messages or self.max_memory_mb)

    def after_process_message(self, broker: Any, message: Any, *, result: Any = None,
                              exception: BaseException | None = None) -> None:
        """Count a finished message; stop when a limit is passed."""
        with self._lock:
            self.processed += 1
            if self.reason:
                return
            if self.max_messages and self.processed >= self.max_messages:
                self.reason = f"{self.processed} messages processed (SHIFTFLOW_WORKER_MAX_MESSAGES)"
            elif self.max_memory_mb and (used := self.memory()) > self.max_memory_mb:
                self.reason = f"{used:.0f} MiB resident (SHIFTFLOW_WORKER_MAX_MEMORY_MB={self.max_memory_mb})"
            else:
                return
        log.info("Recycling worker process %d: %s", os.getpid(), self.reason)
        self.stop.set()

    after_skip_message = after_process_message
