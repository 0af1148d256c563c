"""The secret canary (issue 11, finding 5): a connection secret never rests in clear.

A secret value (the canary) is planted in a workspace connection. Real ShiftFlow
processes (``shiftflow ingress`` with the management API, ``shiftflow workers`` on every
queue, their timer loops) run workflows that use every step type: condition, switch,
transform, http (the secret in the URL's query string, a header and the body; an answer
that echoes it; a 500 retried; a 400 whose echo is cut inside the secret; ``for_each``;
``effect: once``), wait, wait_event, approval (decided over the API), event, workflow (a
sub-workflow whose own http step uses the secret), stop, fail, price (the fake price
API) and sideshift_swap (the fake SideShift, settled). Definitions that put the secret
where it would be stored are refused, by ``shiftflow apply`` and by the API.

Then the canary, and every prefix of 8 characters or more of it, is looked for in:
a ``pg_dump`` of the test database; every collection of the MongoDB database; every key
of the Redis database; every message published on the test's RabbitMQ vhost (the
firehose tracer, enabled on that vhost only); the ingress's and the workers' output;
every GET of the management API for every object made; and the CLI's output for them.
Each place also has a positive control, so an empty capture cannot pass.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pika
import pytest
import redis
from pymongo import MongoClient

from shiftflow.fakes.prices import FakePriceServer
from shiftflow.fakes.sideshift import FakeSideShift, FakeSideShiftServer
from shiftflow.kernel.contracts import Queue
from shiftflow.kernel.db import bind_database
from shiftflow.kernel.settings import Settings, configure
from shiftflow.models.engine import connection_secrets
from shiftflow.models.tables.executions import Execution, StepExecution
from shiftflow.models.tables.sideshift_orders import SideShiftOrder
from tests.integration.api_support import seed_tenant
from tests.support.http_services import JsonService
from tests.support.ports import free_port
from tests.support.rabbitmq import VhostAdmin
from tests.support.waiting import wait_for_http, wait_until

pytestmark = pytest.mark.acceptance
SHIFTFLOW = str(Path(sys.executable).with_name("shiftflow"))

CANARY = "cAnArY-93e1b7d2f05a6c48"
REF = "{{ secrets.crm.token }}"
BTC = "bc1q" + "q" * 38
ETH = "0x" + "12" * 20
FINAL = ("SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT")


def _leaks(text: str) -> list[str]:
    """The canary's prefixes (8 characters or more) found in ``text``, longest first."""
    return [CANARY[:n] for n in range(len(CANARY), 7, -1) if CANARY[:n] in text][:1]


