"""Wait until Ctrl-C (SIGINT) or SIGTERM, whatever signal state the process inherited.

A command that tells its user "Stop: Ctrl-C" must stop on it. Python raises
``KeyboardInterrupt`` only if SIGINT was not ignored when the interpreter started, and a
shell starts its background jobs with SIGINT ignored; a parent may also hand down a signal
mask that blocks it (a test's worker, a supervisor). So the handlers are installed here
explicitly and both signals unblocked. The handler only starts a thread that sets the
event: it runs in the main thread, which may be inside ``Event.wait`` holding the event's
lock, and setting it there could wait on that lock forever.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

#: The signals that stop a command waiting here.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def wait_for_stop_signal() -> None:
    """Block until SIGINT or SIGTERM arrives; the previous handlers and mask are restored."""
    stop = threading.Event()

    def handler(signum: int, frame: Any) -> None:
        threading.Thread(target=stop.set, name="stop-signal", daemon=True).start()

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    try:
        while not stop.wait(0.5):  # a timed wait: the handler runs within half a second
            pass
    except KeyboardInterrupt:
        pass  # a handler installed before ours raised it; stopping is what it asked for
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        for sig, old in previous.items():
            signal.signal(sig, old)
