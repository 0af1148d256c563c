"""Dead letters are recorded whatever the message holds (``models.tables.dead_letters.record``),
and log documents BSON cannot encode do not stop the MongoDB writer (``kernel.mongo``)."""

from __future__ import annotations

import json
import math
from typing import Any

from shiftflow.kernel.bson_guard import ints_as_text
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


def test_integers_beyond_64_bits_become_text_for_bson() -> None:
    document = {"a": [2**63, -(2**63) - 1, 2**63 - 1, True], "b": {"c": 10**40}, "d": 1.5}
    assert ints_as_text(document) == {"a": [str(2**63), str(-(2**63) - 1), 2**63 - 1, True],
                                    "b": {"c": str(10**40)}, "d": 1.5}