def _definitions(main: JsonService, failing: JsonService, rejecting: JsonService) -> dict[str, dict[str, Any]]:
    """Every step type, the secret only in what http steps send."""
    swap = {"type": "fixed", "deposit_coin": "eth", "deposit_network": "ethereum", "settle_coin": "btc",
            "settle_network": "bitcoin", "amount": "0.1", "settle_address": BTC, "refund_address": ETH}
    pad = "p" * (200 - len('{"received": {"p": "') - 8)  # the 4xx excerpt is cut inside the secret
    return {
        "canary-child": {"name": "canary-child", "trigger": {"type": "manual"}, "steps": [
            {"id": "c_call", "type": "http", "with": {
                "method": "POST", "url": main.url + "/child", "headers": {"X-Key": REF},
                "json": {"echo": "{{ trigger.echo }}", "k": REF}}},
            {"id": "c_shape", "type": "transform", "with": {"output": "{{ steps.c_call.output.json.received }}"}},
        ]},
        "canary-waiter": {"name": "canary-waiter", "trigger": {"type": "manual"}, "steps": [
            {"id": "w", "type": "wait_event", "with": {"key": "canary-go"}, "timeout": 180},
            {"id": "w_after", "type": "transform", "with": {"output": "{{ steps.w.output }}"}},
        ]},
        "canary": {"name": "canary", "trigger": {"type": "manual"}, "steps": [
            {"id": "call", "type": "http", "retry": {"max": 3, "backoff": 0.2, "jitter": False}, "with": {
                "method": "POST", "url": failing.url + "/main?key=" + REF,
                "headers": {"Authorization": "Bearer " + REF},
                "json": {"token": REF, "kind": "a", "note": "key=" + REF + ";"}}},
            {"id": "check", "type": "condition", "with": {"left": "{{ steps.call.output.status }}", "op": "==",
                                                          "right": 200}},
            {"id": "route", "type": "switch", "with": {"value": "{{ steps.call.output.json.received.kind }}"},
             "cases": {"a": ["on_a"]}, "default": ["other"]},
            {"id": "on_a", "type": "transform", "needs": ["route"],
             "with": {"output": {"echo": "{{ steps.call.output.json }}"}}},
            {"id": "other", "type": "transform", "needs": ["route"], "with": {"output": 0}},
            {"id": "each", "type": "http", "needs": ["on_a"], "for_each": "{{ trigger.items }}", "concurrency": 2,
             "with": {"method": "POST", "url": main.url + "/item?key=" + REF,
                      "json": {"i": "{{ item }}", "k": REF}}},
            {"id": "pause", "type": "wait", "needs": ["each"],
             "with": {"seconds": 0.3, "note": "{{ steps.call.output.json.received.token }}"}},
            {"id": "sub", "type": "workflow", "needs": ["pause"], "timeout": 120,
             "with": {"workflow": "canary-child", "input": {"echo": "{{ steps.on_a.output }}"}}},
            {"id": "notify", "type": "event", "needs": ["sub"],
             "with": {"key": "canary-go", "data": {"echo": "{{ steps.call.output.json }}",
                                                  "child": "{{ steps.sub.output }}"}}},
            {"id": "ok", "type": "approval", "needs": ["notify"], "timeout": 180,
             "with": {"message": "{{ steps.call.output.json.received.note }}"}},
            {"id": "quote", "type": "price", "needs": ["ok"], "with": {"coin": "ethereum", "vs_currency": "usd"}},
            {"id": "swap", "type": "sideshift_swap", "needs": ["quote"], "retry": {"max": 3, "backoff": 0.2},
             "with": swap},
            {"id": "end", "type": "stop", "needs": ["swap"],
             "with": {"why": "{{ steps.call.output.json.received.token }}"}},
            {"id": "after_end", "type": "transform", "needs": ["end"], "with": {"output": 1}},
        ]},
        "canary-fail": {"name": "canary-fail", "trigger": {"type": "manual"}, "steps": [
            {"id": "h", "type": "http", "with": {"method": "POST", "url": main.url + "/f?key=" + REF,
                                                 "json": {"k": REF}}},
            {"id": "f", "type": "fail", "with": {"message": "gave up: {{ steps.h.output.json }}"}},
        ]},
        "canary-4xx": {"name": "canary-4xx", "trigger": {"type": "manual"}, "steps": [
            {"id": "h", "type": "http", "effect": "once",
             "with": {"method": "POST", "url": rejecting.url + "/reject", "json": {"p": pad + REF}}},
        ]},
    }


#: Definitions that put the secret where it would be stored: each must be refused.
MISPLACED = {
    "transform": {"id": "x", "type": "transform", "with": {"output": REF}},
    "wait_event": {"id": "x", "type": "wait_event", "with": {"key": REF}},
    "event": {"id": "x", "type": "event", "with": {"key": "k", "data": {"t": REF}}},
    "workflow": {"id": "x", "type": "workflow", "with": {"workflow": "canary-child", "input": {"t": REF}}},
    "approval": {"id": "x", "type": "approval", "with": {"message": REF}},
    "wait": {"id": "x", "type": "wait", "with": {"seconds": 1, "note": REF}},
    "condition": {"id": "x", "type": "condition", "with": {"left": REF, "op": "==", "right": 1}},
    "switch": {"id": "x", "type": "switch", "with": {"value": REF}, "cases": {}},
    "stop": {"id": "x", "type": "stop", "with": {"why": REF}},
    "fail": {"id": "x", "type": "fail", "with": {"message": REF}},
    "price": {"id": "x", "type": "price", "with": {"coin": REF}},
    "sideshift_swap": {"id": "x", "type": "sideshift_swap", "with": {"settle_address": REF}},
}


#: The misplaced definitions also tried with ``shiftflow apply`` (the API tries every one).
CLI_CHECKED = ("event", "workflow", "wait_event")


