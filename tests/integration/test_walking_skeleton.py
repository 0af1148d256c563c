"""The walking skeleton on real services: a signed webhook travels the whole flow.

Real RabbitMQ (own vhost), real PostgreSQL (own database from the migrated template),
a real MongoDB-wire server, a real HTTP ingress (uvicorn) and a real outside service.
"""

from __future__ import annotations

import json
import threading
import time

import dramatiq
import httpx
import pytest
import uvicorn
from prometheus_client import REGISTRY, generate_latest

from shiftflow.consumers.boot import boot
from shiftflow.kernel.broker import build_broker
from shiftflow.kernel.mongo import EXECUTION_LOGS, get_sink
from shiftflow.kernel.settings import Settings, configure
from shiftflow.kernel.signatures import signed_headers
from shiftflow.models.manage import catalog
from shiftflow.models.tables import webhook_secrets
from shiftflow.models.tables.executions import Execution, StepExecution
from shiftflow.producers.ingress.app import create_app
from tests.support.message_tally import MessageTally
from tests.support.ports import free_port
from tests.support.waiting import wait_for_http, wait_until

pytestmark = pytest.mark.integration

DEFINITION = {
    "name": "skeleton",
    "trigger": {"type": "webhook"},
    "steps": [
        {"id": "check", "type": "condition", "with": {"left": "{{ trigger.amount }}", "op": ">", "right": 10}},
        {"id": "call", "type": "http", "timeout": 5,
         "with": {"method": "POST", "url": "{{ vars.url }}", "json": {"amount": "{{ trigger.amount }}"}}},
        {"id": "shape", "type": "transform",
         "with": {"output": {"total": "{{ steps.call.output.json.received.amount }}", "who": "{{ trigger.who }}"}}},
    ],
}


class _Uvicorn(uvicorn.Server):
    def install_signal_handlers(self):  # the test thread is not the main thread
        pass


