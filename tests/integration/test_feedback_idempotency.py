"""A retried feedback batch (``POST /pattern-workspaces/{id}/feedback`` with the same
``Idempotency-Key``) gets the same answer and starts no second agent run; the same key with
another batch is refused naming the key, with nothing written. On the real API, PostgreSQL
and RabbitMQ."""

from __future__ import annotations

import httpx
import pytest

from shiftflow.models.tables.executions import Execution
from shiftflow.models.tables.patterns import FeedbackItem, PatternRun, PatternWorkspace
from shiftflow.producers.app import create_app
from tests.integration.api_support import seed_tenant, serve, worker

pytestmark = pytest.mark.integration

BATCH = {"items": [{"content": "the swing high at 10:05 was missed"},
                   {"content": "too many lows", "data": {"at": "10:20"}}]}


@pytest.fixture
def api(real_env):
    with worker(real_env) as settings:
        tenant = seed_tenant("fbk")
        with serve(create_app(settings)) as base:
            with httpx.Client(base_url=base + "/api/v1", timeout=15) as client:
                yield client, tenant


def _counts(pattern_id: str) -> tuple[int, int, int, int]:
    return (PatternRun.select().where(PatternRun.pattern == pattern_id).count(),
            FeedbackItem.select().where(FeedbackItem.pattern == pattern_id).count(),
            Execution.select().count(),
            PatternWorkspace.get_by_id(pattern_id).feedback_count)


def test_the_same_batch_sent_twice_with_one_idempotency_key_starts_one_run(api):
    c, tenant = api
    made = c.post("/pattern-workspaces", json={"pattern_type": "swings", "name": "Swings"}, headers=tenant.auth())
    assert made.status_code == 201, made.text
    pattern_id = made.json()["id"]
    path = f"/pattern-workspaces/{pattern_id}/feedback"
    keyed = {**tenant.auth("MEMBER"), "Idempotency-Key": "batch-1"}

    first = c.post(path, json=BATCH, headers=keyed)
    again = c.post(path, json=BATCH, headers=keyed)  # a client retrying after a timeout

    assert first.status_code == again.status_code == 202, (first.text, again.text)
    assert again.json() == first.json()
    assert _counts(pattern_id) == (1, 2, 1, 2)

    # The same key with another batch: refused naming the key, nothing written.
    other = c.post(path, json={"items": [{"content": "something else"}]}, headers=keyed)
    assert other.status_code == 409, other.text
    assert "Idempotency-Key" in other.json()["error"] and "batch-1" in other.json()["error"]
    assert _counts(pattern_id) == (1, 2, 1, 2)

    # Another key, or none, is another batch: another run.
    second = c.post(path, json=BATCH, headers={**tenant.auth("MEMBER"), "Idempotency-Key": "batch-2"})
    assert second.status_code == 202 and second.json()["execution_id"] != first.json()["execution_id"]
    assert c.post(path, json=BATCH, headers=tenant.auth("MEMBER")).status_code == 202
    assert _counts(pattern_id) == (3, 6, 3, 6)

    # A malformed key is refused naming the header.
    bad = c.post(path, json=BATCH, headers={**tenant.auth("MEMBER"), "Idempotency-Key": "x" * 201})
    assert bad.status_code == 422 and "Idempotency-Key" in bad.json()["error"]
    assert _counts(pattern_id) == (3, 6, 3, 6)
