"""A webhook burst on a three-node RabbitMQ cluster of quorum queues: the node leading the
busiest queues is killed mid-burst and brought back while the burst goes on; no accepted
webhook lost, none run twice, no ``effect: once`` call repeated.

Three nodes of this test's own (tests/own_rabbitmq_cluster.py: own node names, ports, data
directories, one epmd and cookie of their own; joined with ``rabbitmqctl join_cluster``),
quorum queues. Three ShiftFlow processes, each given the three nodes' URLs in its own
order (SHIFTFLOW_AMQP_URL, failover to the next): the ingress (in this process), a worker
pool on ``triggers`` and ``steps`` and one on ``tools``. ``SENDERS`` threads post
``WEBHOOKS`` signed webhooks at a steady pace, retrying a 503 or a refused connection as a
webhook sender does, for a workflow that makes an outside call once (an ``http`` step with
``effect: once`` to the rig's counting service) and then a transform. Once a third were
accepted, the node leading the busiest of ``triggers`` and ``tools`` (most messages ready)
is SIGKILLed; after the first 202 that follows, it is started again with the same name and
data directory, while the senders go on, and the test waits until it runs in the cluster
and every queue has its three members online again. The last third of the webhooks is
held back until then, so the burst spans the outage and goes on through the whole cluster.

Afterwards every webhook answered 202 has exactly one execution, SUCCEEDED (the reliability
checker), and the outside service received exactly one call per execution. The test prints
the time to recover (the first 202 after the kill, and until the cluster was whole again)
and the 503s answered meanwhile, and adds its row to the scenario table.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.own_rabbitmq_cluster import OwnRabbitMQCluster

from .checker import check
from .fault_checker import Numbers
from .rig import Rig
from .scenarios import RESULTS
from .waiting import wait_terminal
from .worker_pool import WorkerPool
from .workflows import http_step

pytestmark = [pytest.mark.acceptance, pytest.mark.reliability]

WEBHOOKS = 300
SENDERS = 6
#: Seconds each sender waits after a 202 (a steady burst of about 10 webhooks a second).
PACE = 0.5
#: Webhooks from this one on wait until the restarted node is back and the queues whole.
HELD_FROM = WEBHOOKS * 2 // 3
#: The queues this workflow's messages go through.
QUEUES = ["triggers", "steps", "tools"]


def flow(url: str) -> dict[str, object]:
    """A webhook workflow: one outside call made once (on ``tools``), then a transform."""
    return {
        "name": "burst",
        "trigger": {"type": "webhook"},
        "vars": {"url": url},
        "steps": [
            http_step("call", "{{ trigger.n }}", effect="once"),
            {"id": "done", "type": "transform", "with": {"output": {"n": "{{ steps.call.output.json.echo.n }}"}}},
        ],
    }


def rotation(urls: list[str], start: int) -> str:
    """SHIFTFLOW_AMQP_URL listing every node, starting at node ``start``."""
    return ",".join(urls[start:] + urls[:start])


class Senders:
    """Threads posting signed webhooks until each got its 202 (bounded in time)."""

    def __init__(self, base: str, token: str, secret: str) -> None:
        self.base, self.token, self.secret = base, token, secret
        self.accepted: dict[str, float] = {}  # dedup key -> monotonic time of its 202
        self.refusals: list[tuple[float, int]] = []  # (monotonic time, status; 0: no answer)
        self.reasons: dict[str, int] = {}  # status and body of the refusals, counted
        self.done_at = 0.0
        #: Set once the killed node is back; the webhooks from ``HELD_FROM`` on wait for it.
        self.back = threading.Event()
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
                self.refusals.append((time.monotonic(), answer.status_code if answer is not None else 0))
                self.reasons[reason] = self.reasons.get(reason, 0) + 1
            time.sleep(0.1)

    def run(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds

        def loop() -> None:
            with httpx.Client(timeout=15) as client:
                while (i := self._take()) is not None:
                    if i >= HELD_FROM:
                        self.back.wait(max(0.0, deadline - time.monotonic()))
                    self._send(client, i, deadline)
                    time.sleep(PACE)

        threads = [threading.Thread(target=loop, daemon=True) for _ in range(SENDERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(seconds + 30)
        self.done_at = time.monotonic()

    def refused(self, status: int, start: float = 0.0, end: float = float("inf")) -> int:
        """How many answers with ``status`` came between ``start`` and ``end``."""
        with self._lock:
            return sum(1 for at, s in self.refusals if s == status and start <= at <= end)


def busiest_leader(queues: dict[str, dict[str, object]]) -> tuple[str, dict[str, tuple[str, int]]]:
    """The node leading the most messages of ``triggers`` and ``tools`` (the leader of
    ``triggers`` on a tie), and each of the two queues' leader and messages."""
    seen = {q: (str(queues[q]["leader"]), int(queues[q]["messages"])) for q in ("triggers", "tools")}  # type: ignore[call-overload]
    load: Counter[str] = Counter()
    for leader, messages in seen.values():
        load[leader] += messages
    top = max(load.values())
    leader = seen["triggers"][0] if load[seen["triggers"][0]] == top else max(load, key=load.__getitem__)
    return leader, seen


