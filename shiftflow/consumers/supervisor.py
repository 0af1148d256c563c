"""The supervisor of a worker pool: ``shiftflow workers`` replaces a dead process, alone.

Dramatiq's own master (``dramatiq`` CLI) stops the whole pool when one worker process
dies: it sends SIGTERM to the others, waits for them to drain, and exits with the dead
one's code, so a SIGKILLed or crashed process (the OOM killer, a poison message, a
failpoint) costs every process of the pool its work until something outside restarts
it. This supervisor runs the same processes (``consumers.process``: N worker processes,
and the forks the pool's middleware asks for: the timer loop, the metrics exporter) and
when one exits on its own it starts a replacement of that one only:

* at once, unless it keeps dying young (within ``STABLE_SECONDS`` of its start, again and
  again): then after a delay of 1 s doubling to ``MAX_BACKOFF_SECONDS``, so a process that
  cannot boot does not spin;
* a worker's live gauges are dropped from the pool's metrics (``mark_process_dead``: its
  in-progress count no longer counts), while its counter and histogram files stay in the
  multiprocess directory, so the exporter's sums never go back (no counter reset, no
  family that disappears);
* a process that exits with code 2 (settings or usage: a restart cannot fix it) stops the
  pool with code 2.
* a worker that exits with code 3 was recycled (``consumers.recycle``: N messages or its
  memory ceiling, after finishing its running messages): a fresh one starts at once.

SIGTERM, SIGINT or SIGHUP stop the pool: SIGTERM to every process, which let their
running messages finish (up to the shutdown timeout), then exit 0. A second signal
kills what is left at once. Processes get SIGTERM if the supervisor itself dies.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shiftflow.consumers.pools import Pool
from shiftflow.consumers.process import EXIT_USAGE, SHUTDOWN_TIMEOUT_SECONDS
from shiftflow.consumers.recycle import EXIT_RECYCLED
from shiftflow.kernel import metrics
from shiftflow.kernel.settings import Settings

log = logging.getLogger("shiftflow.workers")

#: A process that ran this long before it died is replaced at once (its delay starts over).
STABLE_SECONDS = 10.0
#: The first and the longest delay before replacing a process that keeps dying young.
MIN_BACKOFF_SECONDS, MAX_BACKOFF_SECONDS = 1.0, 30.0
#: How often the supervisor looks at its processes.
POLL_SECONDS = 0.1


@dataclass
class Child:
    """One supervised process: its command line, and its current run."""

    name: str
    argv: list[str]
    worker: bool
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    due: float = 0.0
    delay: float = 0.0
    young: int = 0  # deaths in a row within STABLE_SECONDS of the start
    replaced: int = 0
    exits: list[int] = field(default_factory=list)


def fork_paths(settings: Settings) -> list[str]:
    """``module:function`` of every fork the pool's middleware asks for (as Dramatiq's canteen)."""
    from shiftflow.consumers.boot import consumer_middleware
    from shiftflow.kernel.broker import middleware_for

    return [
        f"{fork.__module__}:{fork.__name__}"
        for middleware in middleware_for(settings, extra=consumer_middleware(settings))
        for fork in middleware.forks
    ]


class Supervisor:
    """Runs a pool's processes and replaces any that dies; ``run`` until a stop signal.

    Parameters:
        pool: queues, process count and threads.
        settings: the pool's settings (metrics directory, forks).
        python: the interpreter of the child processes.
        env: their environment (default: this process's).
        shutdown_timeout: seconds a stopping worker may spend finishing its messages.
        clock: monotonic seconds.
    """

    def __init__(
        self,
        pool: Pool,
        settings: Settings,
        *,
        python: str = sys.executable,
        env: dict[str, str] | None = None,
        shutdown_timeout: float = SHUTDOWN_TIMEOUT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pool = pool
        self.settings = settings
        self.env = dict(os.environ if env is None else env)
        # The pool's processes read their settings from the environment: hand them the
        # metrics port and directory this pool decided on (pools file, flag or defaults).
        self.env["SHIFTFLOW_METRICS_PORT"] = str(settings.metrics_port)
        if settings.metrics_dir:
            # Every process of the pool writes its metric files there, forks included.
            self.env["PROMETHEUS_MULTIPROC_DIR"] = settings.metrics_dir
            self.env["SHIFTFLOW_METRICS_DIR"] = settings.metrics_dir
        self.shutdown_timeout = shutdown_timeout
        self.clock = clock
        base = [python, "-m", "shiftflow.consumers.process", "--parent", str(os.getpid())]
        self.children = [
            Child(f"worker process {n}", [*base, "worker", "--queues", *pool.queues, "--threads",
                                          str(pool.threads), "--shutdown-timeout", str(shutdown_timeout)], True)
            for n in range(pool.processes)
        ] + [Child(f"fork {path}", [*base, "fork", path], False) for path in fork_paths(settings)]
        self._signals = 0
        self.exit_code = 0

    # ------------------------------------------------------------------ running

    def run(self) -> int:
        """Start every process, replace those that die, stop on SIGTERM/SIGINT/SIGHUP.

        Returns:
            0 after a stop signal; 2 when a process could not run with these settings.
        """
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        log.info("pool %s: %d worker process(es) x %d threads on %s; forks: %s", self.pool.name,
                 self.pool.processes, self.pool.threads, ", ".join(self.pool.queues),
                 ", ".join(c.name[5:] for c in self.children if not c.worker) or "none")
        try:
            for child in self.children:
                self._start(child)
            while not self._signals:
                self.step()
                if self.exit_code:
                    break
                time.sleep(POLL_SECONDS)
        finally:
            self._stop_all()
        return self.exit_code

    def step(self) -> None:
        """Look once: note processes that exited, start those whose replacement is due."""
        now = self.clock()
        for child in self.children:
            if child.proc is not None:
                code = child.proc.poll()
                if code is not None:
                    self._exited(child, code, now)
            elif not self._signals and not self.exit_code and now >= child.due:
                self._start(child)

    def _start(self, child: Child) -> None:
        child.proc = subprocess.Popen(child.argv, env=self.env, stdin=subprocess.DEVNULL)
        child.started = self.clock()

    def _exited(self, child: Child, code: int, now: float) -> None:
        assert child.proc is not None
        pid, child.proc = child.proc.pid, None
        child.exits.append(code)
        if child.worker and self.settings.metrics_dir:
            # Its live gauges (messages in progress) go; its counters stay in the sums.
            metrics.mark_process_dead(self.settings.metrics_dir, pid)
        ran = now - child.started
        if code == EXIT_RECYCLED and child.worker:
            # Asked for (N messages or the memory ceiling): a fresh process now, no backoff.
            child.young, child.delay, child.due = 0, 0.0, now
            child.replaced += 1
            log.info("%s (pid %d) recycled after %.1f s; starting a fresh one", child.name, pid, ran)
            return
        if code == EXIT_USAGE:
            log.critical("%s (pid %d) cannot run with these settings (exit code 2); stopping the pool",
                         child.name, pid)
            self.exit_code = EXIT_USAGE
            return
        if ran >= STABLE_SECONDS:
            child.young = 0
        else:
            child.young += 1
        # The first young death is replaced at once (a poison message, the OOM killer);
        # a second one in a row is not chance: back off.
        child.delay = 0.0 if child.young < 2 else min(MIN_BACKOFF_SECONDS * 2 ** (child.young - 2),
                                                      MAX_BACKOFF_SECONDS)
        child.due = now + child.delay
        child.replaced += 1
        log.warning("%s (pid %d) exited with code %d after %.1f s; starting a replacement%s "
                    "(the other processes keep running)", child.name, pid, code, ran,
                    f" in {child.delay:g} s" if child.delay else "")

    # ------------------------------------------------------------------ stopping

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._signals += 1
        if self._signals == 1:
            log.info("pool %s: %s received, stopping (running messages finish first)", self.pool.name,
                     signal.Signals(signum).name)
        else:
            log.warning("pool %s: second signal, killing the processes", self.pool.name)
            self._send_all(signal.SIGKILL)

    def _send_all(self, sig: signal.Signals) -> None:
        for child in self.children:
            if child.proc is not None and child.proc.poll() is None:
                try:
                    child.proc.send_signal(sig)
                except ProcessLookupError:
                    pass

    def _stop_all(self) -> None:
        self._send_all(signal.SIGTERM)
        deadline = self.clock() + self.shutdown_timeout + 5
        for child in self.children:
            if child.proc is None:
                continue
            try:
                child.proc.wait(max(0.0, deadline - self.clock()))
            except subprocess.TimeoutExpired:
                log.warning("%s (pid %d) did not stop in time; killing it", child.name, child.proc.pid)
                child.proc.kill()
                child.proc.wait()

    # ------------------------------------------------------------------ for tests and logs

    def pids(self, workers: bool = True) -> list[int]:
        """Pids of the running worker processes (or forks)."""
        return [c.proc.pid for c in self.children if c.worker == workers and c.proc is not None]

