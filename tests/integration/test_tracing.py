"""OpenTelemetry traces on real services, read back from the SDK's in-memory exporter.

Real RabbitMQ (own vhost), PostgreSQL, the MongoDB-wire server, a real HTTP ingress with
the management API, and a real outside service. Producers: a signed webhook, the API's
run, the scheduler's batch publisher. Each execution must be one trace (its id = the
execution id) holding the producer span at its root, a consumer span per message, one
span per step (inline, queued outside call, each fan-out item and its header) and a span
around the outside call.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

import dramatiq
import httpx
import pytest
import uvicorn
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from shiftflow.consumers.boot import boot
from shiftflow.kernel import batch_publisher, tracing
from shiftflow.kernel.contracts import TriggerPayload, execution_id_for
from shiftflow.kernel.enqueue import Outgoing
from shiftflow.kernel.settings import Settings, configure
from shiftflow.kernel.signatures import signed_headers
from shiftflow.models.manage import catalog
from shiftflow.models.tables import webhook_secrets
from shiftflow.models.tables.executions import Execution, StepExecution
from shiftflow.producers.app import create_app
from tests.integration.api_support import seed_tenant
from tests.support.ports import free_port
from tests.support.waiting import wait_for_http, wait_until

pytestmark = pytest.mark.integration

DEFINITION = {
    "name": "traced",
    "trigger": {"type": "webhook"},
    "steps": [
        {"id": "check", "type": "condition", "with": {"left": "{{ trigger.amount }}", "op": ">", "right": 10}},
        {"id": "call", "type": "http", "timeout": 5,
         "with": {"method": "POST", "url": "{{ vars.url }}", "json": {"amount": "{{ trigger.amount }}"}}},
        {"id": "each", "type": "transform", "for_each": "{{ trigger.items }}", "needs": ["call"],
         "with": {"output": {"n": "{{ item }}"}}},
        {"id": "shape", "type": "transform", "needs": ["each"], "with": {"output": {"ok": True}}},
    ],
}

MANUAL = {
    "name": "traced-manual",
    "trigger": {"type": "manual"},
    "steps": [{"id": "only", "type": "transform", "with": {"output": {"ok": True}}}],
}


class _Uvicorn(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # the test thread is not the main thread
        pass


@pytest.fixture
def traced(real_env: dict[str, str], json_service: Any) -> Any:
    """Tracing on (in-memory exporter), then workers, ingress + API, an outside service."""
    exporter = InMemorySpanExporter()
    provider = tracing.make_provider("shiftflow-tests")
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    settings = configure(Settings.from_env(real_env))
    broker = boot(settings)
    broker.emit_after("process_boot")
    worker = dramatiq.Worker(broker, worker_threads=4, worker_timeout=100)
    worker.start()
    port = free_port()
    server = _Uvicorn(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz", timeout=10)
        yield {"exporter": exporter, "base": f"http://127.0.0.1:{port}", "service": json_service,
               "settings": settings}
    finally:
        server.should_exit = True
        thread.join(10)
        worker.stop()
        broker.emit_before("worker_shutdown", worker)
        broker.close()
        tracing.install(None)


def _finished(execution_id: uuid.UUID) -> Execution | None:
    row = Execution.get_or_none(Execution.id == execution_id)
    return row if row is not None and row.status in ("SUCCEEDED", "FAILED") else None


def _trace(exporter: InMemorySpanExporter, execution_id: uuid.UUID, expected_steps: int) -> list[Any]:
    """The finished spans of the execution's trace, once every step span is in."""
    def ready() -> list[Any] | None:
        spans = [s for s in exporter.get_finished_spans() if s.context.trace_id == execution_id.int]
        steps = [s for s in spans if s.name.startswith("step ")]
        # The consumer span of the last message ends after its step span: wait for it too.
        open_consumers = len(steps) >= expected_steps and all(
            any(c.context.span_id == s.parent.span_id for c in spans) for s in spans if s.parent)
        return spans if open_consumers else None

    return wait_until(ready, timeout=30)


def _assert_one_tree(spans: list[Any], root_name: str) -> None:
    roots = [s for s in spans if s.parent is None]
    assert [r.name for r in roots] == [root_name], [(s.name, s.parent) for s in spans]
    ids = {s.context.span_id for s in spans}
    assert all(s.parent.span_id in ids for s in spans if s.parent is not None)


