"""ShiftFlow's own processes in the fault scenarios: ``shiftflow ingress`` and ``shiftflow workers``.

Each runs as a subprocess in a session of its own (so its whole group can be signalled),
with the environment of the scenario's servers, under a supervisor thread that restarts
it whenever it exits, as the shipped systemd units do (``Restart=always``,
deploy/systemd). The restarts are counted: a pool that stops because one of its
processes died shows up as a restart.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

SHIFTFLOW = str(Path(sys.executable).with_name("shiftflow"))

#: systemd's default ``RestartSec``.
RESTART_SECONDS = 0.1

_READY = re.compile(r"\[PID (\d+)\][^\n]*Worker process is ready for action")


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


class ShiftFlowProcess:
    """One ShiftFlow command, restartable, with one log file per start.

    Parameters:
        name: a label for logs and reports (``ingress``, ``workers``).
        args: the arguments after ``shiftflow``.
        env: the complete environment.
        log_dir: where ``<name>-<start>.log`` files go.
        ready: a check of the current start (``self``) that is true once it serves.
    """

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        env: dict[str, str],
        log_dir: Path,
        ready: Callable[[ShiftFlowProcess], bool],
    ) -> None:
        self.name = name
        self.args = list(args)
        self.env = env
        self.log_dir = log_dir
        self._ready = ready
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        #: Exit codes of the starts that ended on their own (the supervisor restarted them),
        #: and when each was seen (epoch seconds).
        self.exits: list[int] = []
        self.exit_times: list[float] = []
        self._lock = threading.Lock()
        self._supervising = threading.Event()
        self._supervisor: threading.Thread | None = None

    @property
    def log(self) -> Path:
        """The current start's log file."""
        return self.log_dir / f"{self.name}-{self.starts:03d}.log"

    def start(self) -> None:
        """Start the command (a new log file)."""
        with self._lock:
            self.starts += 1
            with self.log.open("wb") as log:
                self.proc = subprocess.Popen(
                    [SHIFTFLOW, *self.args],
                    env=self.env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )

    def ready(self) -> bool:
        """True once the current start serves."""
        return self.proc is not None and self.proc.poll() is None and self._ready(self)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until the current start serves.

        Raises:
            AssertionError: it did not within ``timeout`` (with its log).
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready():
                return
            time.sleep(0.1)
        raise AssertionError(f"{self.name} not ready after {timeout:g}s:\n{self.log_tail()}")

    def supervise(self) -> None:
        """Restart the command whenever it exits, until ``stop``."""
        self._supervising.set()

        def watch() -> None:
            while self._supervising.is_set():
                proc = self.proc
                if proc is not None and proc.poll() is not None and self._supervising.is_set():
                    self.exits.append(proc.returncode)
                    self.exit_times.append(time.time())
                    _signal_group(proc.pid, signal.SIGKILL)  # stragglers of the dead master
                    time.sleep(RESTART_SECONDS)
                    if self._supervising.is_set():
                        self.start()
                time.sleep(0.05)

        self._supervisor = threading.Thread(target=watch, name=f"supervise-{self.name}", daemon=True)
        self._supervisor.start()

    @property
    def restarts(self) -> int:
        """How many times the supervisor restarted the command."""
        return len(self.exits)

    def worker_pids(self) -> list[int]:
        """PIDs of the pool's worker processes that said they were ready and still live."""
        if self.proc is None:
            return []
        found = [int(p) for p in _READY.findall(self.log.read_text(errors="replace"))]
        return [pid for pid in found if _alive(pid)]

    def stop(self) -> None:
        """Stop supervising; SIGTERM the group, SIGKILL it after 30 s."""
        self._supervising.clear()
        if self._supervisor is not None:
            self._supervisor.join(5)
        with self._lock:
            proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait(10)
        _signal_group(proc.pid, signal.SIGKILL)  # forks a killed master left behind

    def log_bytes(self) -> int:
        """Bytes written to every log of this command."""
        return sum(p.stat().st_size for p in self.log_dir.glob(f"{self.name}-*.log"))

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the current start's log."""
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def workers_ready(processes: int) -> Callable[[ShiftFlowProcess], bool]:
    """A readiness check for a pool: every worker process of the current start is ready."""

    def check(proc: ShiftFlowProcess) -> bool:
        try:
            text = proc.log.read_text(errors="replace")
        except OSError:
            return False
        return len(_READY.findall(text)) >= processes

    return check


def http_ready(url: str) -> Callable[[ShiftFlowProcess], bool]:
    """A readiness check: ``url`` answers 200."""
    import httpx

    def check(proc: ShiftFlowProcess) -> bool:
        try:
            return httpx.get(url, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    return check
