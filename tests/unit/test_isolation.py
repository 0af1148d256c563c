"""Suspect steps run alone in their process; ordinary ones share; database blips retry."""

import threading
import time

import peewee

from shiftflow.kernel import isolation
from shiftflow.kernel.broker import retry_transient
from shiftflow.kernel.errors import PermanentError, TransientError


def test_a_suspect_waits_for_running_steps_and_blocks_new_ones():
    events = []
    started_shared = threading.Event()

    def ordinary(name, hold):
        with isolation.guard(False):
            events.append(f"{name}+")
            started_shared.set()
            time.sleep(hold)
            events.append(f"{name}-")

    def suspect():
        with isolation.guard(True):
            events.append("S+")
            time.sleep(0.1)
            events.append("S-")

    a = threading.Thread(target=ordinary, args=("a", 0.2))
    a.start()
    started_shared.wait(5)
    s = threading.Thread(target=suspect)
    s.start()
    time.sleep(0.05)
    b = threading.Thread(target=ordinary, args=("b", 0.01))  # arrives while the suspect waits
    b.start()
    for t in (a, s, b):
        t.join(5)
    assert events == ["a+", "a-", "S+", "S-", "b+", "b-"]


def test_ordinary_steps_run_together():
    inside, peak = [0], [0]
    lock = threading.Lock()

    def ordinary():
        with isolation.guard(False):
            with lock:
                inside[0] += 1
                peak[0] = max(peak[0], inside[0])
            time.sleep(0.05)
            with lock:
                inside[0] -= 1

    threads = [threading.Thread(target=ordinary) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert peak[0] > 1


def test_retry_only_what_may_pass():
    assert retry_transient(0, TransientError("x"))
    assert retry_transient(0, peewee.OperationalError("server closed the connection"))
    assert not retry_transient(0, PermanentError("x"))
    assert not retry_transient(0, ValueError("bug"))
    assert not retry_transient(100, TransientError("x"))
