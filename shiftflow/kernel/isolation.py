"""Run a suspect step alone in its worker process, so a process death can be pinned on it.

When a worker process dies (OOM kill, segfault, ``os._exit``), every step it had claimed
comes back counted as "delivered without finishing", the innocent ones too. A step that
was RUNNING when its process died is therefore a suspect: its next delivery waits until
no other step runs in this process, and runs alone (no other step starts meanwhile). A
death during a solo run is the suspect's own doing, so the delivery limit counts only
deaths a step can be blamed for (plus, at most, the one shared death that made it a
suspect), and a poison message no longer drags its neighbours into quarantine.

A readers-writer lock: ordinary steps share it, a suspect takes it exclusively; a
waiting suspect blocks new ordinary steps, so it cannot starve.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager


class _SoloLock:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._solo = False
        self._waiting_solo = 0

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._solo or self._waiting_solo:
                self._cond.wait()
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                self._cond.notify_all()

    @contextmanager
    def solo(self) -> Iterator[None]:
        with self._cond:
            self._waiting_solo += 1
            while self._solo or self._shared:
                self._cond.wait()
            self._waiting_solo -= 1
            self._solo = True
        try:
            yield
        finally:
            with self._cond:
                self._solo = False
                self._cond.notify_all()


_lock = _SoloLock()


def guard(suspect: bool) -> AbstractContextManager[None]:
    """Hold while running a step: shared for ordinary steps, exclusive for a suspect."""
    return _lock.solo() if suspect else _lock.shared()
