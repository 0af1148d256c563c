"""Process logging that stays readable while a store is down.

During a 30-second PostgreSQL outage a worker pool once wrote 1.1 million lines (72 MB):
Dramatiq logs every failed message with its full traceback and its whole payload, once
per retry, and the timer loop did the same four times a second. ``RepeatFilter`` (on
every handler of a process, ``configure_logging``) keeps what an operator needs:

* a record carrying a **known transient error** (the store or the broker unreachable,
  ``is_transient``) becomes one line, without its traceback, naming the error (and the
  message by id and actor, not by its payload);
* a record **identical** to one written less than ``every`` seconds ago (same logger,
  level and message template, same error type and text; for a record without an error,
  the same rendered text) is counted, not written; the next one written says how many
  were left out;
* an **unexpected** error keeps its traceback (its repeats are counted the same way).

Records below WARNING without an error pass untouched (Dramatiq's one ``Retrying message``
line per retry stays the one line of a transient failure).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

#: The format of every ShiftFlow process (Dramatiq's, so pool logs read as before).
LOG_FORMAT = "[%(asctime)s] [PID %(process)d] [%(threadName)s] [%(name)s] [%(levelname)s] %(message)s"
#: Distinct repeated records remembered at most (the oldest is forgotten first).
MAX_KEYS = 1024


def _transient_types() -> tuple[type[BaseException], ...]:
    """Errors that say a store or the broker cannot be reached now (not that the work is wrong)."""
    import peewee
    import pika.exceptions
    import psycopg2
    from dramatiq.errors import BrokerConnectionError
    from playhouse.pool import MaxConnectionsExceeded
    from pymongo.errors import ConnectionFailure
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    from shiftflow.kernel.errors import TransientError

    return (
        TransientError,
        peewee.OperationalError,
        peewee.InterfaceError,
        psycopg2.OperationalError,
        psycopg2.InterfaceError,
        MaxConnectionsExceeded,
        ConnectionFailure,
        RedisConnectionError,
        RedisTimeoutError,
        pika.exceptions.AMQPConnectionError,
        BrokerConnectionError,
        ConnectionError,
        TimeoutError,
    )


_TRANSIENT: tuple[type[BaseException], ...] | None = None


def is_transient(exc: BaseException) -> bool:
    """True for an error of a store or the broker being unreachable (worth one line, no traceback)."""
    global _TRANSIENT
    if _TRANSIENT is None:
        _TRANSIENT = _transient_types()
    return isinstance(exc, _TRANSIENT)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else ""


def _short(arg: Any) -> Any:
    # A Dramatiq message renders as its whole call (payload included); its id and actor
    # are enough to find it.
    message_id, actor = getattr(arg, "message_id", None), getattr(arg, "actor_name", None)
    if isinstance(message_id, str) and isinstance(actor, str):
        return f"{actor}:{message_id}"
    return arg


class RepeatFilter(logging.Filter):
    """Shortens transient-error records and counts repeats (see the module docstring).

    Parameters:
        every: seconds during which an identical record is counted instead of written;
            0 writes every record (transient errors are still one line).
        clock: monotonic seconds (tests pass their own).
    """

    def __init__(self, every: float, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.every = every
        self.clock = clock
        self._lock = threading.Lock()
        # key -> [time the last written one was written, repeats left out since]
        self._seen: OrderedDict[tuple[Any, ...], list[float]] = OrderedDict()

    def filter(self, record: logging.LogRecord) -> bool:
        """Decide once per record (a record may reach several handlers)."""
        decided = record.__dict__.get("_shiftflow_repeat")
        if decided is not None and decided[0] is self:
            return bool(decided[1])
        keep = self._decide(record)
        record.__dict__["_shiftflow_repeat"] = (self, keep)
        return keep

    def _decide(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None and record.levelno < logging.WARNING:
            return True
        if exc is not None:
            key: tuple[Any, ...] = (record.name, record.levelno, str(record.msg), type(exc).__name__,
                                    _first_line(exc))
            if isinstance(record.args, tuple):
                record.args = tuple(_short(a) for a in record.args)
            if is_transient(exc):
                self._one_line(record, exc)
        else:
            key = (record.name, record.levelno, record.getMessage())
        if self.every <= 0:
            return True
        now = self.clock()
        with self._lock:
            seen = self._seen.get(key)
            if seen is not None and now - seen[0] < self.every:
                seen[1] += 1
                return False
            if seen is not None:
                self._seen.move_to_end(key)
            else:
                seen = self._seen[key] = [now, 0]
                while len(self._seen) > MAX_KEYS:
                    self._seen.popitem(last=False)
            since, left_out = seen[0], int(seen[1])
            seen[0], seen[1] = now, 0
        if left_out:
            record.msg = f"{record.getMessage()} ({left_out} more like this in the last {now - since:.0f} s not logged)"
            record.args = None
        return True

    @staticmethod
    def _one_line(record: logging.LogRecord, exc: BaseException) -> None:
        record.msg = f"{record.getMessage()} [{type(exc).__name__}: {_first_line(exc)}]"
        record.args = None
        record.exc_info = None
        record.exc_text = None


def install(every: float, handlers: list[logging.Handler] | None = None) -> RepeatFilter:
    """Add one ``RepeatFilter`` to ``handlers`` (default: every handler of the root logger)."""
    repeat = RepeatFilter(every)
    for handler in handlers if handlers is not None else logging.getLogger().handlers:
        if not any(isinstance(f, RepeatFilter) for f in handler.filters):
            handler.addFilter(repeat)
    return repeat


def configure_logging(level: str, repeat_seconds: float, stream: Any = None) -> RepeatFilter:
    """Log to ``stream`` (stderr) in ``LOG_FORMAT`` at ``level``, through a ``RepeatFilter``.

    pika's own logger is kept to CRITICAL, as Dramatiq's CLI does: its connection errors
    reach the log through Dramatiq's and ShiftFlow's own lines.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("pika").setLevel(logging.CRITICAL)
    return install(repeat_seconds, [handler])