def test_a_webhook_execution_is_one_trace_with_a_span_per_step(traced: dict[str, Any]) -> None:
    workflow = catalog.apply_definition(
        catalog.ensure_workspace("acme"), dict(DEFINITION, vars={"url": traced["service"].url + "/svc"})).workflow
    hook = catalog.create_webhook(workflow)
    raw = json.dumps({"amount": 42, "items": [1, 2, 3]}).encode()
    headers = signed_headers("standard", webhook_secrets.reveal(hook)[0], raw, int(time.time()), "msg_t1")
    headers["content-type"] = "application/json"
    response = httpx.post(f"{traced['base']}/hooks/{hook.token}", content=raw, headers=headers, timeout=10)
    assert response.status_code == 202, response.text
    execution_id = execution_id_for(workflow.id, response.json()["execution_key"])
    execution = wait_until(lambda: _finished(execution_id), timeout=30)
    assert execution.status == "SUCCEEDED", execution.error
    rows = list(StepExecution.select().where(StepExecution.execution == execution.id))
    assert len(rows) == 4 + 3  # check, call, each (header + 3 items), shape

    spans = _trace(traced["exporter"], execution_id, len(rows))
    _assert_one_tree(spans, "trigger webhook")
    # One span per step row: the inline condition, the queued outside call, the fan-out
    # header and each of its items, and the last transform.
    step_spans = sorted((s.attributes["shiftflow.step_id"], s.attributes["shiftflow.iteration"])
                        for s in spans if s.name.startswith("step "))
    assert step_spans == sorted((r.step_id, r.iteration) for r in rows)
    assert all(s.attributes["shiftflow.step_status"] == "SUCCEEDED" for s in spans if s.name.startswith("step "))
    # The outside call has its span, inside the tools.call message's consumer span.
    by_id = {s.context.span_id: s for s in spans}
    (tool,) = [s for s in spans if s.name == "tool http"]
    assert by_id[tool.parent.span_id].name == "tools.call"
    # Every message of the execution continued the trace: one consumer span each.
    consumers = [s.name for s in spans if s.kind.name == "CONSUMER"]
    assert consumers.count("triggers.start") == 1 and consumers.count("tools.call") == 1
    # Nothing else landed in another trace under this execution's id.
    others = [s for s in traced["exporter"].get_finished_spans()
              if s.attributes.get("shiftflow.execution_id") == str(execution_id)
              and s.context.trace_id != execution_id.int]
    assert others == []


def test_an_api_run_and_a_scheduler_fire_start_their_own_traces(traced: dict[str, Any]) -> None:
    tenant = seed_tenant("traced", roles=("OWNER",))
    workflow = catalog.apply_definition(tenant.workspace, MANUAL).workflow
    response = httpx.post(f"{traced['base']}/api/v1/workflows/{workflow.id}/run", json={"input": {"n": 1}},
                          headers=tenant.auth("OWNER"), timeout=10)
    assert response.status_code == 202, response.text
    body = response.json()
    execution_id = uuid.UUID(body.get("execution_id") or str(execution_id_for(workflow.id, body["execution_key"])))
    wait_until(lambda: _finished(execution_id), timeout=30)
    spans = _trace(traced["exporter"], execution_id, 1)
    _assert_one_tree(spans, "trigger manual")
    assert [s.attributes["shiftflow.step_id"] for s in spans if s.name.startswith("step ")] == ["only"]

    # The scheduler's batch publisher stamps the same context into the message it encodes.
    payload = TriggerPayload(workflow_id=str(workflow.id), dedup_key="schedule:1", source="schedule")
    _queue, body_bytes = batch_publisher.encode_message(Outgoing("triggers.start", payload))
    options = json.loads(body_bytes)["options"]
    fired = execution_id_for(workflow.id, "schedule:1")
    assert options["traceparent"].split("-")[1] == f"{fired.int:032x}"
    (root,) = [s for s in traced["exporter"].get_finished_spans() if s.context.trace_id == fired.int]
    assert root.name == "trigger schedule" and root.parent is None


def test_tracing_off_adds_nothing_to_messages() -> None:
    """Off (the default): no middleware, no options, no spans."""
    assert not tracing.enabled()
    payload = TriggerPayload(workflow_id=str(uuid.uuid4()), dedup_key="k", source="schedule")
    _queue, body = batch_publisher.encode_message(Outgoing("triggers.start", payload))
    assert json.loads(body)["options"] == {"broker_priority": 3}
    assert tracing.stamp({"a": 1}, "triggers.start", payload) == {"a": 1}
    assert not tracing.configure(Settings.from_env({"SHIFTFLOW_MODE": "dev"}))
