"""Live updates on Redis: at most one message per execution per send of the background
thread (the transitions queued meanwhile coalesced, their lines in order), never blocking
or failing the caller."""

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


def test_one_message_per_execution_per_send_in_order(live, redis_prefix):
    import redis

    client = redis.Redis.from_url(live)
    pubsub = client.pubsub()
    pubsub.psubscribe(redis_handle.channel(f"{redis_prefix}*"))
    pubsub.get_message(timeout=1)
    a, b = f"{redis_prefix}a", f"{redis_prefix}b"
    sent_before = redis_handle.messages_published()
    redis_handle.publish_updates([(a, {"message": "created"}), (b, {"message": "other"}),
                                  (a, {"message": "step x succeeded"}), (a, {"message": "succeeded"})])
    for n in range(50):  # many transitions queued at once keep their order
        redis_handle.publish_updates([(b, {"message": f"n{n}"})])
    assert redis_handle.flush_updates(5)
    sent = redis_handle.messages_published() - sent_before
    got = _collect(pubsub, sent)
    pubsub.close()
    client.close()
    by_channel: dict[str, list[list[str]]] = {}
    for message in got:
        by_channel.setdefault(message["channel"], []).append([u["message"] for u in message["updates"]])
    assert len(got) == sent
    # Every line arrives, once, in the order it happened; the 51 transitions of ``b`` queued
    # within one send went out in fewer messages than transitions.
    assert by_channel[redis_handle.channel(a)] == [["created", "step x succeeded", "succeeded"]]
    lines_b = [line for message in by_channel[redis_handle.channel(b)] for line in message]
    assert lines_b == ["other"] + [f"n{n}" for n in range(50)]
    assert len(by_channel[redis_handle.channel(b)]) < 51


def test_coalesce_merges_one_channels_messages_in_order():
    """One send: one PUBLISH per channel, at the place of its first message, lines in order;
    the message is the JSON the subscribers read (``{"updates": [...]}``)."""
    queued = [("c1", redis_handle._lines([{"message": "created"}])),
              ("c2", redis_handle._lines([{"message": "other", "n": 1}])),
              ("c1", redis_handle._lines([{"message": "step a succeeded"}, {"message": "step b succeeded"}])),
              ("c1", redis_handle._lines([{"message": "succeeded"}]))]
    merged = redis_handle._coalesce(queued)
    assert [name for name, _ in merged] == ["c1", "c2"]
    assert json.loads(merged[0][1]) == {"updates": [{"message": "created"}, {"message": "step a succeeded"},
                                                    {"message": "step b succeeded"}, {"message": "succeeded"}]}
    assert json.loads(merged[1][1]) == {"updates": [{"message": "other", "n": 1}]}
    # A single transition is byte for byte the message it always was.
    alone = redis_handle._coalesce([("c3", redis_handle._lines([{"message": "x", "stepId": None}]))])
    assert alone == [("c3", json.dumps({"updates": [{"message": "x", "stepId": None}]}))]


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


def test_a_stopping_worker_sends_its_queued_updates(live, redis_prefix):
    """Updates wait up to a linger before they are sent: a worker process that stops (its
    message threads joined) sends what is queued before it exits, a final state included."""
    from shiftflow.kernel.broker import middleware_for
    from shiftflow.kernel.middleware import LiveUpdatesLifecycle
    from shiftflow.kernel.settings import Settings

    assert redis_handle.LINGER_SECONDS >= 0.05  # the window this test relies on
    assert any(isinstance(m, LiveUpdatesLifecycle)
               for m in middleware_for(Settings(redis_url=live), worker=True))
    redis_handle.flush_updates(5)
    before = redis_handle.messages_published()
    redis_handle.publish_updates([(f"{redis_prefix}z", {"message": "execution succeeded"})])
    LiveUpdatesLifecycle().after_worker_shutdown(None, None)
    assert redis_handle.messages_published() == before + 1


def test_a_process_that_exits_sends_its_queued_updates(live, redis_prefix):
    """An API or ingress process that exits normally right after a transition still sends
    its live update (the sender is a daemon thread that lingers before it sends)."""
    import subprocess
    import sys

    import redis

    client = redis.Redis.from_url(live)
    pubsub = client.pubsub()
    pubsub.psubscribe(redis_handle.channel(f"{redis_prefix}*"))
    pubsub.get_message(timeout=1)
    code = ("from shiftflow.kernel import redis_handle as r; import sys; r.configure_redis(sys.argv[1]); "
            "r.publish_updates([(sys.argv[2], {'message': 'execution succeeded'})])")
    subprocess.run([sys.executable, "-c", code, live, f"{redis_prefix}exit"], check=True, timeout=30)
    got = _collect(pubsub, 1, timeout=3)
    pubsub.close()
    client.close()
    assert [u["message"] for m in got for u in m["updates"]] == ["execution succeeded"]
