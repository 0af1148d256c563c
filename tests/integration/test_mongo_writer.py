"""The Mongo writer against SecantusDB: one document the encoder or the server refuses
costs only itself (issue 11, finding 7).

Before: an integer of 2**63 or more (``OverflowError`` from the BSON encoder) or an
unencodable value killed the writer thread, and its whole batch (every workspace's
logs in it) was lost; a document the server refuses (too large) was retried forever,
holding every later document behind it. Now each is replaced by a stand-in that says
why (and counted in ``shiftflow_log_documents_total{outcome="replaced"}``), and every
other document arrives.
"""

from __future__ import annotations

from decimal import Decimal

import pymongo
import pytest
from prometheus_client import REGISTRY

from shiftflow.kernel.mongo import EXECUTION_LOGS, MongoSink

pytestmark = pytest.mark.integration


def _replaced() -> float:
    return REGISTRY.get_sample_value("shiftflow_log_documents_total", {"outcome": "replaced"}) or 0.0


BAD = {
    "int64_overflow": {"metadata": {"output": {"n": 2**63}}},
    "negative_overflow": {"metadata": {"n": -(2**64)}},
    "decimal": {"metadata": {"price": Decimal("1.5")}},
    "non_string_key": {"metadata": {1: "a"}},
    "set": {"metadata": {"tags": {"a", "b"}}},
    "oversize": {"metadata": {"blob": "x" * (17 << 20)}},
}


def test_bad_documents_are_replaced_and_nothing_else_is_lost(mongo_url, mongo_db):
    sink = MongoSink(mongo_url, mongo_db, batch_size=500, flush_ms=20)
    before = _replaced()
    client: pymongo.MongoClient = pymongo.MongoClient(mongo_url)
    try:
        # One batch: good documents of two workspaces around every kind of bad one.
        for n in range(40):
            sink.write(EXECUTION_LOGS, {"workspaceId": "ws-a" if n % 2 else "ws-b", "message": f"good {n}", "n": n})
            if n % 6 == 0 and n // 6 < len(BAD):
                name = sorted(BAD)[n // 6]
                sink.write(EXECUTION_LOGS, {"workspaceId": "ws-c", "message": f"bad {name}", "stepId": name,
                                            **BAD[name]})
        assert sink.flush(timeout=60), "the writer never finished its batch"
        collection = client[mongo_db][EXECUTION_LOGS]
        good = {d["n"] for d in collection.find({"message": {"$regex": "^good"}})}
        assert good == set(range(40))
        written = {d["stepId"]: d for d in collection.find({"workspaceId": "ws-c"})}
        assert set(written) == set(BAD)
        # Integers beyond 64 bits are kept whole, as their text; the rest become stand-ins.
        assert written["int64_overflow"]["metadata"]["output"]["n"] == str(2**63)
        assert written["negative_overflow"]["metadata"]["n"] == str(-(2**64))
        standins = {name: doc for name, doc in written.items() if "overflow" not in name}
        for name, doc in standins.items():
            assert doc["message"] == f"bad {name}" and doc["unstorable"], doc  # small fields kept, reason given
            assert len(doc.get("preview", "")) <= 2_000
        assert _replaced() - before == len(standins)
        # The writer is alive and keeps writing.
        sink.write(EXECUTION_LOGS, {"workspaceId": "ws-a", "message": "after"})
        assert sink.flush(timeout=30)
        assert collection.count_documents({"message": "after"}) == 1
    finally:
        sink.close()
        client.close()


def test_a_document_the_server_refuses_is_replaced_not_retried_forever(mongo_url, mongo_db):
    # The local size check is set above the server's 16 MiB: the server refuses the
    # document, and the writer must not send the batch back to the buffer for ever.
    sink = MongoSink(mongo_url, mongo_db, batch_size=500, flush_ms=20, max_document_bytes=64 << 20)
    before = _replaced()
    client: pymongo.MongoClient = pymongo.MongoClient(mongo_url)
    try:
        sink.write(EXECUTION_LOGS, {"workspaceId": "ws-a", "message": "before"})
        sink.write(EXECUTION_LOGS, {"workspaceId": "ws-c", "message": "huge", "blob": "x" * (17 << 20)})
        sink.write(EXECUTION_LOGS, {"workspaceId": "ws-b", "message": "after"})
        assert sink.flush(timeout=60), "the batch was never settled"
        collection = client[mongo_db][EXECUTION_LOGS]
        assert {d["message"] for d in collection.find({"workspaceId": {"$in": ["ws-a", "ws-b"]}})} == {"before",
                                                                                                       "after"}
        huge = collection.find_one({"message": "huge"})
        assert huge is not None and "refused by MongoDB" in huge["unstorable"] and "blob" not in huge
        assert _replaced() - before == 1
    finally:
        sink.close()
        client.close()
