"""An integrator's first hour: a standard client generator on our OpenAPI documents.

``openapi-python-client`` generates a Python client from the management API's document
(``/api/v1/openapi.json``) as served, in both of its enum modes, and the main flows run
through the generated code over real HTTP: workspace, members, workflows, a run polled
to its end by the id the 202 gave, the logs read to the last line through the cursor,
dead letters, the audit log, templates. The generated code parses every answer into its
types and raises on a status the document does not list (``raise_on_unexpected_status``),
so a response that drifts from the document fails here. The same for the ingress's
document: a signed webhook sent through the generated client.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shiftflow.kernel.signatures import signed_headers
from shiftflow.models.manage import catalog
from shiftflow.models.tables import webhook_secrets
from shiftflow.models.tables.dead_letters import DeadLetter
from shiftflow.models.tables.templates import WorkflowTemplate
from shiftflow.producers.app import create_app
from tests.integration.api_support import seed_tenant, serve, worker

pytestmark = pytest.mark.integration

#: A fan-out of 120 items: about 250 log documents, more than any one page holds.
FANOUT = {
    "name": "fanout-logs",
    "trigger": {"type": "manual"},
    "steps": [
        {
            "id": "each",
            "type": "transform",
            "for_each": "{{ trigger.items }}",
            "with": {"output": {"n": "{{ item }}"}},
        },
        {"id": "done", "type": "transform", "with": {"output": {"count": "{{ trigger.count }}"}}},
    ],
}


def generate(document_url: str, out: Path, package: str, *, literal_enums: bool) -> Any:
    """Generate a client package from ``document_url``; fail on any generator warning.

    Returns:
        The imported package.
    """
    document = out / f"{package}.json"
    document.write_bytes(httpx.get(document_url, timeout=10).raise_for_status().content)
    config = out / f"{package}.yaml"
    config.write_text(
        f"package_name_override: {package}\nproject_name_override: {package}\n"
        f"literal_enums: {'true' if literal_enums else 'false'}\npost_hooks: []\n"
    )
    target = out / package
    done = subprocess.run(
        [sys.executable, "-m", "openapi_python_client", "generate", "--path", str(document),
         "--output-path", str(target), "--config", str(config), "--meta", "none"],
        capture_output=True, text=True, timeout=120,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    # The generator drops what it cannot model and says so with a warning: a client that
    # silently lacks a type (Template, once) fails on a 200 later.
    assert "Warning" not in output and "Unable to" not in output, output
    if str(out) not in sys.path:
        sys.path.insert(0, str(out))
    return importlib.import_module(package)


def _call(package: Any, module: str, **kwargs: Any) -> Any:
    """``<package>.api.<module>.sync_detailed(...)``: the parsed answer, which must not be an Error."""
    response = importlib.import_module(f"{package.__name__}.api.{module}").sync_detailed(**kwargs)
    parsed = response.parsed
    assert parsed is not None, f"{module}: {response.status_code} {response.content[:300]!r}"
    assert type(parsed).__name__ != "Error", f"{module}: {response.status_code} {parsed.error}"
    return parsed


@pytest.fixture
def stack(real_env: dict[str, str], tmp_path: Path, mongo_admin: Any, mongo_db: str) -> Iterator[dict[str, Any]]:
    with worker(real_env, threads=4) as settings:
        tenant = seed_tenant("gen")
        WorkflowTemplate.create(
            key="gen-template", name="A template", description="for the generated client", category="demo",
            trigger_type="MANUAL", tags=["demo"], required_integrations=[], definition=FANOUT,
        )
        with serve(create_app(settings)) as base:
            yield {"base": base, "tenant": tenant, "out": tmp_path, "mongo": mongo_admin[mongo_db]}


def _models(package: Any) -> Any:
    return importlib.import_module(f"{package.__name__}.models")


def test_generated_client_drives_the_main_flows(stack: dict[str, Any]) -> None:
    base, tenant = stack["base"], stack["tenant"]
    for literal in (False, True):
        package = generate(
            base + "/api/v1/openapi.json", stack["out"], f"sf_client_{'literal' if literal else 'enum'}",
            literal_enums=literal,
        )
        client = importlib.import_module(f"{package.__name__}.client").AuthenticatedClient(
            base_url=base + "/api/v1", token=tenant.keys["OWNER"], raise_on_unexpected_status=True,
            timeout=httpx.Timeout(15),
        )
        _drive(package, client, literal, tenant, stack["mongo"])


def _drive(package: Any, client: Any, literal: bool, tenant: Any, mongo: Any) -> None:
    models = _models(package)
    suffix = "lit" if literal else "enum"

    workspace = _call(package, "workspace.get_workspace", client=client)
    assert workspace.slug == "gen"

    role = "VIEWER" if literal else models.AddMemberBodyRole.VIEWER
    member = _call(
        package, "members.add_member", client=client,
        body=models.AddMemberBody(email=f"new-{suffix}@gen.example", role=role),
    )
    assert str(member.role) in ("VIEWER", "MemberRole.VIEWER")
    assert any(m.id == member.id for m in _call(package, "members.list_members", client=client).items)

    definition = {**FANOUT, "name": f"fanout-{suffix}"}
    applied = _call(
        package, "workflows.apply_workflow", client=client,
        body=models.ApplyWorkflowBody(definition=models.ApplyWorkflowBodyDefinition.from_dict(definition)),
    )
    assert str(applied.trigger_type).endswith("manual") and applied.version == 1
    workflows = _call(package, "workflows.list_workflows", client=client, limit=200)
    assert applied.id in {w.id for w in workflows.items}

    # Run, then poll the execution by the id the 202 gave, to its end.
    items = list(range(120))
    accepted = _call(
        package, "executions.run_workflow", workflow_id=applied.id, client=client,
        body=models.RunWorkflowBody(input_=models.RunWorkflowBodyInput.from_dict({"items": items, "count": 120})),
    )
    execution_id = accepted.execution_id
    deadline = time.monotonic() + 60
    while True:
        response = importlib.import_module(f"{package.__name__}.api.executions.get_execution").sync_detailed(
            execution_id, client=client
        )
        if response.status_code == 200 and str(response.parsed.status).endswith("SUCCEEDED"):
            detail = response.parsed
            break
        assert response.status_code in (200, 404), response.content
        assert time.monotonic() < deadline, f"execution {execution_id} did not finish: {response.content[:300]!r}"
        time.sleep(0.2)
    assert len(detail.steps) == 122 and all(str(s.status).endswith("SUCCEEDED") for s in detail.steps)
    assert str(detail.source).endswith("manual") and str(detail.priority).endswith("NORMAL")

    # The logs to the last line: pages of 50 through the cursor, nothing repeated.
    seen: list[Any] = []
    cursor: Any = None
    while True:
        kwargs = {"cursor": cursor} if cursor else {}
        page = _call(package, "executions.get_execution_logs", execution_id=execution_id, client=client,
                     limit=50, **kwargs)
        seen += page.items
        cursor = page.next_cursor
        if not cursor:
            break
    assert len(seen) > 100, len(seen)  # more than two pages of 50
    assert "succeeded" in seen[-1].message, seen[-1].message  # the outcome is the last line
    stored = mongo.execution_logs.count_documents({"executionId": str(execution_id)})
    assert len(seen) == stored, "every log document once, none skipped or repeated"

    # Dead letters: one of this workspace's triggers.
    letter = DeadLetter.create(
        message_id=f"gen-{suffix}", queue="triggers", actor="triggers.start", error="NotFound",
        payload={"actor_name": "triggers.start", "queue_name": "triggers", "message_id": f"gen-{suffix}",
                 "args": [], "kwargs": {"payload": {"workflow_id": str(applied.id), "dedup_key": f"k-{suffix}",
                                                    "source": "manual", "data": {}}}, "options": {}},
    )
    letters = _call(package, "dead_letters.list_dead_letters", client=client)
    assert letter.id in {d.id for d in letters.items}
    assert _call(package, "dead_letters.get_dead_letter", dead_letter_id=letter.id, client=client).actor

    audit = _call(package, "audit.list_audit_log", client=client)
    assert {"workflow.created", "execution.triggered"} <= {e.action for e in audit.items}

    templates = _call(package, "templates.list_templates", client=client)
    assert templates.items and all(isinstance(t.tags, list) for t in templates.items)
    assert all(str(t.trigger_type).split(".")[-1].lower() in ("manual", "webhook", "schedule", "polling", "event")
               for t in templates.items)


def test_generated_ingress_client_sends_a_signed_webhook(stack: dict[str, Any]) -> None:
    base, tenant = stack["base"], stack["tenant"]
    workflow = catalog.apply_definition(
        tenant.workspace, {"name": "hooked", "trigger": {"type": "webhook"},
                           "steps": [{"id": "t", "type": "transform", "with": {"output": {"x": "{{ trigger.x }}"}}}]},
    ).workflow
    hook = catalog.create_webhook(workflow)
    package = generate(base + "/openapi.json", stack["out"], "sf_ingress_client", literal_enums=True)
    delivery = f"msg_{uuid.uuid4().hex}"

    def sign(request: httpx.Request) -> None:
        # The generated code serialises the body itself: sign the bytes it really sends.
        headers = signed_headers("standard", webhook_secrets.reveal(hook)[0], request.read(), int(time.time()), delivery)
        for name in ("webhook-id", "webhook-timestamp", "webhook-signature"):
            request.headers[name] = headers[name]

    client = importlib.import_module(f"{package.__name__}.client").Client(
        base_url=base, raise_on_unexpected_status=True, httpx_args={"event_hooks": {"request": [sign]}},
    )
    models = _models(package)
    accepted = _call(
        package, "default.receive_webhook", token=hook.token, client=client,
        body=models.ReceiveWebhookBody.from_dict({"x": 7}),
    )
    assert accepted.status == "accepted" and accepted.workflow_id == workflow.id
    owner = {"Authorization": f"Bearer {tenant.keys['OWNER']}"}
    deadline = time.monotonic() + 30
    while True:
        found = httpx.get(f"{base}/api/v1/executions/{accepted.execution_id}", headers=owner, timeout=10)
        if found.status_code == 200 and found.json()["status"] == "SUCCEEDED":
            assert found.json()["result"]["t"] == {"x": 7}
            break
        assert time.monotonic() < deadline, found.text
        time.sleep(0.2)
    health = _call(package, "default.health", client=client)
    assert health is not None