class Stack:
    """The processes, their logs, and what the test saw (texts to search, by place)."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env, self.logs = env, logs
        self.procs: list[subprocess.Popen[bytes]] = []
        self.outputs: list[Any] = []
        self.seen: dict[str, list[str]] = {}
        self.trace = ""
        self.base = ""
        self.tenant: Any = None
        self.fake: Any = None
        self.services: dict[str, JsonService] = {}

    def record(self, place: str, text: str) -> str:
        self.seen.setdefault(place, []).append(text)
        return text

    def cli(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([SHIFTFLOW, *args], env=self.env, capture_output=True, text=True, timeout=90)
        self.record("cli", result.stdout + result.stderr)
        if ok:
            assert result.returncode == 0, f"shiftflow {' '.join(args)}: {result.stdout}{result.stderr}"
        return result

    def start(self, name: str, *args: str) -> None:
        out = open(self.logs / f"{name}.log", "wb")  # closed in stop()
        self.outputs.append(out)
        self.procs.append(subprocess.Popen([SHIFTFLOW, *args], env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                           start_new_session=True))

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        for out in self.outputs:
            out.close()
        self.outputs = []


def _trace_queue(amqp_url: str) -> str:
    """Turn the firehose tracer on for this test's vhost and queue every publish."""
    vhost = amqp_url.rsplit("/", 1)[1]
    admin = VhostAdmin()
    assert admin.api, "the RabbitMQ management API is needed to trace the test's vhost"
    admin._request("PUT", f"/vhosts/{quote(vhost, safe='')}", {"tracing": True})
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        channel.queue_declare("canary-trace", durable=False, auto_delete=False)
        channel.queue_bind("canary-trace", "amq.rabbitmq.trace", "publish.#")
    finally:
        connection.close()
    return "canary-trace"


def _published(amqp_url: str, queue: str) -> list[bytes]:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    bodies = []
    try:
        channel = connection.channel()
        while True:
            method, _props, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                return bodies
            bodies.append(body)
    finally:
        connection.close()


@pytest.fixture
def stack(real_env, tmp_path, pg_url):
    fake = FakeSideShift(enforce_rate_limits=False)
    sideshift = FakeSideShiftServer(fake).start()
    prices = FakePriceServer({"ethereum": "2500", "bitcoin": "50000"}).start()
    services = {"main": JsonService(), "failing": JsonService(), "rejecting": JsonService()}
    services["failing"].script = [500]
    services["rejecting"].script = [400]
    port = free_port()
    env = {**os.environ, **real_env, "SHIFTFLOW_SECRET_KEYS": "s" * 44, "SHIFTFLOW_INGRESS_PORT": str(port),
           "SHIFTFLOW_METRICS_PORT": "0", "SHIFTFLOW_SIDESHIFT_BASE_URL": sideshift.base_url,
           "SHIFTFLOW_SIDESHIFT_AFFILIATE_ID": fake.affiliate_id, "SHIFTFLOW_PRICE_API_URL": prices.url,
           "SHIFTFLOW_SIDESHIFT_POLL_SECONDS": "0.1", "SHIFTFLOW_SIDESHIFT_POLL_MAX_SECONDS": "0.4",
           "SHIFTFLOW_SIDESHIFT_SHIFTS_PER_MINUTE": "1000", "SHIFTFLOW_SIDESHIFT_QUOTES_PER_MINUTE": "1000"}
    logs = tmp_path / "logs"
    logs.mkdir()
    run = Stack(env, logs)
    run.trace = _trace_queue(real_env["SHIFTFLOW_AMQP_URL"])
    run.cli("migrate")
    configure(Settings.from_env(env))
    database = bind_database(pg_url)
    run.tenant = seed_tenant("canary", roles=("OWNER", "MEMBER", "VIEWER"))
    connection_secrets.store_connection(run.tenant.workspace.id, "crm", "crm", {"token": CANARY})
    run.fake, run.services, run.base = fake, services, f"http://127.0.0.1:{port}"
    try:
        run.start("ingress", "ingress", "--log-level", "info")
        run.start("workers", "workers", "--queues", *Queue.ALL, "--processes", "1", "--threads", "4")
        wait_for_http(f"{run.base}/healthz", timeout=30)
        yield run
    finally:
        run.stop()
        for service in services.values():
            service.close()
        prices.stop()
        sideshift.stop()
        database.close()


