"""The queue exporter: depth, consumers and the oldest message's age per work queue.

``shiftflow queues exporter`` serves ``/metrics`` from RabbitMQ's management API
(``GET /api/queues/<vhost>``), sampled every ``interval`` seconds by a thread:

* ``shiftflow_queue_messages_ready``, ``shiftflow_queue_messages_unacked``,
  ``shiftflow_queue_consumers``: as RabbitMQ reports them;
* ``shiftflow_queue_published_total``, ``shiftflow_queue_delivered_total``: messages
  that entered the queue and that were handed to a consumer (the arrival and service
  rates ``shiftflow pools plan`` reads);
* ``shiftflow_queue_oldest_message_age_seconds``: how long the oldest waiting message
  has waited.

Why not RabbitMQ's ``head_message_timestamp``: it is empty for priority queues, and every
ShiftFlow queue has ``x-max-priority``. Why not peek (``basic.get`` then requeue): a
requeued message comes back *redelivered*, which ShiftFlow counts as a delivery towards
quarantining a trigger and reads as a crashed holder of a step. So the age comes from the
counters: the queue is a line, ``published - ready`` messages have left it, so the oldest
waiting one is arrival number ``published - ready + 1``, and its age is the time since the
published counter reached that number (the exporter keeps the counter's history). Messages
of a higher priority overtake: then the true oldest is older, never younger, than this.
RabbitMQ refreshes these statistics every 5 s (``collect_statistics_interval``), which is
the precision of the age. Until the history reaches back to the oldest message, the age
reported is the history's length (a lower bound).

Labels: ``queue`` only, one of ``Queue.ALL``.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import httpx
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from shiftflow.kernel.contracts import Queue

log = logging.getLogger(__name__)

#: RabbitMQ's management port when the AMQP URL says nothing else.
MANAGEMENT_PORT = 15672
#: Samples of the published counter kept per queue (at 1 s: about an hour).
HISTORY = 4000


def management_from_amqp(amqp_url: str) -> tuple[str, str, tuple[str, str]]:
    """(management base URL, vhost, credentials) for the broker of ``amqp_url``."""
    parts = urlsplit(amqp_url)
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    scheme = "https" if parts.scheme == "amqps" else "http"
    return (f"{scheme}://{parts.hostname or '127.0.0.1'}:{MANAGEMENT_PORT}", vhost,
            (unquote(parts.username or "guest"), unquote(parts.password or "guest")))


@dataclass
class QueueState:
    """What the exporter knows of one queue."""

    ready: int = 0
    unacked: int = 0
    consumers: int = 0
    published: int = 0
    delivered: int = 0
    #: (time, published counter) samples, oldest first; the counter never decreases here.
    history: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=HISTORY))

    def observe(self, now: float, ready: int, unacked: int, consumers: int, published: int, delivered: int) -> None:
        """Record one sample (a counter that went back means the queue was re-created)."""
        if published < self.published:
            self.history.clear()
        self.ready, self.unacked, self.consumers = ready, unacked, consumers
        self.published, self.delivered = published, delivered
        if not self.history or self.history[-1][1] != published:
            self.history.append((now, published))

    def oldest_age(self, now: float) -> float:
        """Seconds the oldest waiting message has waited (0 when none waits)."""
        if self.ready <= 0 or not self.history:
            return 0.0
        wanted = self.published - self.ready + 1  # arrival number of the oldest waiting message
        counts = [count for _, count in self.history]
        index = bisect.bisect_left(counts, wanted)
        if index >= len(counts):
            index = len(counts) - 1
        return max(0.0, now - self.history[index][0])


class QueueSampler:
    """Samples the management API every ``interval`` seconds into ``QueueState``s."""

    def __init__(self, base_url: str, vhost: str, auth: tuple[str, str], *, queues: tuple[str, ...] = Queue.ALL,
                 interval: float = 1.0, clock: Callable[[], float] = time.time) -> None:
        self.url = f"{base_url.rstrip('/')}/api/queues/{quote(vhost, safe='')}"
        self.auth, self.queues, self.interval, self.clock = auth, queues, interval, clock
        self.states = {name: QueueState() for name in queues}
        self.up = False
        self._http = httpx.Client(timeout=5, trust_env=False)
        self._lock = threading.Lock()

    def sample(self) -> None:
        """Read every queue once."""
        try:
            answer = self._http.get(self.url, auth=self.auth)
            answer.raise_for_status()
            rows = {row["name"]: row for row in answer.json()}
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            if self.up:
                log.warning("RabbitMQ management API unavailable: %s", exc)
            self.up = False
            return
        now = self.clock()
        with self._lock:
            for name, state in self.states.items():
                row = rows.get(name)
                if row is None:
                    continue
                stats: dict[str, Any] = row.get("message_stats") or {}
                state.observe(now, int(row.get("messages_ready") or 0), int(row.get("messages_unacknowledged") or 0),
                              int(row.get("consumers") or 0), int(stats.get("publish") or 0),
                              int(stats.get("deliver_get") or 0))
            self.up = True

    def run(self, stop: threading.Event) -> None:
        """Sample until ``stop`` is set."""
        while not stop.is_set():
            self.sample()
            stop.wait(self.interval)

    def snapshot(self) -> tuple[bool, float, dict[str, QueueState]]:
        """(up, now, states) under the lock, for one scrape."""
        with self._lock:
            return self.up, self.clock(), {name: QueueState(s.ready, s.unacked, s.consumers, s.published,
                                                             s.delivered, deque(s.history))
                                           for name, s in self.states.items()}


class QueueCollector(Collector):
    """The exporter's metric families, built from the sampler's last samples at each scrape."""

    def __init__(self, sampler: QueueSampler) -> None:
        self.sampler = sampler

    def collect(self) -> Iterator[Any]:
        """Yield the families (every queue has a sample in each, zeros before the first read)."""
        up, now, states = self.sampler.snapshot()
        yield GaugeMetricFamily("shiftflow_queue_exporter_up",
                                "1 when RabbitMQ's management API answered the last sample.", value=1 if up else 0)
        families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {
            "ready": GaugeMetricFamily("shiftflow_queue_messages_ready", "Messages waiting in the queue.",
                                       labels=["queue"]),
            "unacked": GaugeMetricFamily("shiftflow_queue_messages_unacked",
                                         "Messages handed to a consumer and not acknowledged yet.", labels=["queue"]),
            "consumers": GaugeMetricFamily("shiftflow_queue_consumers", "Consumers of the queue.", labels=["queue"]),
            "age": GaugeMetricFamily("shiftflow_queue_oldest_message_age_seconds",
                                     "How long the oldest waiting message has waited (0: none waits).",
                                     labels=["queue"]),
            "published": CounterMetricFamily("shiftflow_queue_published", "Messages that entered the queue.",
                                             labels=["queue"]),
            "delivered": CounterMetricFamily("shiftflow_queue_delivered",
                                             "Messages the queue handed to consumers (redeliveries included).",
                                             labels=["queue"]),
        }
        for name, state in states.items():
            families["ready"].add_metric([name], state.ready)
            families["unacked"].add_metric([name], state.unacked)
            families["consumers"].add_metric([name], state.consumers)
            families["age"].add_metric([name], round(state.oldest_age(now), 3))
            families["published"].add_metric([name], state.published)
            families["delivered"].add_metric([name], state.delivered)
        yield from families.values()
