"""Token buckets and leased admission (``kernel.quota``), on fake clocks and a fake shared store."""

from __future__ import annotations

import asyncio

import pytest

from shiftflow.kernel import quota
from shiftflow.kernel.quota import Admission, AsyncAdmission, Limit, LocalBuckets, QuotaStoreUnavailable


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_admits_its_burst_then_its_rate() -> None:
    clock = Clock()
    buckets = LocalBuckets(clock)
    limit = Limit(rate=2.0, burst=3)
    assert [buckets.take("a", limit)[0] for _ in range(4)] == [1, 1, 1, 0]
    taken, wait = buckets.take("a", limit)
    assert taken == 0 and wait == pytest.approx(0.5)
    clock.now += 0.5
    assert buckets.take("a", limit) == (1, 0.0)
    clock.now += 100  # refills to the burst, never beyond it
    assert buckets.take("a", limit, want=10) == (3, 0.0)
    assert buckets.take("b", limit, want=2) == (2, 0.0)  # another key has its own bucket


def test_rate_zero_is_no_limit_and_the_limit_reads_as_words() -> None:
    admission = Admission()
    unlimited = Limit(0.0, 1)
    assert unlimited.unlimited
    assert all(admission.admit("k", unlimited) == 0.0 for _ in range(1000))
    assert Limit(100.0, 200).describe("webhooks") == "100 webhooks/s (burst 200)"
    assert Limit(0.5, 1).describe("runs") == "0.5 runs/s (burst 1)"


class FakeShared:
    """A shared store: one LocalBuckets behind an awaited call, counting round trips."""

    def __init__(self, clock: Clock) -> None:
        self.buckets = LocalBuckets(clock)
        self.calls: list[int] = []
        self.fail = False

    async def take(self, key: str, limit: Limit, want: int = 1) -> tuple[int, float]:
        self.calls.append(want)
        await asyncio.sleep(0)
        if self.fail:
            raise QuotaStoreUnavailable("down")
        return self.buckets.take(key, limit, want)


def test_leases_cost_one_round_trip_for_many_requests_and_never_exceed_the_bucket() -> None:
    clock = Clock()
    shared = FakeShared(clock)
    processes = [AsyncAdmission(shared, clock=clock) for _ in range(3)]  # three ingress processes
    limit = Limit(rate=100.0, burst=50)

    async def requests(admission: AsyncAdmission, n: int) -> list[float]:
        async def one() -> float:
            answer = admission.try_admit("ws", limit)
            return answer if answer is not None else await admission.admit("ws", limit)

        return await asyncio.gather(*(one() for _ in range(n)))

    async def main() -> list[list[float]]:
        return await asyncio.gather(*(requests(p, 40) for p in processes))

    answers = [a for per_process in asyncio.run(main()) for a in per_process]
    admitted = sum(1 for a in answers if a == 0.0)
    assert admitted == 50  # the burst, shared by the three processes; no refill (the clock stood still)
    assert all(a > 0 for a in answers if a != 0.0)
    assert len(shared.calls) < len(answers) / 4, shared.calls  # leases, not one round trip per request

    # A refusal is remembered until the next token is due: no round trip per refused request.
    before = len(shared.calls)
    assert all(processes[0].try_admit("ws", limit) for _ in range(100))
    assert len(shared.calls) == before
    clock.now += 0.05  # five tokens are due
    assert asyncio.run(processes[0].admit("ws", limit)) == 0.0


def test_an_unused_lease_expires_and_a_failing_store_falls_back_to_this_process() -> None:
    clock = Clock()
    shared = FakeShared(clock)
    admission = AsyncAdmission(shared, clock=clock)
    limit = Limit(rate=100.0, burst=100)
    assert asyncio.run(admission.admit("ws", limit)) == 0.0
    assert admission.try_admit("ws", limit) == 0.0  # a leased token, no round trip
    clock.now += quota.LEASE_SECONDS + 0.1
    assert admission.try_admit("ws", limit) is None  # expired: ask the store again

    shared.fail = True
    assert asyncio.run(admission.admit("ws", limit)) == 0.0  # from this process's own bucket
    calls = len(shared.calls)
    for _ in range(99):
        assert admission.try_admit("ws", limit) == 0.0  # the fallback answers without the store
    assert admission.try_admit("ws", limit)  # and enforces the limit on its own
    assert len(shared.calls) == calls
    clock.now += quota.FALLBACK_SECONDS
    assert admission.try_admit("ws", limit) is None  # Redis is tried again


def test_sync_admission_falls_back_while_the_store_fails() -> None:
    clock = Clock()

    class Down:
        calls = 0

        def take(self, key: str, limit: Limit, want: int = 1) -> tuple[int, float]:
            Down.calls += 1
            raise QuotaStoreUnavailable("down")

    admission = Admission(Down(), clock=clock)
    limit = Limit(1.0, 2)
    assert [admission.admit("k", limit) == 0.0 for _ in range(3)] == [True, True, False]
    assert Down.calls == 1
