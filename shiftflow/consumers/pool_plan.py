"""How many processes and threads each worker pool needs: the formula of ``shiftflow pools plan``.

Per queue, from the metrics: the arrival rate λ (messages per second entering the queue),
the backlog B (messages waiting now) and the service time S (seconds one message takes a
worker thread). For a pool consuming several queues the loads add up.

* **Keeping up** (Little's law, L = λW): work arrives at λ·S thread-seconds per second, so
  λ·S threads are busy on average; fewer and the backlog grows without end.
* **Draining the backlog in time**: B waiting messages are B·S thread-seconds of work; to
  have the oldest one taken within the target age T, they must be done within T, which
  takes B·S/T more threads.
* **Headroom**: plan for ``utilisation`` (default 0.7) of each thread, since queues wait
  long well before 100 % busy.

    threads needed  N = (λ·S + B·S/T) / utilisation
    processes       P = max(1, ceil(N / threads per process))

A pool that consumes nothing (λ = 0 and B = 0) keeps one process: a queue with no
consumer is an alert. The KEDA trigger of the pool (``scripts/render_k8s_pools.py``)
adds a replica per ``queue_length_per_replica`` waiting messages: the messages one
replica (P processes x threads) takes within T, P x threads x T / S (S: the slowest of the
pool's queues).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from shiftflow.consumers.pools import Pool

#: Share of each thread's time the plan counts on.
UTILISATION = 0.7


@dataclass(frozen=True)
class QueueLoad:
    """The measured load of one queue."""

    arrival_rate: float  # messages per second entering the queue
    backlog: float  # messages waiting now
    service_seconds: float  # seconds of one thread per message
    oldest_age: float = 0.0  # seconds the oldest waiting message has waited


@dataclass(frozen=True)
class PoolPlan:
    """What one pool needs, next to what it has."""

    pool: str
    threads_needed: float
    processes: int
    threads: int
    current_processes: int
    queue_length_per_replica: int
    oldest_age: float

    @property
    def change(self) -> str:
        """``more``, ``fewer`` or ``keep`` processes."""
        if self.processes > self.current_processes:
            return "more"
        return "fewer" if self.processes < self.current_processes else "keep"


def plan_pool(pool: Pool, loads: Mapping[str, QueueLoad], target_age: float,
              utilisation: float = UTILISATION) -> PoolPlan:
    """The plan of ``pool`` for its queues' ``loads`` (a queue without a load counts as idle)."""
    busy = drain = 0.0
    oldest = 0.0
    service_max = 0.0
    for queue in pool.queues:
        load = loads.get(queue)
        if load is None:
            continue
        busy += load.arrival_rate * load.service_seconds
        drain += load.backlog * load.service_seconds / target_age
        oldest = max(oldest, load.oldest_age)
        service_max = max(service_max, load.service_seconds)
    needed = (busy + drain) / utilisation
    processes = max(1, math.ceil(needed / pool.threads - 1e-9))
    # Messages one replica's threads take within the target age: KEDA's queue length per replica.
    concurrency = processes * pool.threads
    per_replica = max(1, int(concurrency * target_age / service_max)) if service_max > 0 else concurrency
    return PoolPlan(pool.name, round(needed, 2), processes, pool.threads, pool.processes, per_replica, oldest)
