"""Run one trigger message: start its execution, or quarantine a trigger that keeps killing
its worker process.

A first delivery goes straight to ``start.start_execution``. A redelivery (RabbitMQ sets
the flag when the consumer that held the message died, or its channel closed) whose
execution does not exist yet may be the reason its process died, so it is treated like a
suspect step (``run_step``):

1. it waits until it can run alone in its process (``kernel.isolation``), then its
   delivery is counted in PostgreSQL and committed before any work
   (``trigger_deliveries``): a death while it waited is not its own;
2. past ``SHIFTFLOW_DELIVERY_LIMIT`` deliveries it is quarantined: stored as a dead letter
   with the reason and acknowledged, never run again (no execution exists to mark
   failed; ``shiftflow dead-letters replay`` sends it again as a new message, with a
   fresh count, once the cause is fixed);
3. otherwise it runs, still alone, so a death during the run is its own and never charged
   to a neighbour.

A redelivery whose execution exists already is a plain duplicate: it only re-publishes
the steps still pending, as before.
"""

from __future__ import annotations

import logging
from typing import Any

from dramatiq.middleware import CurrentMessage

from shiftflow.kernel import failpoints, isolation, metrics
from shiftflow.kernel.contracts import ACTORS, TriggerPayload
from shiftflow.kernel.enqueue import Outgoing
from shiftflow.kernel.settings import get_settings
from shiftflow.models.engine import prepared_sql
from shiftflow.models.engine.start import start_execution
from shiftflow.models.tables import dead_letters, trigger_deliveries
from shiftflow.models.tables.executions import Execution

log = logging.getLogger(__name__)

#: The contract name of the trigger actor (its queue comes from the contract table).
TRIGGER_ACTOR = "triggers.start"


def run_trigger(payload: TriggerPayload) -> list[Outgoing]:
    """Start the execution of ``payload`` once; return the messages of its first steps.

    Raises:
        NotFound: the workflow or its current version does not exist.
    """
    message = CurrentMessage.get_current_message()
    redelivered = bool(getattr(message, "redelivered", False))
    if message is None or not redelivered or _existing(payload) is not None:
        with isolation.guard(False):
            return _start(payload)
    with isolation.guard(True):
        # Counted once it runs alone: a death while it waited for its turn is a neighbour's.
        deliveries = trigger_deliveries.count_redelivery(message.message_id, payload.workflow_id,
                                                         payload.dedup_key)
        limit = get_settings().delivery_limit
        if deliveries > limit:
            return quarantine(payload, message.message_id, message.asdict(), deliveries, limit)
        return _start(payload)


def _start(payload: TriggerPayload) -> list[Outgoing]:
    failpoints.hit("trigger.before_start", payload.dedup_key)
    return start_execution(payload).outgoing


def _existing(payload: TriggerPayload) -> Execution | None:
    found = prepared_sql.select_where(Execution, workflow=payload.workflow_id, dedup_key=payload.dedup_key)
    return found[0] if found else None


def quarantine(payload: TriggerPayload, message_id: str, message: dict[str, Any], deliveries: int,
               limit: int) -> list[Outgoing]:
    """Store a trigger that kept killing its process as a dead letter (no execution exists:
    a trigger whose execution exists is a duplicate and never gets here).

    Returns:
        No messages: nothing was started.
    """
    reason = f"quarantined: trigger delivered {deliveries} times without finishing (limit {limit})"
    dead_letters.record(message_id, ACTORS[TRIGGER_ACTOR].queue, TRIGGER_ACTOR, message, reason)
    metrics.EXECUTIONS.labels("quarantined").inc()
    log.error("trigger %s of workflow %s (message %s) %s", payload.dedup_key, payload.workflow_id, message_id,
              reason)
    return []
