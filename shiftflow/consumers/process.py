"""One process of a worker pool, started (and replaced) by the pool's ``supervisor``.

    python -m shiftflow.consumers.process worker --queues triggers steps --threads 8
    python -m shiftflow.consumers.process fork shiftflow.consumers.timers:timer_fork

A **worker** process does what a Dramatiq worker process does (``dramatiq.cli.worker_process``):
it boots the broker module ``consumers.worker`` (settings, middleware, actors, database),
runs a ``dramatiq.Worker`` on its queues, logs ``Worker process is ready for action.``, and
on SIGTERM (or SIGHUP) stops taking messages, lets those running finish (up to
``--shutdown-timeout`` seconds; unacked ones return to RabbitMQ) and exits 0. A **fork**
runs one function of the pool's middleware ``forks`` (the timer loop, the metrics
exporter) until SIGTERM.

Both log through ``kernel.logsetup`` (one line per transient error, repeats counted) and
get SIGTERM when the supervisor dies, so a killed supervisor leaves no orphan consuming.
Exit codes: 0 stopped, 2 bad settings or usage (the supervisor stops the pool: a restart
cannot fix it), anything else a crash (the supervisor starts a replacement).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from shiftflow.kernel.errors import SettingsError
from shiftflow.kernel.logsetup import configure_logging
from shiftflow.kernel.settings import Settings

log = logging.getLogger("shiftflow.workers")

#: Seconds a stopping worker lets running messages finish (Dramatiq's default: 10 minutes).
SHUTDOWN_TIMEOUT_SECONDS = 600
#: The exit code of a process that cannot run with these settings (as the CLI's usage errors).
EXIT_USAGE = 2
#: The line the supervisor (and the tests) read as "this process consumes now".
READY_LINE = "Worker process is ready for action."
_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """Ask Linux for SIGTERM when the parent (the supervisor) dies; exit now if it already has."""
    if sys.platform == "linux":
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if parent and os.getppid() != parent:
        raise SystemExit(0)  # orphaned between fork and prctl: nobody would stop this process


def run_worker(queues: Sequence[str], threads: int, shutdown_timeout: float,
               settings: Settings | None = None) -> int:
    """Consume ``queues`` with ``threads`` threads until SIGTERM or recycling; returns the exit code
    (0, or ``EXIT_RECYCLED`` after ``SHIFTFLOW_WORKER_MAX_MESSAGES`` / ``_MAX_MEMORY_MB``)."""
    import dramatiq

    from shiftflow.consumers.recycle import EXIT_RECYCLED, Recycler

    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        if not stop.is_set():
            log.info("Stopping worker process...")
        stop.set()  # a second SIGTERM (systemd signals the whole group) changes nothing

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the supervisor, which sends SIGTERM

    module = importlib.import_module("shiftflow.consumers.worker")  # settings, broker, actors, database
    broker = module.broker
    recycler = Recycler(stop, settings.worker_max_messages, settings.worker_max_memory_mb) if settings else None
    if recycler is not None and recycler.enabled:
        broker.add_middleware(recycler)
    broker.emit_after("process_boot")
    worker = dramatiq.Worker(broker, queues=set(queues), worker_threads=threads)
    worker.start()
    log.info(READY_LINE)
    while not stop.wait(1.0):
        pass
    worker.stop(timeout=int(shutdown_timeout * 1000))
    broker.close()
    return EXIT_RECYCLED if recycler is not None and recycler.reason else 0


def run_fork(path: str) -> int:
    """Run the function ``module:name`` until it returns or SIGTERM; returns the exit code."""

    def on_signal(signum: int, frame: Any) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    module_name, _, name = path.partition(":")
    function = getattr(importlib.import_module(module_name), name)
    log.info("Fork process %r is ready for action.", path)
    result = function()
    return result if isinstance(result, int) else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, set up logging, run the worker or the fork."""
    parser = argparse.ArgumentParser(prog="python -m shiftflow.consumers.process")
    parser.add_argument("--parent", type=int, default=0, help="the supervisor's pid (exit when it is gone)")
    sub = parser.add_subparsers(dest="role", required=True)
    worker = sub.add_parser("worker")
    worker.add_argument("--queues", nargs="+", required=True)
    worker.add_argument("--threads", type=int, default=8)
    worker.add_argument("--shutdown-timeout", type=float, default=SHUTDOWN_TIMEOUT_SECONDS)
    fork = sub.add_parser("fork")
    fork.add_argument("path", help="module:function")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"shiftflow worker: {exc}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(settings.log_level, settings.log_repeat_seconds)
    # Start, ready, stop and replacement lines are few and always wanted, whatever the level.
    log.setLevel(logging.INFO)
    die_with_parent(args.parent)
    if args.role == "worker":
        return run_worker(args.queues, args.threads, args.shutdown_timeout, settings)
    return run_fork(args.path)


if __name__ == "__main__":
    raise SystemExit(main())
