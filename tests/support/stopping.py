"""Stop a ShiftFlow command the way a person does (Ctrl-C), and say why when it does not stop."""

from __future__ import annotations

import os
import signal
import subprocess

#: Environment for a command started with ``stop_or_explain`` in mind: Python's
#: faulthandler dumps every thread's stack on SIGABRT, which is what the failure shows.
DIAGNOSABLE = {**os.environ, "PYTHONFAULTHANDLER": "1"}


def stop_or_explain(proc: subprocess.Popen[str], stop: signal.Signals = signal.SIGINT, timeout: float = 60) -> int:
    """Send ``stop`` and return the exit status; if the process is still running after
    ``timeout`` seconds, abort it and fail with what it printed (its threads' stacks when
    started with ``DIAGNOSABLE``): a hang at exit is a defect to read, not a flake."""
    proc.send_signal(stop)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        try:
            rest, _ = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            rest, _ = proc.communicate()
        raise AssertionError(
            f"{proc.args!r} did not exit within {timeout:g} s of {stop.name}; what it printed after:\n{rest}"
        ) from None