def _api(stack: Stack, method: str, path: str, role: str = "OWNER", **kwargs: Any) -> httpx.Response:
    response = httpx.request(method, stack.base + "/api/v1" + path, headers=stack.tenant.auth(role),
                             timeout=30, **kwargs)
    stack.record("api", response.text)
    return response


def _run(stack: Stack, workflow_id: str, data: dict[str, Any] | None = None) -> str:
    response = _api(stack, "POST", f"/workflows/{workflow_id}/run", role="MEMBER", json={"input": data or {}})
    assert response.status_code == 202, response.text
    return str(response.json()["execution_key"])


def _execution(key: str) -> Execution | None:
    return Execution.get_or_none(Execution.dedup_key == key)


def _final(key: str, timeout: float = 90) -> Execution:
    def done() -> Execution | None:
        row = _execution(key)
        return row if row is not None and row.status in FINAL else None

    try:
        return wait_until(done, timeout=timeout, interval=0.1)
    except TimeoutError:
        row = _execution(key)
        steps = [] if row is None else [(s.step_id, s.status, s.error) for s in
                                        StepExecution.select().where(StepExecution.execution == row.id)]
        raise AssertionError(f"{key}: {row and row.status} {steps}") from None


def _waiting(key: str, step_id: str, timeout: float = 90) -> StepExecution:
    def found() -> StepExecution | None:
        row = _execution(key)
        if row is None:
            return None
        return StepExecution.get_or_none((StepExecution.execution == row.id) & (StepExecution.step_id == step_id)
                                         & (StepExecution.status == "WAITING"))

    return wait_until(found, timeout=timeout, interval=0.1)