@pytest.mark.timeout(600)
def test_killing_and_restarting_the_busiest_leader_loses_and_repeats_nothing(
    real_env: dict[str, str], pg_url: str, tmp_path: Path
) -> None:
    from shiftflow.kernel.db import bind_database
    from shiftflow.kernel.settings import Settings, configure
    from shiftflow.models.manage import catalog
    from shiftflow.models.tables import webhook_secrets
    from shiftflow.models.tables.workflows import Workflow
    from shiftflow.producers.ingress.app import create_app
    from tests.integration.api_support import serve

    started = time.monotonic()
    cluster = OwnRabbitMQCluster()
    try:
        urls = cluster.start()
        env = {"SHIFTFLOW_AMQP_URL": rotation(urls, 0), "SHIFTFLOW_QUEUE_TYPE": "quorum",
               "SHIFTFLOW_QUOTA_WEBHOOKS_PER_SECOND": "0", "SHIFTFLOW_PUBLISH_TIMEOUT_SECONDS": "3"}
        with Rig(real_env, pg_url, tmp_path / "logs", extra_env=env) as rig:
            workflow_id = rig.workflow(flow(rig.service.url))
            settings = configure(Settings.from_env({**real_env, **env}))
            db = bind_database(pg_url)
            with db.connection_context():
                hook = catalog.create_webhook(Workflow.get_by_id(workflow_id))
                secret = webhook_secrets.reveal(hook)[0]
            # Two pools as on two machines, each listing the nodes starting at another one.
            front = WorkerPool({**rig.env, "SHIFTFLOW_AMQP_URL": rotation(urls, 1)}, tmp_path / "front",
                               queues=("triggers", "steps"), processes=1, threads=4)
            calls = WorkerPool({**rig.env, "SHIFTFLOW_AMQP_URL": rotation(urls, 2)}, tmp_path / "calls",
                               queues=("tools",), processes=1, threads=4)
            for pool in (front, calls):
                (pool.log_dir).mkdir()
                rig.pools.append(pool)
                pool.start()
            for pool in (front, calls):
                pool.wait_ready(60)
            with serve(create_app(settings)) as base:
                senders = Senders(base, hook.token, secret)
                burst = threading.Thread(target=senders.run, args=(150,), daemon=True)
                burst.start()
                while len(senders.accepted) < WEBHOOKS // 3 and burst.is_alive():
                    time.sleep(0.01)
                leader, seen = busiest_leader(cluster.queues())
                node = cluster.node_named(leader)
                killed_at = time.monotonic()
                cluster.kill(node)
                # Back once the survivors took over (the first 202 after the kill), as an
                # orchestrator restarts a crashed broker; bounded, should none come.
                while (not any(t > killed_at for t in list(senders.accepted.values()))
                       and time.monotonic() - killed_at < 20):
                    time.sleep(0.05)
                restart_at = time.monotonic()
                burst_on_at_restart = burst.is_alive()
                cluster.restart(node)
                cluster.wait_joined(QUEUES)
                whole_at = time.monotonic()
                senders.back.set()
                burst.join(180)
                after = sorted(t for t in senders.accepted.values() if t > killed_at)
                before = max(t for t in senders.accepted.values() if t <= killed_at)
            keys = sorted(senders.accepted)
            statuses = wait_terminal(pg_url, keys, front, stall=120)
            drained = time.monotonic() - whole_at
            recorded = rig.service.recorded()
            report = check(pg_url, keys, recorded)
            new_leaders = {q: str(cluster.queues()[q]["leader"]) for q in ("triggers", "tools")}
    finally:
        cluster.close()

    per_execution = Counter(call.execution_id for call in recorded)
    executions = {i for v in report.verdicts.values() for i in v.execution_ids}
    recover = (after[0] - killed_at) if after else float("inf")
    # Between 202s while the node was away (the held-back third would make a gap of its own).
    outage = [t for t in after if t <= whole_at]
    gaps = [b - a for a, b in zip([before, *outage], outage, strict=False)]
    during = senders.refused(503, killed_at, whole_at)
    others = {r: n for r, n in senders.reasons.items() if not r.startswith("503 ")}
    numbers = Numbers(
        "rabbitmq_restart", deliveries=WEBHOOKS, accepted=len(keys),
        refused=sum(1 for _, s in senders.refusals if 400 <= s < 500),
        answers_503=senders.refused(503),
        server_errors=sum(1 for _, s in senders.refusals if s >= 500 and s != 503),
        lost=report.counts["lost"], duplicated=report.counts["duplicated"] + report.counts["unexpected"],
        repeated=sum(1 for n in per_execution.values() if n > 1),
        false_failures=sum(n for s, n in report.statuses.items() if s != "SUCCEEDED"),
        succeeded=report.statuses.get("SUCCEEDED", 0), calls=len(recorded),
        drain_seconds=drained, seconds=time.monotonic() - started,
    )
    numbers.notes += [
        f"killed {leader}, leading {seen} (queue: leader, messages) after {WEBHOOKS // 3} accepted; "
        f"new leaders {new_leaders}",
        f"first 202 {recover:.2f}s after the kill (longest gap between 202s until the cluster was whole {max(gaps, default=0):.2f}s); "
        f"restarted {restart_at - killed_at:.1f}s after the kill, burst still on: {burst_on_at_restart}; "
        f"cluster whole (node running, every queue's 3 members online) {whole_at - killed_at:.1f}s after "
        f"the kill, {whole_at - restart_at:.1f}s after the restart; burst ended "
        f"{senders.done_at - killed_at:.1f}s after the kill",
        f"503s answered between the kill and the cluster whole again: {during} (all {numbers.answers_503}, "
        f"retried); other refusals: {others}",
        f"outside calls {len(recorded)} for {len(per_execution)} executions; {report.summary()}",
    ]
    RESULTS.append(numbers)
    print("\n" + numbers.report())
    assert len(keys) == WEBHOOKS, senders.reasons
    assert len(after) > WEBHOOKS // 2  # the kill fell inside the burst
    assert burst_on_at_restart  # and the restart too
    # Webhooks were accepted while the node was down and after it was back.
    assert any(t < whole_at for t in after) and sum(1 for t in after if t > whole_at) >= WEBHOOKS - HELD_FROM
    assert set(statuses.values()) == {"SUCCEEDED"}
    assert report.counts == {"completed_once": WEBHOOKS, "lost": 0, "duplicated": 0, "unexpected": 0}, (
        report.problems()
    )
    assert report.late_calls == [] and report.stray_calls == []
    # Each outside call made once: one call per execution, none repeated, none missing.
    assert set(per_execution) == executions and set(per_execution.values()) == {1}, per_execution.most_common(3)
    assert numbers.passed, numbers.report()
