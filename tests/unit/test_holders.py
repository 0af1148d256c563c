"""Holder tokens: what a process can tell about the holder of a claimed step."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from shiftflow.kernel import holders
from shiftflow.kernel.holders import Holder, StoreWatch


def test_a_token_of_this_process_is_alive_exactly_while_a_thread_holds_it() -> None:
    token = holders.new_token()
    assert token.startswith(holders.identity().key + "#")
    assert holders.state_of(token) is Holder.GONE  # nobody holds it (a claim whose thread died)
    holders.hold(token)
    assert holders.state_of(token) is Holder.HERE and token in holders.renewable()
    holders.let_go(token)
    assert holders.state_of(token) is Holder.GONE and token not in holders.renewable()


def test_a_holder_past_its_deadline_is_no_longer_renewed() -> None:
    token = holders.new_token()
    holders.hold(token)
    try:
        holders.set_deadline(token, 0.0)
        time.sleep(0.01)
        assert token not in holders.renewable()
        assert holders.state_of(token) is Holder.HERE  # still held: only its lease will lapse
        holders.set_deadline(token, None)  # its answer is in: recording has no deadline
        assert token in holders.renewable()
    finally:
        holders.let_go(token)


def _token_of(pid: int, started: str) -> str:
    return f"{holders.identity().host}:{pid}:{started}#1"


def test_another_process_on_this_host_is_gone_once_its_pid_is_dead_or_reused() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        started = holders._start_time(child.pid)
        assert started
        assert holders.state_of(_token_of(child.pid, started)) is Holder.UNKNOWN  # alive: its lease decides
        assert holders.state_of(_token_of(child.pid, "1")) is Holder.GONE  # same pid, another process
    finally:
        child.kill()
        child.wait()
    assert holders.state_of(_token_of(child.pid, started)) is Holder.GONE


def test_a_killed_process_left_as_a_zombie_is_gone() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    started = holders._start_time(child.pid)
    assert started
    child.kill()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # not reaped yet: a zombie
        with open(f"/proc/{child.pid}/stat") as stat:
            if stat.read().rsplit(")", 1)[1].split()[0] == "Z":
                break
        time.sleep(0.01)
    try:
        assert holders.state_of(_token_of(child.pid, started)) is Holder.GONE
    finally:
        child.wait()


def test_tokens_of_other_hosts_and_older_rows_are_left_to_the_lease() -> None:
    assert holders.state_of(f"elsewhere/1:{os.getpid()}:1#1") is Holder.UNKNOWN
    assert holders.state_of("0b3c2d1e-message-id") is Holder.UNKNOWN  # an older row held a message id
    assert holders.state_of(None) is Holder.UNKNOWN


def test_the_store_watch_counts_uptime_from_the_last_failure() -> None:
    watch = StoreWatch()
    assert watch.up_for() == 0.0  # never answered yet: a fresh process judges no lease
    watch.ok()
    time.sleep(0.02)
    assert watch.up_for() >= 0.02
    watch.failed()
    assert watch.up_for() == 0.0
    watch.ok()
    assert watch.up_for() < 0.02
