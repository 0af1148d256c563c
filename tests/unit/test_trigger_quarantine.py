"""Trigger messages count their redeliveries and are quarantined past the delivery limit.

Pure engine logic on SQLite: the current Dramatiq message is set by hand (as the
``CurrentMessage`` middleware would), with RabbitMQ's ``redelivered`` flag on or off.
The real process deaths are in ``tests/reliability/test_trigger_quarantine.py``.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from dramatiq.middleware import CurrentMessage

from shiftflow.kernel.contracts import TriggerPayload
from shiftflow.kernel.db import bind_database
from shiftflow.kernel.settings import Settings, configure
from shiftflow.models.engine.run_trigger import run_trigger
from shiftflow.models.manage import catalog
from shiftflow.models.manage.access import Principal
from shiftflow.models.manage.replay import replay_dead_letters
from shiftflow.models.tables.dead_letters import DeadLetter
from shiftflow.models.tables.executions import Execution
from shiftflow.models.tables.registry import create_all
from shiftflow.models.tables.trigger_deliveries import TriggerDelivery, purge

LIMIT = 3


class Delivery:
    """What ``run_trigger`` reads of the current message: id, redelivered flag, asdict()."""

    def __init__(self, payload: TriggerPayload, *, redelivered: bool, message_id: str | None = None) -> None:
        self.message_id = message_id or str(uuid.uuid4())
        self.redelivered = redelivered
        self.payload = payload

    def asdict(self) -> dict[str, Any]:
        return {
            "queue_name": "triggers",
            "actor_name": "triggers.start",
            "message_id": self.message_id,
            "args": [],
            "kwargs": {"payload": self.payload.__dict__},
            "options": {"broker_priority": 5},
        }


@contextlib.contextmanager
def delivered(message: Delivery) -> Iterator[None]:
    token = CurrentMessage._MESSAGE.set(message)  # type: ignore[arg-type]
    try:
        yield
    finally:
        CurrentMessage._MESSAGE.reset(token)


@pytest.fixture
def workflow_id(tmp_path: Any) -> Iterator[str]:
    settings = configure(Settings.from_env({"SHIFTFLOW_MODE": "dev", "SHIFTFLOW_DATA_DIR": str(tmp_path),
                                            "SHIFTFLOW_DELIVERY_LIMIT": str(LIMIT)}))
    db = bind_database(settings.database_url)
    create_all(db)
    workspace = catalog.ensure_workspace("t")
    applied = catalog.apply_definition(workspace, {
        "name": "cheap",
        "steps": [{"id": "shape", "type": "transform", "with": {"output": {"n": "{{ trigger.n }}"}}}],
    })
    yield str(applied.workflow.id)
    db.close()


def _payload(workflow_id: str, key: str) -> TriggerPayload:
    return TriggerPayload(workflow_id, key, "test", {"n": 1})


def test_a_first_delivery_writes_no_count(workflow_id: str) -> None:
    with delivered(Delivery(_payload(workflow_id, "k-1"), redelivered=False)):
        run_trigger(_payload(workflow_id, "k-1"))
    assert Execution.get(Execution.dedup_key == "k-1").status == "SUCCEEDED"
    assert TriggerDelivery.select().count() == 0


def test_a_redelivery_is_counted_then_runs(workflow_id: str) -> None:
    payload = _payload(workflow_id, "k-2")
    with delivered(Delivery(payload, redelivered=True, message_id="m-2")):
        run_trigger(payload)
    assert Execution.get(Execution.dedup_key == "k-2").status == "SUCCEEDED"
    assert TriggerDelivery.get(TriggerDelivery.message_id == "m-2").deliveries == 2


def test_a_redelivery_of_a_started_execution_is_a_plain_duplicate(workflow_id: str) -> None:
    payload = _payload(workflow_id, "k-3")
    with delivered(Delivery(payload, redelivered=False, message_id="m-3")):
        run_trigger(payload)
    with delivered(Delivery(payload, redelivered=True, message_id="m-3")):
        assert run_trigger(payload) == []
    assert Execution.select().where(Execution.dedup_key == "k-3").count() == 1
    assert TriggerDelivery.select().count() == 0


def test_past_the_limit_the_trigger_is_a_dead_letter_and_a_replay_runs_it(workflow_id: str) -> None:
    payload = _payload(workflow_id, "k-4")
    message = Delivery(payload, redelivered=True, message_id="m-4")
    # Deliveries 2..LIMIT each died before the execution existed (simulated: the rows
    # of an execution that never committed are not there), so only the counts remain.
    for deliveries in range(2, LIMIT + 1):
        TriggerDelivery.insert(message_id="m-4", workflow_id=workflow_id, dedup_key="k-4",
                               deliveries=deliveries).on_conflict_replace().execute()
    with delivered(message):
        assert run_trigger(payload) == []
    assert TriggerDelivery.get(TriggerDelivery.message_id == "m-4").deliveries == LIMIT + 1
    assert not Execution.select().where(Execution.dedup_key == "k-4").exists()
    letter = DeadLetter.get(DeadLetter.message_id == "m-4")
    assert letter.actor == "triggers.start" and letter.queue == "triggers"
    assert letter.error == f"quarantined: trigger delivered {LIMIT + 1} times without finishing (limit {LIMIT})"
    assert letter.payload["kwargs"]["payload"]["dedup_key"] == "k-4"

    # The operator fixes the cause and replays: a new message, with a fresh count.
    sent: list[tuple[str, Any]] = []
    outcome = replay_dead_letters(
        Principal.operator(),
        lambda actor, replayed, **kw: sent.append((actor, replayed)) or "m-5",
    )
    assert [(r["outcome"], r["message_id"]) for r in outcome.replayed] == [("replayed", "m-5")]
    assert [actor for actor, _ in sent] == ["triggers.start"]
    with delivered(Delivery(sent[0][1], redelivered=False, message_id="m-5")):
        run_trigger(sent[0][1])
    assert Execution.get(Execution.dedup_key == "k-4").status == "SUCCEEDED"


def test_old_counts_are_purged(workflow_id: str) -> None:
    import datetime as dt

    from shiftflow.models.tables.base import utcnow

    TriggerDelivery.insert(message_id="old", workflow_id=workflow_id, dedup_key="o", deliveries=2,
                           last_at=utcnow() - dt.timedelta(days=8)).execute()
    TriggerDelivery.insert(message_id="new", workflow_id=workflow_id, dedup_key="n", deliveries=2).execute()
    assert purge() == 1
    assert [r.message_id for r in TriggerDelivery.select()] == ["new"]