@pytest.mark.timeout(600)
def test_the_canary_never_rests_in_clear(stack: Stack, tmp_path, pg_url, mongo_url, mongo_db, redis_url, real_env):
    services = stack.services
    problems: list[str] = []

    # -- apply (CLI), then the misplaced secrets (CLI and API) ------------------------------
    ids: dict[str, str] = {}
    for name, definition in _definitions(services["main"], services["failing"], services["rejecting"]).items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(definition))
        stack.cli("apply", str(path), "--workspace", "canary")
        listed = _api(stack, "GET", "/workflows").json()
        ids = {w["name"]: w["id"] for w in listed["items"]}
    for step_type, step in MISPLACED.items():
        if step_type in CLI_CHECKED:  # each CLI call starts a Python: the API checks them all
            path = tmp_path / f"misplaced-{step_type}.json"
            path.write_text(json.dumps({"name": f"misplaced-{step_type}", "steps": [step]}))
            refused = stack.cli("apply", str(path), "--workspace", "canary", ok=False)
            if refused.returncode != 2 or "steps[0]" not in refused.stderr or REF.strip("{} ") not in refused.stderr:
                problems.append(f"shiftflow apply accepted a secret in a {step_type} step: {refused.stdout}")
        answer = _api(stack, "POST", "/workflows",
                      json={"definition": {"name": f"misplaced-{step_type}", "steps": [step]}})
        if answer.status_code not in (400, 422) or "steps[0]" not in answer.text:
            problems.append(f"POST /workflows accepted a secret in a {step_type} step: {answer.status_code}")

    # -- run every step type ---------------------------------------------------------------
    waiter = _run(stack, ids["canary-waiter"])
    _waiting(waiter, "w")
    main = _run(stack, ids["canary"], {"items": [1, 2, 3]})
    _waiting(main, "ok")
    decision = _api(stack, "POST", f"/executions/{_execution(main).id}/approvals/ok", role="MEMBER",
                    json={"approved": True, "comment": "looks fine"})
    assert decision.status_code == 200, decision.text
    order = wait_until(lambda: SideShiftOrder.get_or_none((SideShiftOrder.execution == _execution(main).id)
                                                          & (SideShiftOrder.state == "OPEN")), timeout=60)
    stack.fake.deposit(order.shift_id, order.deposit_amount)
    stack.fake.advance(600)
    failing, rejected = _run(stack, ids["canary-fail"]), _run(stack, ids["canary-4xx"])
    outcomes = {key: _final(key) for key in (main, waiter, failing, rejected)}
    assert outcomes[main].status == "SUCCEEDED", outcomes[main].error
    assert outcomes[waiter].status == "SUCCEEDED", outcomes[waiter].error
    assert outcomes[failing].status == "FAILED" and "gave up" in outcomes[failing].error
    assert outcomes[rejected].status == "FAILED" and "answered 400" in outcomes[rejected].error
    executions = list(Execution.select())
    assert len(executions) == 5  # the four, and canary-child
    statuses = {s.step_type: s.status for s in StepExecution.select().where(StepExecution.iteration == 0)}
    assert {"condition", "switch", "transform", "http", "wait", "wait_event", "approval", "event", "workflow",
            "stop", "fail", "price", "sideshift_swap"} <= set(statuses)
    # Positive control: the secret did reach every outside call that sends it.
    sent = json.dumps([c for s in services.values() for c in s.calls])
    assert sent.count(CANARY) >= 10, "the calls did not carry the secret: the test proves nothing"

    # -- read everything back through the API and the CLI -----------------------------------
    for execution in executions:
        for role in ("VIEWER", "OWNER"):
            assert _api(stack, "GET", f"/executions/{execution.id}", role=role).status_code == 200
        _api(stack, "GET", f"/executions/{execution.id}/logs")
        stack.cli("executions", "show", str(execution.id))  # text, with its log documents
    for execution in (outcomes[main], outcomes[rejected]):
        stack.cli("executions", "show", str(execution.id), "--json")
        stack.cli("logs", str(execution.id), "--json")
    for path in ("/executions", "/workflows", "/dead-letters", "/audit-log", "/keys", "/members", "/workspace"):
        _api(stack, "GET", path)
    for workflow_id in ids.values():
        _api(stack, "GET", f"/workflows/{workflow_id}")
        _api(stack, "GET", f"/workflows/{workflow_id}/versions/1")
    for args in (("executions", "list", "--limit", "50"), ("dead-letters", "list"), ("sideshift", "orders")):
        stack.cli(*args)
    assert any("***" in text for text in stack.seen["api"]), "no masked value was read back: positive control"

    # -- let the logs land, stop the processes, collect every store -------------------------
    mongo: MongoClient = MongoClient(mongo_url)
    try:
        wait_until(lambda: mongo[mongo_db]["execution_logs"].count_documents(
            {"executionId": str(outcomes[rejected].id), "message": "execution failed"}) >= 1, timeout=30)
        stack.stop()
        for name in mongo[mongo_db].list_collection_names():
            stack.record("mongodb", json.dumps(list(mongo[mongo_db][name].find()), default=str))
    finally:
        mongo.close()
    for name in ("ingress", "workers"):
        stack.record(f"{name} log", (stack.logs / f"{name}.log").read_text(errors="replace"))
    dump = subprocess.run(["pg_dump", "--data-only", pg_url], capture_output=True, text=True, timeout=120)
    assert dump.returncode == 0, dump.stderr
    stack.record("postgresql", dump.stdout)
    client = redis.Redis.from_url(redis_url)
    try:
        for key in client.scan_iter(count=500):
            kind = client.type(key).decode()
            value = client.dump(key) if kind != "none" else b""
            stack.record("redis", repr(key) + repr(value))
    finally:
        client.close()
    bodies = _published(real_env["SHIFTFLOW_AMQP_URL"], stack.trace)
    stack.record("rabbitmq", "\n".join(b.decode("utf-8", "replace") for b in bodies))

    # Positive controls: each capture holds what it should.
    assert "key=***;" in "".join(stack.seen["postgresql"]) and str(outcomes[main].id) in "".join(
        stack.seen["postgresql"]), "the dump does not hold the masked input"
    assert "execution created" in "".join(stack.seen["mongodb"])
    # At least a message per execution and its steps' hops (chained tool steps share one).
    assert len(bodies) >= 15 and "triggers.start" in stack.seen["rabbitmq"][0], f"{len(bodies)} messages traced"
    assert "POST /api/v1/workflows" in "".join(stack.seen["ingress log"]), "the ingress's access log is missing"
    assert "Worker process is ready" in "".join(stack.seen["workers log"]), "the workers' log is missing"

    for place, texts in stack.seen.items():
        for text in texts:
            found = _leaks(text)
            if found:
                at = text.index(found[0])
                problems.append(f"{place}: {found[0]!r} in ...{text[max(0, at - 120):at + 40]!r}")
    assert not problems, "\n".join(problems[:20])
