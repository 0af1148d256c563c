"""``models.tables.dead_letters.record``: dead letters are recorded whatever the message holds."""

from __future__ import annotations

import json
import math
from typing import Any

from shiftflow.models.tables import dead_letters
from shiftflow.models.tables.dead_letters import DeadLetter


def _message(data: Any) -> dict[str, Any]:
    return {
        "queue_name": "triggers",
        "actor_name": "triggers.start",
        "message_id": "m-1",
        "args": [],
        "kwargs": {"payload": {"workflow_id": "w-1", "dedup_key": "standard:k", "data": data}},
        "options": {},
    }


def test_a_storable_message_is_kept_as_it_is(sqlite_models: Any) -> None:
    dead_letters.record("m-1", "triggers", "triggers.start", _message({"x": 1}), "boom")
    row = DeadLetter.get()
    assert row.payload == _message({"x": 1}) and row.error == "boom"


def test_an_unstorable_message_is_kept_as_escaped_text(sqlite_models: Any) -> None:
    data = {"inf": math.inf, "nul": "a\x00b", "lone": "\ud800"}
    dead_letters.record("m-1", "triggers", "triggers.start", _message(data), "DataError: \x00 and \udc80")
    row = DeadLetter.get()
    assert row.payload["unstorable"].startswith("contains ")
    assert row.payload["kwargs"] == {"payload": {"workflow_id": "w-1", "dedup_key": "standard:k"}}
    assert row.payload["actor_name"] == "triggers.start" and row.payload["message_id"] == "m-1"
    text = row.payload["text"]
    assert text.isascii() and "\x00" not in text
    decoded = json.loads(text)  # Infinity, \u0000 and \ud800 read back as they were
    assert decoded["kwargs"]["payload"]["data"]["nul"] == "a\x00b"
    assert decoded["kwargs"]["payload"]["data"]["lone"] == "\ud800"
    assert math.isinf(decoded["kwargs"]["payload"]["data"]["inf"])
    assert row.error == "DataError: \\x00 and \\udc80"
    # Recorded once per message id, as before.
    dead_letters.record("m-1", "triggers", "triggers.start", _message(data), "again")
    assert DeadLetter.select().count() == 1
