"""Who holds a claimed step, and whether a holder is provably gone.

A worker thread that claims a step writes a *holder token* into the step's row:
``<host>/<pid namespace>:<pid>:<process start>#<n>``. The process keeps the tokens its
threads hold in a local registry (``hold``/``let_go``), so it can tell:

* a token of this process is alive exactly while it is registered (a thread runs it);
* a token of another process on this host is gone when that pid no longer exists or
  belongs to a process started at another time (the pid was reused);
* a token of another host cannot be judged here: its lease decides (``models.engine.leases``).

The pid namespace is part of the host, so containers that share a host name but not a
pid namespace never judge each other's pids.

``StoreWatch`` records when this process last found the database unreachable. A lease
runs out while its holder cannot reach the database to renew it; a judge that saw the
database down waits a full lease after it came back before it believes an expired lease,
so holders that lived through the outage have renewed theirs by then.
"""

from __future__ import annotations

import itertools
import os
import socket
import threading
import time
from dataclasses import dataclass
from enum import Enum


class Holder(Enum):
    """What this process knows about a token's holder."""

    HERE = "held by a live thread of this process"
    GONE = "its process or thread is gone"
    UNKNOWN = "another process: its lease decides"


@dataclass(frozen=True)
class _Identity:
    host: str
    pid: int
    started: str

    @property
    def key(self) -> str:
        return f"{self.host}:{self.pid}:{self.started}"


def _pid_namespace() -> str:
    try:
        link = os.readlink("/proc/self/ns/pid")  # "pid:[4026531836]"
    except OSError:
        return "0"
    return "".join(ch for ch in link if ch.isdigit()) or "0"


def _start_time(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks since boot), "" where /proc is missing,
    None when no such process runs (none, or only its zombie is left: a killed process
    whose parent died too waits for a reaper that may never come)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            stat = handle.read()
    except FileNotFoundError:
        return None
    except OSError:
        return ""
    # The command name (field 2) may hold spaces and parentheses: count after the last ")".
    fields = stat[stat.rfind(")") + 2:].split()
    if fields and fields[0] in ("Z", "X"):
        return None
    return fields[19] if len(fields) > 19 else ""


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_identity: _Identity | None = None
_counter = itertools.count(1)
_lock = threading.Lock()
_held: dict[str, float | None] = {}  # token -> monotonic deadline of its work (None: none)


def identity() -> _Identity:
    """This process's identity (recomputed after a fork)."""
    global _identity, _counter
    pid = os.getpid()
    if _identity is None or _identity.pid != pid:
        host = f"{socket.gethostname()[:60]}/{_pid_namespace()}"
        _identity = _Identity(host, pid, _start_time(pid) or "0")
        _counter = itertools.count(1)
        _held.clear()  # a forked child holds nothing of its parent's
    return _identity


def new_token() -> str:
    """A token for one claim of this process (unique: the process identity and a counter)."""
    me = identity()
    return f"{me.key}#{next(_counter)}"


def hold(token: str) -> None:
    """Register ``token`` as held by a live thread of this process."""
    with _lock:
        _held[token] = None


def set_deadline(token: str, seconds: float | None) -> None:
    """The holder's work must end within ``seconds`` from now (None: no deadline). Past it,
    the process stops renewing the token's lease, so a stuck holder loses its step."""
    with _lock:
        if token in _held:
            _held[token] = None if seconds is None else time.monotonic() + seconds


def let_go(token: str) -> None:
    """The thread no longer holds ``token`` (it finished, or gave up)."""
    with _lock:
        _held.pop(token, None)


def renewable() -> list[str]:
    """The tokens whose leases this process should renew now (held, within their deadline)."""
    now = time.monotonic()
    with _lock:
        return [t for t, deadline in _held.items() if deadline is None or now <= deadline]


def state_of(token: str | None) -> Holder:
    """What this process can tell about the holder of ``token``."""
    if not token or "#" not in token:
        return Holder.UNKNOWN  # not a holder token (older rows kept a message id)
    process, _, _ = token.rpartition("#")
    me = identity()
    if process == me.key:
        with _lock:
            return Holder.HERE if token in _held else Holder.GONE
    host_and_pid, _, started = process.rpartition(":")  # "<host>:<pid>", "<start>"
    host, _, pid_text = host_and_pid.rpartition(":")
    if host != me.host or not pid_text.isdigit():
        return Holder.UNKNOWN
    pid = int(pid_text)
    if not _pid_exists(pid):
        return Holder.GONE
    now_started = _start_time(pid)
    if now_started is None or (now_started and started != "0" and now_started != started):
        return Holder.GONE  # gone meanwhile, or the pid now belongs to another process
    return Holder.UNKNOWN


class StoreWatch:
    """When this process last found the database unreachable, and since when it answers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._up_since: float | None = None

    def ok(self) -> None:
        """The database answered."""
        with self._lock:
            if self._up_since is None:
                self._up_since = time.monotonic()

    def failed(self) -> None:
        """The database could not be reached."""
        with self._lock:
            self._up_since = None

    def up_for(self) -> float:
        """Seconds the database has answered this process without a failure in between
        (0 until it first answered)."""
        with self._lock:
            return 0.0 if self._up_since is None else time.monotonic() - self._up_since


#: The process-wide watch of the relational database.
STORE = StoreWatch()