@pytest.fixture
def stack(real_env, tmp_path, json_service):
    """Workers (in-process, real RabbitMQ), ingress (real HTTP), an outside service."""
    settings = configure(Settings.from_env(real_env))
    broker = boot(settings)
    tally = MessageTally()  # the barrier of the tests that show something did not happen
    broker.add_middleware(tally)
    broker.emit_after("process_boot")  # what the dramatiq CLI does in each worker process
    worker = dramatiq.Worker(broker, worker_threads=4, worker_timeout=100)
    worker.start()
    port = free_port()
    server = _Uvicorn(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for_http(f"http://127.0.0.1:{port}/healthz", timeout=10)
    data = dict(DEFINITION, vars={"url": json_service.url + "/svc"})
    workflow = catalog.apply_definition(catalog.ensure_workspace("acme"), data).workflow
    hook = catalog.create_webhook(workflow)
    yield {"settings": settings, "base": f"http://127.0.0.1:{port}", "hook": hook, "workflow": workflow,
           "service": json_service, "tally": tally}
    server.should_exit = True
    thread.join(10)
    worker.stop()
    broker.emit_before("worker_shutdown", worker)  # flushes the Mongo sink
    broker.close()


def _post(base, hook, body: dict, delivery_id: str, *, now=None):
    raw = json.dumps(body).encode()
    headers = signed_headers("standard", webhook_secrets.reveal(hook)[0], raw, int(now or time.time()), delivery_id)
    headers["content-type"] = "application/json"
    return httpx.post(f"{base}/hooks/{hook.token}", content=raw, headers=headers, timeout=10)


def _finished(key):
    row = Execution.get_or_none(Execution.dedup_key == key)
    return row if row is not None and row.status in ("SUCCEEDED", "FAILED") else None


def test_signed_webhook_runs_the_whole_flow(stack, mongo_url, real_env):
    response = _post(stack["base"], stack["hook"], {"amount": 42, "who": "ada"}, "msg_1")
    assert response.status_code == 202, response.text
    key = response.json()["execution_key"]
    execution = wait_until(lambda: _finished(key), timeout=30)
    assert execution.status == "SUCCEEDED", execution.error
    steps = {s.step_id: s for s in StepExecution.select().where(StepExecution.execution == execution.id)}
    assert {k: s.status for k, s in steps.items()} == {"check": "SUCCEEDED", "call": "SUCCEEDED",
                                                       "shape": "SUCCEEDED"}
    assert steps["shape"].output == {"total": 42, "who": "ada"}
    assert all(s.attempts == 1 for s in steps.values())
    assert stack["service"].bodies == [{"amount": 42}]

    sink = get_sink()
    assert sink is not None

    def logged():
        # Log documents are queued just after the commit the test saw: poll, don't race.
        sink.flush(5)
        found = list(sink.database()[EXECUTION_LOGS].find({"executionId": str(execution.id)}).sort("_id", 1))
        return found if any(d["message"] == "execution succeeded" for d in found) else None

    docs = wait_until(logged, timeout=30)
    messages = [d["message"] for d in docs]  # _id order = write order (one process writes them)
    assert messages[0] == "execution created" and messages[-1] == "execution succeeded"
    for step in ("check", "call", "shape"):
        assert f"step {step} succeeded" in messages
    assert {d["workspaceId"] for d in docs} == {str(execution.workspace_id)}
    index_keys = [list(ix["key"]) for ix in sink.database()[EXECUTION_LOGS].list_indexes()]
    assert ["executionId", "timestamp"] in index_keys

    # The ingress's metrics are this process's registry (a listener of their own in production).
    metrics_text = generate_latest().decode()
    assert 'shiftflow_webhooks_total{outcome="accepted"}' in metrics_text
    assert httpx.get(f"{stack['base']}/metrics", timeout=5).status_code == 404  # not on the public port


def _duplicates() -> float:
    return REGISTRY.get_sample_value("shiftflow_executions_total", {"outcome": "duplicate"}) or 0.0


def test_repeated_delivery_makes_one_execution(stack):
    duplicates_before, tally = _duplicates(), stack["tally"]
    for _ in range(3):
        assert _post(stack["base"], stack["hook"], {"amount": 50, "who": "bob"}, "msg_dup").status_code == 202
    # The barrier: the three trigger messages were handled, and so was every message they caused.
    wait_until(lambda: tally.finished("triggers.start") >= 3 and tally.settled(), timeout=30,
               message="the three copies and their steps handled")
    assert [e.status for e in Execution.select().where(Execution.dedup_key.startswith("standard:msg_dup"))] == [
        "SUCCEEDED"
    ]
    assert _duplicates() - duplicates_before == 2  # both later copies were recognised as duplicates
    assert len(stack["service"].calls) == 1


def test_bad_signature_is_refused_before_any_publish(stack):
    raw = json.dumps({"amount": 42}).encode()
    headers = signed_headers("standard", webhook_secrets.reveal(stack["hook"])[0], raw, int(time.time()), "msg_bad")
    headers["content-type"] = "application/json"
    response = httpx.post(f"{stack['base']}/hooks/{stack['hook'].token}", content=raw + b" ", headers=headers)
    assert response.status_code == 401 and "error" in response.json()
    old = _post(stack["base"], stack["hook"], {"amount": 42}, "msg_old", now=time.time() - 3600)
    assert old.status_code == 401
    # A marker after them: once it ran (and nothing is left in flight), a refused delivery
    # that had been published anyway would have been handled before it (one FIFO queue).
    assert _post(stack["base"], stack["hook"], {"amount": 42}, "msg_marker").status_code == 202
    tally = stack["tally"]
    wait_until(lambda: _finished("standard:msg_marker") and tally.settled(), timeout=30, message="the marker")
    assert [e.dedup_key for e in Execution.select()] == ["standard:msg_marker"]
    assert tally.finished("triggers.start") == 1


def test_unreachable_broker_gives_503_never_2xx(real_env, stack):
    """A second ingress whose broker URL points at a closed port: the publish cannot be
    confirmed, so the trigger is refused with 503 + Retry-After (the sender retries)."""
    settings = Settings.from_env({**real_env, "SHIFTFLOW_AMQP_URL": f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F",
                                  "SHIFTFLOW_PUBLISH_TIMEOUT_SECONDS": "3"})
    dead = build_broker(settings, worker=False)

    def publish(payload):
        from shiftflow.kernel.enqueue import build_message
        from shiftflow.kernel.errors import BrokerUnavailable

        try:
            dead.enqueue(build_message("triggers.start", payload))
        except Exception as exc:  # the real failure, whatever pika raises, becomes BrokerUnavailable
            raise BrokerUnavailable(str(exc)) from exc

    from starlette.testclient import TestClient

    app = create_app(settings, publish=publish)
    raw = json.dumps({"amount": 1}).encode()
    headers = signed_headers("standard", webhook_secrets.reveal(stack["hook"])[0], raw, int(time.time()), "msg_503")
    headers["content-type"] = "application/json"
    with TestClient(app) as client:
        response = client.post(f"/hooks/{stack['hook'].token}", content=raw, headers=headers)
    assert response.status_code == 503
    assert response.headers["retry-after"]


def test_transitions_are_published_live_on_redis(stack, redis_url):
    import redis as redis_lib

    from shiftflow.kernel.redis_handle import channel

    client = redis_lib.Redis.from_url(redis_url)
    pubsub = client.pubsub()
    pubsub.psubscribe(channel("*"))
    pubsub.get_message(timeout=1)  # the subscribe confirmation
    assert _post(stack["base"], stack["hook"], {"amount": 11, "who": "eve"}, "msg_live").status_code == 202
    execution = wait_until(lambda: _finished("standard:msg_live"), timeout=30)
    ours = channel(str(execution.id)).encode()
    seen: list[str] = []
    deadline = time.time() + 5
    while time.time() < deadline and "execution succeeded" not in seen:
        message = pubsub.get_message(timeout=0.5)
        # Other test runs may share this Redis: keep only this execution's channel.
        if message and message["type"] == "pmessage" and message["channel"] == ours:
            # One message per transition, its lines in order.
            seen.extend(update["message"] for update in json.loads(message["data"])["updates"])
    pubsub.close()
    client.close()
    assert seen[0] == "execution created" and "execution succeeded" in seen
    for step in ("check", "call", "shape"):
        assert f"step {step} succeeded" in seen
