"""A webhook burst on a three-node RabbitMQ cluster of quorum queues, its busiest queue's
leader killed mid-burst: no accepted webhook lost, none run twice.

Three nodes of this test's own (tests/own_rabbitmq_cluster.py: own node names, ports, data
directories, one epmd and cookie of their own; joined with ``rabbitmqctl join_cluster``).
Every ShiftFlow process gets all three URLs (SHIFTFLOW_AMQP_URL) and quorum queues. The
ingress (in this process) takes ``WEBHOOKS`` signed webhooks from ``SENDERS`` threads that
retry a 503 or a refused connection as a webhook sender does; once a third were accepted,
the node leading ``triggers`` (the only queue this workflow uses) is SIGKILLed. Afterwards
every webhook answered 202 has exactly one execution, SUCCEEDED, and the test prints how
long no publish was confirmed (the time to recover).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.own_rabbitmq_cluster import OwnRabbitMQCluster

from .checker import check
from .rig import Rig
from .waiting import wait_terminal

pytestmark = [pytest.mark.acceptance, pytest.mark.reliability]

WEBHOOKS = 300
SENDERS = 6
FLOW = {
    "name": "burst",
    "trigger": {"type": "webhook"},
    "steps": [{"id": "done", "type": "transform", "with": {"output": {"n": "{{ trigger.n }}"}}}],
}


class Senders:
    """Threads posting signed webhooks until each got its 202 (bounded in time)."""

    def __init__(self, base: str, token: str, secret: str) -> None:
        self.base, self.token, self.secret = base, token, secret
        self.accepted: dict[str, float] = {}  # dedup key -> monotonic time of its 202
        self.refused = 0
        self.reasons: dict[str, int] = {}  # status and body of the refusals, counted
        self._lock = threading.Lock()
        self._next = 0

    def _take(self) -> int | None:
        with self._lock:
            if self._next >= WEBHOOKS:
                return None
            self._next += 1
            return self._next - 1

    def _send(self, client: httpx.Client, i: int, deadline: float) -> None:
        from shiftflow.kernel.signatures import signed_headers

        raw = json.dumps({"n": i}).encode()
        while time.monotonic() < deadline:
            headers = signed_headers("standard", self.secret, raw, int(time.time()), f"msg_burst_{i}")
            headers["content-type"] = "application/json"
            try:
                answer = client.post(f"{self.base}/hooks/{self.token}", content=raw, headers=headers)
            except httpx.HTTPError:
                answer = None
            if answer is not None and answer.status_code == 202:
                with self._lock:
                    self.accepted[f"standard:msg_burst_{i}"] = time.monotonic()
                return
            reason = f"{answer.status_code} {answer.text[:160]}" if answer is not None else "no answer"
            with self._lock:
                self.refused += 1
                self.reasons[reason] = self.reasons.get(reason, 0) + 1
            time.sleep(0.1)

    def run(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds

        def loop() -> None:
            with httpx.Client(timeout=15) as client:
                while (i := self._take()) is not None:
                    self._send(client, i, deadline)
                    time.sleep(0.01)

        threads = [threading.Thread(target=loop, daemon=True) for _ in range(SENDERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(seconds + 30)


@pytest.mark.timeout(600)
def test_killing_the_leader_of_the_busiest_queue_loses_no_accepted_webhook(
    real_env: dict[str, str], pg_url: str, tmp_path: Path
) -> None:
    from shiftflow.kernel.db import bind_database
    from shiftflow.kernel.settings import Settings, configure
    from shiftflow.models.manage import catalog
    from shiftflow.models.tables import webhook_secrets
    from shiftflow.models.tables.workflows import Workflow
    from shiftflow.producers.ingress.app import create_app
    from tests.integration.api_support import serve

    cluster = OwnRabbitMQCluster()
    try:
        urls = cluster.start()
        env = {"SHIFTFLOW_AMQP_URL": ",".join(urls), "SHIFTFLOW_QUEUE_TYPE": "quorum",
               "SHIFTFLOW_QUOTA_WEBHOOKS_PER_SECOND": "0", "SHIFTFLOW_PUBLISH_TIMEOUT_SECONDS": "3"}
        with Rig(real_env, pg_url, tmp_path / "logs", extra_env=env) as rig:
            workflow_id = rig.workflow(FLOW)
            settings = configure(Settings.from_env({**real_env, **env}))
            db = bind_database(pg_url)
            with db.connection_context():
                hook = catalog.create_webhook(Workflow.get_by_id(workflow_id))
                secret = webhook_secrets.reveal(hook)[0]
            pool = rig.pool(processes=2, threads=4)
            pool.start()
            pool.wait_ready()
            # The workers declared the queues; the leader stays put until a node fails.
            leader = cluster.leader_of("triggers")
            with serve(create_app(settings)) as base:
                senders = Senders(base, hook.token, secret)
                burst = threading.Thread(target=senders.run, args=(180,), daemon=True)
                burst.start()
                while len(senders.accepted) < WEBHOOKS // 3 and burst.is_alive():
                    time.sleep(0.01)
                killed_at = time.monotonic()
                cluster.kill(cluster.node_named(leader))
                burst.join(240)
                after = sorted(t for t in senders.accepted.values() if t > killed_at)
                before = max(t for t in senders.accepted.values() if t <= killed_at)
            keys = sorted(senders.accepted)
            statuses = wait_terminal(pg_url, keys, pool, stall=120)
            report = check(pg_url, keys)
            new_leader = cluster.leader_of("triggers")
    finally:
        cluster.close()

    recover = (after[0] - killed_at) if after else float("inf")
    gaps = [b - a for a, b in zip([before, *after], after, strict=False)]
    print(
        f"\nkilled {leader} (leader of triggers) after {WEBHOOKS // 3} accepted; new leader {new_leader}; "
        f"first 202 {recover:.2f}s after the kill, longest gap between 202s {max(gaps, default=0):.2f}s; "
        f"{len(senders.accepted)} accepted, {senders.refused} refused answers retried: {senders.reasons}\n"
        f"{report.summary()}"
    )
    assert len(senders.accepted) == WEBHOOKS
    assert len(after) > WEBHOOKS // 2  # the kill fell inside the burst
    assert new_leader != leader
    assert set(statuses.values()) == {"SUCCEEDED"}
    assert report.counts == {"completed_once": WEBHOOKS, "lost": 0, "duplicated": 0, "unexpected": 0}, (
        report.problems()
    )

