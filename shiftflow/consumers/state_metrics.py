"""State gauges read from PostgreSQL at each scrape of the queue exporter.

Counters in the workers say what happened; some alerts need what *is*: orders a person
must reconcile, orders still open, steps parked on a timer or a wait. Each count runs on
a partial index (``idx_sideshift_order_reconcile``, ``idx_sideshift_order_poll``, the
step ``resume_at`` and ``wait_key`` indexes), so a scrape costs index scans of the few
rows in those states, never a table scan. A scrape that cannot reach the database reports
``shiftflow_state_up 0`` and no counts (an absent series, not a wrong zero).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import peewee
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from shiftflow.kernel.db import database

log = logging.getLogger(__name__)

_ORDERS = {
    "OPEN": "SELECT count(*) FROM sideshift_order WHERE state = 'OPEN'",
    "NEEDS_RECONCILIATION": "SELECT count(*) FROM sideshift_order WHERE state = 'NEEDS_RECONCILIATION'",
}
_PARKED = {
    # Retries' backoff, rate-limit parks, polling and wait timers: a durable timer.
    "timer": "SELECT count(*) FROM step_execution WHERE resume_at IS NOT NULL AND status IN ('PENDING', 'WAITING')",
    # Waiting for an event, an approval or an operator (no timer).
    "wait": "SELECT count(*) FROM step_execution WHERE wait_key IS NOT NULL AND status = 'WAITING' "
            "AND resume_at IS NULL",
}


class StateCollector(Collector):
    """``shiftflow_sideshift_orders{state}`` and ``shiftflow_steps_parked{reason}``, read per scrape."""

    def collect(self) -> Iterator[Any]:
        """Yield the gauges (none but ``shiftflow_state_up 0`` when the database does not answer)."""
        orders = GaugeMetricFamily("shiftflow_sideshift_orders",
                                   "SideShift orders not final yet, by state (OPEN: polled; NEEDS_RECONCILIATION: "
                                   "a person must run `shiftflow sideshift reconcile`).", labels=["state"])
        parked = GaugeMetricFamily("shiftflow_steps_parked",
                                   "Steps parked: on a durable timer (retry backoff, rate limit, polling, wait "
                                   "timeout) or waiting for an event without one.", labels=["reason"])
        try:
            with database.connection_context():
                for state, sql in _ORDERS.items():
                    orders.add_metric([state], database.execute_sql(sql).fetchone()[0])
                for reason, sql in _PARKED.items():
                    parked.add_metric([reason], database.execute_sql(sql).fetchone()[0])
        except peewee.PeeweeException as exc:
            log.warning("state metrics: the database does not answer: %s", exc)
            yield GaugeMetricFamily("shiftflow_state_up", "1 when PostgreSQL answered this scrape.", value=0)
            return
        yield GaugeMetricFamily("shiftflow_state_up", "1 when PostgreSQL answered this scrape.", value=1)
        yield orders
        yield parked
