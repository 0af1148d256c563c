"""Live updates on Redis: one message per execution per transition, sent in order from a
background thread, never blocking or failing the caller."""

from __future__ import annotations

import json
import time

import pytest

from shiftflow.kernel import redis_handle

pytestmark = pytest.mark.integration


@pytest.fixture
def live(redis_url):
    redis_handle.configure_redis(redis_url)
    yield redis_url
    redis_handle.flush_updates(5)
    redis_handle.configure_redis("")


def _collect(pubsub, want: int, timeout: float = 5.0) -> list[dict]:
    got: list[dict] = []
    deadline = time.time() + timeout
    while len(got) < want and time.time() < deadline:
        message = pubsub.get_message(timeout=0.2)
        if message and message["type"] == "pmessage":
            got.append({"channel": message["channel"].decode(), **json.loads(message["data"])})
    return got


def test_one_message_per_execution_in_order(live, redis_prefix):
    import redis

    client = redis.Redis.from_url(live)
    pubsub = client.pubsub()
    pubsub.psubscribe(redis_handle.channel(f"{redis_prefix}*"))
    pubsub.get_message(timeout=1)
    a, b = f"{redis_prefix}a", f"{redis_prefix}b"
    redis_handle.publish_updates([(a, {"message": "created"}), (b, {"message": "other"}),
                                  (a, {"message": "step x succeeded"}), (a, {"message": "succeeded"})])
    for n in range(50):  # many transitions queued at once keep their order
        redis_handle.publish_updates([(b, {"message": f"n{n}"})])
    assert redis_handle.flush_updates(5)
    got = _collect(pubsub, 52)
    pubsub.close()
    client.close()
    by_channel: dict[str, list[list[str]]] = {}
    for message in got:
        by_channel.setdefault(message["channel"], []).append([u["message"] for u in message["updates"]])
    assert by_channel[redis_handle.channel(a)] == [["created", "step x succeeded", "succeeded"]]
    assert by_channel[redis_handle.channel(b)] == [["other"]] + [[f"n{n}"] for n in range(50)]


def test_redis_down_never_blocks_or_raises():
    redis_handle.configure_redis("redis://127.0.0.1:1/0")  # nothing listens on port 1
    try:
        started = time.monotonic()
        for _ in range(100):
            redis_handle.publish_updates([("x", {"message": "lost"})])
        assert time.monotonic() - started < 0.5  # queued, not sent on this thread
        assert redis_handle.flush_updates(10)  # the sender gives up on them and drains
    finally:
        redis_handle.configure_redis("")
