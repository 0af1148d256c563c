"""``shiftflow workers`` as a subprocess in its own session: started, killed, restarted.

The whole pool (its supervisor, worker processes and forks) can be SIGKILLed at once, and
restarted the way systemd ``Restart=always`` would. A worker process that dies alone is
replaced by the pool's supervisor (``deaths`` lists their exit codes).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

SHIFTFLOW = str(Path(sys.executable).with_name("shiftflow"))


class WorkerPool:
    """``shiftflow workers`` in its own process group, killable and restartable.

    The pool's supervisor replaces a worker process that died (``deaths``) and keeps
    running; ``supervised`` restarts the whole pool should the supervisor itself exit.
    """

    def __init__(
        self,
        env: dict[str, str],
        log_dir: Path,
        *,
        queues: Sequence[str] = ("triggers", "steps", "tools"),
        processes: int = 2,
        threads: int = 4,
    ) -> None:
        self.env = env
        self.log_dir = log_dir
        self.queues = tuple(queues)
        self.processes = processes
        self.threads = threads
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.kills = 0
        self.exits: list[int] = []
        #: Seconds from each start to every worker process being ready.
        self.boot_seconds: list[float] = []
        self._log: Path | None = None
        self._started_at = 0.0

    def start(self) -> None:
        """Start the pool (a new log file per start)."""
        self.starts += 1
        self._started_at = time.monotonic()
        self._log = self.log_dir / f"workers-{self.starts:03d}.log"
        with self._log.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    SHIFTFLOW,
                    "workers",
                    "--queues",
                    *self.queues,
                    "--processes",
                    str(self.processes),
                    "--threads",
                    str(self.threads),
                ],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def ready(self) -> bool:
        """True once every worker process of the current start said it is ready."""
        if self._log is None or not self._log.exists():
            return False
        return (
            self._log.read_text(errors="replace").count("Worker process is ready for action")
            >= self.processes
        )

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until the pool consumes.

        Raises:
            AssertionError: it exited or did not get ready in time (with its log).
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready():
                self.boot_seconds.append(round(time.monotonic() - self._started_at, 2))
                return
            if self.proc is not None and self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"worker pool not ready (exit {self.poll()}):\n{self.log_tail()}")

    def poll(self) -> int | None:
        """The pool's exit code, or None while it runs."""
        return None if self.proc is None else self.proc.poll()

    def kill(self) -> None:
        """SIGKILL the whole process group (master, workers, forks) and reap the master."""
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        self.kills += 1

    def reap_exit(self) -> int | None:
        """If the pool exited on its own, record its code, stop any straggler of its group
        and return the code; None while it runs."""
        code = self.poll()
        if code is None:
            return None
        assert self.proc is not None
        try:  # the master is gone; a worker still shutting down must not linger
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.exits.append(code)
        self.proc = None
        return code

    def stop(self) -> None:
        """SIGTERM the pool (graceful), SIGKILL it after 30 s."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with_group(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                with_group(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        with_group(self.proc.pid, signal.SIGKILL)  # forks left behind by a killed master

    def deaths(self) -> list[int]:
        """Exit codes of the worker processes that died and were replaced by the pool's
        supervisor, then those of the pool itself (its own exits), in order."""
        codes = re.findall(r"worker process \d+ \(pid \d+\) exited with code (-?\d+)", self.logs())
        return [int(code) for code in codes] + self.exits

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the current start's log."""
        if self._log is None or not self._log.exists():
            return "(no log)"
        return self._log.read_text(errors="replace")[-chars:]

    def logs(self) -> str:
        """Every start's log, concatenated."""
        return "".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("workers-*.log")))

    @contextmanager
    def supervised(self, interval: float = 0.1) -> Iterator[None]:
        """Restart the pool whenever it exits on its own (a crash), until the block ends."""
        stop = threading.Event()

        def watch() -> None:
            while not stop.wait(interval):
                if self.reap_exit() is not None:
                    self.start()

        thread = threading.Thread(target=watch, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(5)


def with_group(pid: int, sig: signal.Signals) -> None:
    """Send ``sig`` to process group ``pid``; no error if it is gone."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
