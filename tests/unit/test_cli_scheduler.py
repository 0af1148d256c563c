"""A scheduler replica stops on SIGTERM, even when the signal lands while the main thread
holds the stop event's lock (inside ``Event.wait``): it once hung there until SIGKILL."""

from __future__ import annotations

import subprocess
import sys
import textwrap

#: Holds the event's lock in the main thread, then signals itself: the handler runs right
#: there, as it did when SIGTERM arrived during ``stop.wait()``.
PROGRAM = textwrap.dedent(
    """
    import os, signal, sys, threading
    from shiftflow.cli.scheduler import stop_on_signals

    stop = threading.Event()
    stop_on_signals(stop)
    with stop._cond:
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):  # bytecodes to run the handler while the lock is held
            pass
    sys.exit(0 if stop.wait(10) else 3)
    """
)


def test_sigterm_while_the_stop_lock_is_held_still_stops() -> None:
    try:
        done = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        raise AssertionError("the replica hung on SIGTERM (the handler waited for a lock its own thread held)") from None
    assert done.returncode == 0, done.stderr
