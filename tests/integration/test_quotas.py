"""Workspace quotas and the bounded trigger queue, on real RabbitMQ, PostgreSQL and Redis.

* The ingress answers 429 (``Retry-After``, the limit named in the body) once a workspace
  has used up its webhook bucket; other workspaces are untouched, and nothing refused is
  queued. Two ingress processes share one bucket through Redis.
* The management API answers 429 over a workspace's run quota or at its cap of queued
  executions; the trigger actor ends an execution FAILED (reason named) instead of
  queueing it past the cap.
* ``triggers`` is declared with ``x-max-length`` and ``x-overflow: reject-publish``: a full
  queue nacks, and the ingress and the API answer 503 with ``Retry-After``; every 202 is
  in the queue. The workers' broker declares the same queue identically.

The settings come from environment mappings (``Settings.from_env``), as in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, unquote

import dramatiq
import httpx
import pika
import pytest
import uvicorn
from prometheus_client import REGISTRY

from shiftflow.kernel.broker import build_broker, install
from shiftflow.kernel.contracts import TriggerPayload
from shiftflow.kernel.db import bind_database
from shiftflow.kernel.enqueue import send
from shiftflow.kernel.settings import Settings, configure
from shiftflow.kernel.signatures import signed_headers
from shiftflow.models.manage import catalog
from shiftflow.models.tables import webhook_secrets
from shiftflow.models.tables.executions import Execution
from shiftflow.producers.app import create_app as create_full_app
from shiftflow.producers.ingress import hooks
from shiftflow.producers.ingress.app import create_app
from shiftflow.producers.ingress.hooks import HookInfo
from tests.integration.api_support import SIMPLE, seed_tenant, worker
from tests.support.ports import free_port
from tests.support.rabbitmq import VhostAdmin, queue_info
from tests.support.waiting import wait_for_http, wait_until

pytestmark = pytest.mark.integration

SECRET = "whsec_c2hpZnRmbG93LXRlc3Qtc2VjcmV0LTMyLWJ5dGVzISE="
WS_A = "aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa"
WS_B = "bbbbbbbb-bbbb-bbbb-bbbb-bbbbbbbbbbbb"
WF = "11111111-1111-1111-1111-111111111111"


def _hook(token: str, workspace: str) -> HookInfo:
    return HookInfo(token=token, scheme="standard", secrets=(SECRET,), workflow_id=WF, workspace_id=workspace,
                    active=True)


HOOKS = {"a": _hook("a", WS_A), "b": _hook("b", WS_B)}


class _Uvicorn(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # a test thread
        pass


@contextlib.contextmanager
def _serving(app: Any) -> Iterator[str]:
    port = free_port()
    server = _Uvicorn(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz", timeout=15)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def _env(real_env: dict[str, str], **values: str) -> dict[str, str]:
    return {**real_env, **{f"SHIFTFLOW_{k}": v for k, v in values.items()}}


def _post(base: str, token: str, delivery_id: str) -> httpx.Response:
    body = b'{"amount": 42}'
    headers = signed_headers("standard", SECRET, body, int(time.time()), delivery_id)
    headers["content-type"] = "application/json"
    return httpx.post(f"{base}/hooks/{token}", content=body, headers=headers, timeout=15)


def _depth(url: str, queue: str = "triggers") -> int:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        return int(connection.channel().queue_declare(queue, passive=True).method.message_count)
    finally:
        connection.close()


def _take(url: str, count: int, queue: str = "triggers") -> None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        for _ in range(count):
            method, _, _ = channel.basic_get(queue, auto_ack=True)
            assert method is not None
    finally:
        connection.close()


def _queue_arguments(amqp_url: str, queue: str = "triggers") -> dict[str, Any]:
    return dict(queue_info(amqp_url, queue)["arguments"])


def _queue_type(amqp_url: str, queue: str) -> str:
    return str(queue_info(amqp_url, queue)["type"])


# --------------------------------------------------------------------------- webhook quotas


def test_a_workspace_over_its_webhook_quota_gets_429_and_other_workspaces_do_not(real_env: dict[str, str]) -> None:
    settings = Settings.from_env(_env(real_env, QUOTA_WEBHOOKS_PER_SECOND="0.2", QUOTA_WEBHOOKS_BURST="3"))
    with _serving(create_app(settings, lookup=HOOKS.get)) as base:
        answers = [_post(base, "a", f"a{i}") for i in range(6)]
        assert [r.status_code for r in answers] == [202, 202, 202, 429, 429, 429]
        refused = answers[3]
        assert 1 <= int(refused.headers["retry-after"]) <= 5  # the next token is due in 5 s at most
        assert "0.2 webhooks/s (burst 3)" in refused.json()["error"]
        assert _post(base, "b", "b0").status_code == 202  # another workspace has its own bucket
    assert _depth(real_env["SHIFTFLOW_AMQP_URL"]) == 4  # the refused webhooks were never queued


def test_two_ingress_processes_share_one_bucket_through_redis(real_env: dict[str, str]) -> None:
    settings = Settings.from_env(_env(real_env, QUOTA_WEBHOOKS_PER_SECOND="0.01", QUOTA_WEBHOOKS_BURST="4"))
    with _serving(create_app(settings, lookup=HOOKS.get)) as one, _serving(
        create_app(settings, lookup=HOOKS.get)
    ) as two:
        statuses = [_post(base, "a", f"a{i}").status_code for i in range(5) for base in (one, two)]
    # Four tokens for the workspace, whichever process asks (each alone would admit four).
    assert statuses.count(202) == 4 and statuses.count(429) == 6, statuses


def test_a_workspace_override_set_by_the_operator_applies_at_the_ingress(
    real_env: dict[str, str], pg_url: str
) -> None:
    from shiftflow.models.manage import quotas
    from shiftflow.models.manage.access import Principal

    bind_database(pg_url)
    settings = configure(Settings.from_env(_env(real_env, QUOTA_WEBHOOKS_PER_SECOND="0.01", QUOTA_WEBHOOKS_BURST="2")))
    workflow = catalog.apply_definition(catalog.ensure_workspace("roomy"), {
        "name": "hooked", "trigger": {"type": "webhook"},
        "steps": [{"id": "shape", "type": "transform", "with": {"output": {"ok": True}}}],
    }).workflow
    hook = catalog.create_webhook(workflow)
    quotas.set_quotas(Principal.operator(), "roomy", {"quota_webhooks_burst": 5})
    lookup = hooks.make_lookup()  # reads the workspace's quota with the hook

    def post(i: int) -> int:
        body = b'{"n": 1}'
        headers = signed_headers("standard", webhook_secrets.reveal(hook)[0], body, int(time.time()), f"r{i}")
        headers["content-type"] = "application/json"
        return httpx.post(f"{base}/hooks/{hook.token}", content=body, headers=headers, timeout=15).status_code

    with _serving(create_app(settings, lookup=lookup)) as base:
        statuses = [post(i) for i in range(7)]
    assert statuses == [202] * 5 + [429] * 2  # its own burst of 5, the default rate


# --------------------------------------------------------------------------- the bounded queue


def _queue_full_count() -> float:
    # The ingress serves its metrics on a listener of its own; read its registry directly.
    return REGISTRY.get_sample_value("shiftflow_webhooks_total", {"outcome": "queue_full"}) or 0.0


def test_a_full_trigger_queue_answers_503_and_never_a_lost_202(real_env: dict[str, str]) -> None:
    amqp_url = real_env["SHIFTFLOW_AMQP_URL"]
    settings = Settings.from_env(_env(real_env, TRIGGER_QUEUE_MAX_LENGTH="5", QUOTA_WEBHOOKS_PER_SECOND="0"))
    full_before = _queue_full_count()
    with _serving(create_app(settings, lookup=HOOKS.get)) as base:
        answers = [_post(base, "a" if i % 2 else "b", f"d{i}") for i in range(12)]
        statuses = [r.status_code for r in answers]
        assert statuses.count(202) == 5 and statuses.count(503) == 7, statuses
        assert _depth(amqp_url) == 5  # exactly the accepted ones: none dropped, none extra
        full = answers[statuses.index(503)]
        assert full.headers["retry-after"] == "5"
        assert "trigger queue is full" in full.json()["error"]
        _take(amqp_url, 2)  # a consumer takes two: there is room again
        assert [_post(base, "a", f"e{i}").status_code for i in range(3)] == [202, 202, 503]
        assert _queue_full_count() - full_before == 8  # the ingress counts what it refused, by reason
    assert _depth(amqp_url) == 5
    assert _queue_arguments(amqp_url)["x-overflow"] == "reject-publish"
    assert _queue_arguments(amqp_url)["x-max-length"] == 5
    # The workers' broker declares the queue with the same arguments (else PRECONDITION_FAILED).
    broker = build_broker(settings)
    try:
        broker.declare_queue("triggers", ensure=True)
    finally:
        broker.close()


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_the_workers_broker_and_the_publisher_declare_the_same_queues(
    real_env: dict[str, str], queue_type: str
) -> None:
    from shiftflow.kernel.confirm_publisher import ConfirmPublisher, queue_declarations

    amqp_url = real_env["SHIFTFLOW_AMQP_URL"]
    settings = Settings.from_env(_env(real_env, TRIGGER_QUEUE_MAX_LENGTH="7", QUEUE_TYPE=queue_type))
    broker = build_broker(settings)  # a worker declares first here
    try:
        broker.declare_queue("triggers", ensure=True)
        broker.declare_queue("steps", ensure=True)
    finally:
        broker.close()
    for name, arguments in queue_declarations("triggers", 7, queue_type):
        assert _queue_arguments(amqp_url, name) == arguments, name
        assert _queue_type(amqp_url, name) == queue_type, name  # the .DQ and .XQ too
    for name, arguments in queue_declarations("steps", 0, queue_type):
        assert _queue_arguments(amqp_url, name) == arguments, name  # only triggers is bounded
        assert _queue_type(amqp_url, name) == queue_type, name
    assert "x-max-length" not in _queue_arguments(amqp_url, "triggers.DQ")
    if queue_type == "quorum":
        # No x-max-priority (RabbitMQ < 4 refuses it on quorum queues), and a broker delivery
        # limit that leaves quarantining to ShiftFlow (test_quarantine's quorum case).
        assert "x-max-priority" not in _queue_arguments(amqp_url, "triggers")
        assert _queue_arguments(amqp_url, "steps")["x-delivery-limit"] > 1_000 + 1

    async def publish() -> None:  # the ingress declares the same queues after the worker
        publisher = ConfirmPublisher(settings.amqp_urls, max_lengths={"triggers": 7}, queue_type=queue_type)
        try:
            await publisher.send("triggers.start", TriggerPayload(
                workflow_id="00000000-0000-0000-0000-000000000001", dedup_key="standard:q1", source="webhook",
                data={}, received_at=1_700_000_000.0,
            ))
        finally:
            await publisher.close()

    asyncio.run(publish())
    assert _depth(amqp_url) == 1


def test_an_existing_unbounded_queue_refuses_the_new_declare_and_a_policy_bounds_it_instead(
    real_env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """What an operator meets on upgrade (README "Bounded trigger queue")."""
    amqp_url = real_env["SHIFTFLOW_AMQP_URL"]
    old = Settings.from_env(_env(real_env, TRIGGER_QUEUE_MAX_LENGTH="0", QUOTA_WEBHOOKS_PER_SECOND="0"))
    broker = build_broker(old)  # the queue as an earlier version declared it
    try:
        broker.declare_queue("triggers", ensure=True)
    finally:
        broker.close()
    assert "x-max-length" not in _queue_arguments(amqp_url)

    new = Settings.from_env(_env(real_env, TRIGGER_QUEUE_MAX_LENGTH="5", QUOTA_WEBHOOKS_PER_SECOND="0"))
    with caplog.at_level(logging.ERROR, logger="shiftflow.kernel.confirm_publisher"):
        with _serving(create_app(new, lookup=HOOKS.get)) as base:
            assert _post(base, "a", "x0").status_code == 503  # nothing is accepted, nothing lost
            wait_until(lambda: "SHIFTFLOW_TRIGGER_QUEUE_MAX_LENGTH" in caplog.text, timeout=10)
    assert "inequivalent arg 'x-max-length'" in caplog.text

    # Keeping the old shape (0) and bounding the queue with a policy works without a restart.
    vhost = quote(unquote(amqp_url.rsplit("/", 1)[1]), safe="")
    VhostAdmin._request("PUT", f"/policies/{vhost}/shiftflow-triggers", {
        "pattern": "^triggers$", "apply-to": "queues", "priority": 1,
        "definition": {"max-length": 3, "overflow": "reject-publish", "queue-mode": "lazy"},
    })
    wait_until(
        lambda: VhostAdmin._request("GET", f"/queues/{vhost}/triggers")[1].get("policy") == "shiftflow-triggers",
        timeout=10,
    )
    with _serving(create_app(old, lookup=HOOKS.get)) as base:
        statuses = [_post(base, "a", f"p{i}").status_code for i in range(5)]
    assert statuses == [202, 202, 202, 503, 503]
    assert _depth(amqp_url) == 3


# --------------------------------------------------------------------------- the management API


@pytest.fixture
def bound_broker(real_env: dict[str, str]) -> Iterator[None]:
    """The process's Dramatiq broker on the test's vhost, without a worker (nothing consumes)."""
    previous = dramatiq.get_broker()
    yield
    dramatiq.set_broker(previous)


def test_api_runs_over_the_run_quota_get_429_and_a_full_queue_gets_503(
    real_env: dict[str, str], bound_broker: None
) -> None:
    env = _env(real_env, QUOTA_RUNS_PER_SECOND="0.2", QUOTA_RUNS_BURST="2", TRIGGER_QUEUE_MAX_LENGTH="3")
    settings = configure(Settings.from_env(env))
    bind_database(settings.database_url)
    broker = install(build_broker(settings, worker=False))
    try:
        a, b = seed_tenant("alpha", ("MEMBER",)), seed_tenant("beta", ("MEMBER",))
        flow_a = catalog.apply_definition(a.workspace, SIMPLE).workflow
        flow_b = catalog.apply_definition(b.workspace, SIMPLE).workflow
        with _serving(create_full_app(settings)) as base, httpx.Client(base_url=base + "/api/v1", timeout=30) as c:
            def run(tenant: Any, workflow: Any) -> httpx.Response:
                return c.post(f"/workflows/{workflow.id}/run", json={"input": {"n": 1}}, headers=tenant.auth("MEMBER"))

            answers = [run(a, flow_a) for _ in range(3)]
            assert [r.status_code for r in answers] == [202, 202, 429]
            assert "run quota exceeded" in answers[2].json()["error"]
            assert "0.2 executions/s (burst 2)" in answers[2].json()["error"]
            assert 1 <= int(answers[2].headers["retry-after"]) <= 5
            assert run(b, flow_b).status_code == 202  # beta's own bucket; the queue now holds 3
            full = run(b, flow_b)
            assert full.status_code == 503, full.text
            assert "trigger queue is full" in full.json()["error"]
            assert full.headers["retry-after"] == "5"
    finally:
        broker.close()
    assert _depth(real_env["SHIFTFLOW_AMQP_URL"]) == 3


LANE = {
    "name": "lane",
    "trigger": {"type": "manual"},
    "concurrency": {"limit": 1},
    "steps": [
        {"id": "nap", "type": "wait", "with": {"seconds": 3600}},
        {"id": "after", "type": "transform", "with": {"output": {"ok": True}}},
    ],
}


def test_executions_past_the_workspaces_queued_cap_fail_with_the_reason(real_env: dict[str, str]) -> None:
    env = _env(real_env, QUOTA_MAX_QUEUED_EXECUTIONS="2")
    with worker(env, threads=4) as settings:
        tenant = seed_tenant("lanes", ("MEMBER",))
        workflow = catalog.apply_definition(tenant.workspace, LANE).workflow

        def trigger(key: str) -> Execution:
            send("triggers.start", TriggerPayload(workflow_id=str(workflow.id), dedup_key=key, source="manual"))
            return wait_until(lambda: Execution.get_or_none(Execution.dedup_key == key), timeout=30)

        first = trigger("k1")
        wait_until(lambda: Execution.get_by_id(first.id).status == "RUNNING", timeout=30)
        queued = [trigger("k2"), trigger("k3")]
        assert [Execution.get_by_id(e.id).status for e in queued] == ["PENDING", "PENDING"]
        refused = [trigger("k4"), trigger("k5")]
        for row in refused:
            row = wait_until(lambda r=row: (x := Execution.get_by_id(r.id)).status != "PENDING" and x, timeout=30)
            assert row.status == "FAILED"
            assert "cap of queued executions is 2" in row.error and "not queued" in row.error
        assert Execution.get_by_id(first.id).status == "RUNNING"  # the lane itself goes on

        with _serving(create_full_app(settings)) as base:
            answer = httpx.post(f"{base}/api/v1/workflows/{workflow.id}/run", json={},
                                headers=tenant.auth("MEMBER"), timeout=30)
        assert answer.status_code == 429, answer.text
        assert "2 executions waiting for a concurrency slot" in answer.json()["error"]
        assert answer.headers["retry-after"] == "5"


# --------------------------------------------------------------------------- the operator CLI


def test_the_operator_sets_and_shows_a_workspaces_quotas(real_env: dict[str, str]) -> None:
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    shiftflow = str(Path(sys.executable).with_name("shiftflow"))
    env = {**os.environ, **real_env}

    def cli(*args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([shiftflow, *args], env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == code, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
        return result

    cli("workspaces", "create", "roomy")
    shown = cli("quotas", "set", "roomy", "--webhooks-per-second", "500", "--max-queued-executions", "0").stdout
    assert "webhooks           500/s" in shown and "(workspace)" in shown and "no cap" in shown
    data = json.loads(cli("quotas", "show", "roomy", "--json").stdout)
    assert data["overrides"]["quota_webhooks_per_second"] == 500
    assert data["effective"]["webhooks_burst"] == 200  # the default, not overridden
    assert data["effective"]["max_queued_executions"] == 0
    cli("quotas", "set", "roomy", "--webhooks-per-second", "default")
    assert json.loads(cli("quotas", "show", "roomy", "--json").stdout)["effective"]["webhooks_per_second"] == 100

    bad = cli("quotas", "set", "roomy", "--webhooks-burst", "0", code=2)
    assert "--webhooks-burst" in bad.stderr and "at least 1" in bad.stderr
    assert "--runs-per-second" in cli("quotas", "set", "roomy", "--runs-per-second", "lots", code=2).stderr
    assert "does not exist" in cli("quotas", "set", "nowhere", "--runs-burst", "3", code=1).stderr
