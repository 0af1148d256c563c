"""The failed-authentication throttle's counting: windows, limits, and Redis falling back."""

from __future__ import annotations

import time

import pytest

from shiftflow.kernel.settings import Settings
from shiftflow.producers.api.auth_throttle import (
    AuthThrottle,
    Limits,
    MemoryStore,
    RedisStore,
    Throttled,
    from_settings,
)
from tests.support.ports import free_port


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_address_is_refused_at_its_limit_until_the_window_ends():
    clock = Clock()
    throttle = AuthThrottle(MemoryStore(clock), Limits(per_address=3, per_key=0, window=60))
    for _ in range(3):
        throttle.check("10.0.0.1", "sfk_000000000001")
        throttle.failed("10.0.0.1", "sfk_000000000001")
    clock.now += 20
    with pytest.raises(Throttled) as info:
        throttle.check("10.0.0.1", None)
    assert info.value.retry_after == 40  # the window started at the first failure
    throttle.check("10.0.0.2", None)  # another address is not affected
    clock.now += 40
    throttle.check("10.0.0.1", None)  # the window ended: counting starts again
    throttle.failed("10.0.0.1", None)
    throttle.check("10.0.0.1", None)


def test_a_key_prefix_is_refused_whatever_the_address():
    throttle = AuthThrottle(MemoryStore(Clock()), Limits(per_address=100, per_key=2, window=60))
    throttle.failed("10.0.0.1", "sfk_00000000000a")
    throttle.failed("10.0.0.2", "sfk_00000000000a")
    with pytest.raises(Throttled, match="for key sfk_00000000000a"):
        throttle.check("10.0.0.3", "sfk_00000000000a")
    throttle.check("10.0.0.3", "sfk_00000000000b")


def test_zero_turns_a_limit_off():
    store = MemoryStore(Clock())
    throttle = AuthThrottle(store, Limits(per_address=0, per_key=0, window=60))
    for _ in range(50):
        throttle.failed("10.0.0.1", "sfk_00000000000a")
    throttle.check("10.0.0.1", "sfk_00000000000a")  # not refused after 50 failures,
    assert store.count(["address:10.0.0.1", "key:sfk_00000000000a"]) == [(0, 0.0), (0, 0.0)]  # none counted


def test_an_unreachable_redis_falls_back_to_counting_in_memory():
    settings = Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", auth_failures_per_address=2)
    throttle = from_settings(settings)
    assert isinstance(throttle.store, RedisStore)
    started = time.monotonic()
    throttle.check("10.0.0.1", None)  # no Redis: not an error, and nobody is locked out
    throttle.failed("10.0.0.1", None)
    throttle.failed("10.0.0.1", None)
    with pytest.raises(Throttled):
        throttle.check("10.0.0.1", None)
    assert time.monotonic() - started < 5  # no retries with backoff on a dead Redis


def test_the_memory_store_stays_bounded(monkeypatch):
    from shiftflow.producers.api import auth_throttle

    monkeypatch.setattr(auth_throttle, "MAX_COUNTERS", 10)
    store = MemoryStore(Clock())
    for i in range(25):
        store.add([f"address:{i}"], 60)
    assert len(store._counters) <= 10
