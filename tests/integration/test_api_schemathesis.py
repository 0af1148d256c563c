"""Schemathesis over the management API's OpenAPI document: no 5xx, every response as documented.

Every operation is fuzzed with positive and negative data (bounded: a fixed number of
examples each, derandomized), once with generated path ids (which must answer 404) and
once with the ids of seeded objects, so the success paths are exercised too. The app
runs in-process (ASGI) on a real PostgreSQL database and a real RabbitMQ vhost.
"""

from __future__ import annotations

import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from shiftflow.kernel.artifacts import make_store
from shiftflow.kernel.broker import build_broker, install
from shiftflow.kernel.contracts import TriggerPayload
from shiftflow.kernel.db import bind_database
from shiftflow.kernel.settings import Settings, configure
from shiftflow.models.engine.connection_secrets import store_connection
from shiftflow.models.engine.start import start_execution
from shiftflow.models.manage import catalog, connections, prompts, tasks
from shiftflow.models.manage.access import Principal
from shiftflow.models.tables.artifacts import Artifact
from shiftflow.models.tables.dead_letters import DeadLetter
from shiftflow.models.tables.executions import Execution, StepExecution
from shiftflow.models.tables.patterns import PatternWorkspace
from shiftflow.models.tables.queue_jobs import QueueJob
from shiftflow.models.tables.side_effects import SideEffect
from shiftflow.models.tables.templates import WorkflowTemplate
from shiftflow.models.tables.tenancy import WorkspaceMember
from shiftflow.models.tables.tools import Tool as ToolRow
from shiftflow.models.tables.tools import ToolExecution
from shiftflow.producers.app import create_app
from tests.integration.api_support import SIMPLE, fuzz, seed_tenant
from tests.support.ports import free_port

pytestmark = pytest.mark.integration

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
    ignored_auth,
]
EXAMPLES = 12


def _seed(settings: Settings):
    tenant = seed_tenant("fuzz", roles=("OWNER", "ADMIN", "MEMBER"))
    workflow = catalog.apply_definition(tenant.workspace, SIMPLE).workflow
    started = start_execution(
        TriggerPayload(workflow_id=str(workflow.id), dedup_key="fuzz:1", source="manual", data={"n": 1})
    )
    failed = Execution.create(
        workflow=workflow.id,
        workflow_version=1,
        workspace=tenant.workspace.id,
        dedup_key="fuzz:failed",
        status="FAILED",
        completed_at=started.execution.created_at,
        error="step shape: boom",
    )
    letter = DeadLetter.create(
        message_id="fuzz-1",
        queue="triggers",
        actor="triggers.start",
        payload={
            "actor_name": "triggers.start",
            "queue_name": "triggers",
            "kwargs": {
                "payload": {
                    "workflow_id": str(workflow.id),
                    "dedup_key": "fuzz:dl",
                    "source": "test",
                    "data": {"n": 2},
                }
            },
            "options": {},
        },
    )
    WorkflowTemplate.create(
        key="fuzz-template", name="Fuzz", category="test", definition=dict(SIMPLE, name="tpl")
    )
    effect = SideEffect.create(workspace=tenant.workspace.id, execution=failed.id, step_id="shape", iteration=0,
                               kind="http", state="UNKNOWN", request_hash="0" * 64)
    member = WorkspaceMember.get(workspace=tenant.workspace.id, user=tenant.users["MEMBER"].id)
    # A mail server nobody listens on, and private addresses refused: its test fails at once.
    connection = connections.create_connection(Principal.operator(tenant.workspace.id), "smtp", "fuzz-mail",
                                               {"host": "127.0.0.1", "port": free_port()}, settings=settings)
    ref = make_store(settings).put(b"fuzz bytes", "fuzz.txt", "text/plain")
    artifact = Artifact.create(workspace=tenant.workspace.id, execution=failed.id, type="TEXT", name=ref.name,
                               url=ref.location, size_bytes=ref.size, mime_type=ref.mime, sha256=ref.sha256)
    tool_row = ToolRow.get_or_create(name="media.image", defaults={"display_name": "media.image"})[0]
    step = StepExecution.create(execution=failed.id, step_id="shape", step_type="tool", status="FAILED")
    call = ToolExecution.create(workspace=tenant.workspace.id, tool=tool_row.id, execution=failed.id,
                                step_execution=step.id, status="FAILED", input={"input": "x"}, error="boom")
    job = QueueJob.create(workspace=tenant.workspace.id, message_id="fuzz-job", queue="tools.media",
                          actor="tools.media", execution=failed.id, status="FAILED",
                          data={"step_id": "shape", "iteration": 0, "tool": "media.image"})
    pattern = PatternWorkspace.create(workspace=tenant.workspace.id, pattern_type="swings", name="Swings",
                                      category="pattern")
    # An LLM connection nobody listens on: tasks can be created (their planner is never published here).
    store_connection(tenant.workspace.id, "openai", "planner", {"api_key": "sk-fuzz", "base_url": "http://127.0.0.1:9/v1"})
    task, _unsent = tasks.create_task(Principal.operator(tenant.workspace.id), "fuzzed task", approve_required=True)
    prompt = prompts.create_prompt(Principal.operator(tenant.workspace.id), name="fuzz-prompt",
                                   template="Say {{ word }} in json.",
                                   variables=[{"name": "word", "type": "string", "default": "hi"}],
                                   config={"connection": "fuzz-llm", "model": "gpt-4o-mini"})
    prompts.publish(Principal.operator(tenant.workspace.id), prompt.id, 1)
    validation = prompts.add_validation(Principal.operator(tenant.workspace.id), prompt.id, name="non-empty",
                                        type="FUNCTION", config={"name": "non_empty"})
    ids = {
        "tool_execution_id": str(call.id),
        "queue_job_id": str(job.id),
        "pattern_id": str(pattern.id),
        "task_id": task["id"],
        "prompt_id": str(prompt.id),
        "validation_id": str(validation.id),
        "connection_id": connection["id"],
        "artifact_id": str(artifact.id),
        "tool_name": "media.image",
        "integration_key": "smtp",
        "workflow_id": str(workflow.id),
        "version": 1,
        "execution_id": str(failed.id),
        "member_id": str(member.id),
        "key_id": tenant.key_ids["MEMBER"],
        "dead_letter_id": str(letter.id),
        "effect_id": str(effect.id),
        "template_key": "fuzz-template",
        "step_id": "approve",
    }
    return tenant, ids


def test_openapi_document_holds_under_fuzzing(pg_url, amqp_url, mongo_url, mongo_db, tmp_path):
    env = {
        "SHIFTFLOW_MODE": "production",
        "SHIFTFLOW_DATABASE_URL": pg_url,
        "SHIFTFLOW_AMQP_URL": amqp_url,
        "SHIFTFLOW_MONGO_URL": mongo_url,
        "SHIFTFLOW_MONGO_DB": mongo_db,
        "SHIFTFLOW_METRICS_PORT": "0",
        # Schemathesis's auth checks fail authentication on purpose for every operation;
        # throttled, the rest of the run would only see 429 (tests/integration/test_auth_throttle.py).
        "SHIFTFLOW_AUTH_FAILURES_PER_ADDRESS": "0",
        "SHIFTFLOW_AUTH_FAILURES_PER_KEY": "0",
        "SHIFTFLOW_SECRET_KEYS": "tests-secret-key-of-at-least-32-characters",
        "SHIFTFLOW_ARTIFACT_DIR": str(tmp_path / "artifacts"),
    }
    app_settings = configure(Settings.from_env(env))
    bind_database(pg_url)
    broker = install(build_broker(app_settings, worker=False))
    tenant, ids = _seed(app_settings)
    # An admin key: everything but deleting the workspace, which would end the run early.
    auth = {"Authorization": f"Bearer {tenant.keys['ADMIN']}"}
    app = create_app(app_settings, publish=lambda payload: None)
    schema = schemathesis.openapi.from_asgi("/api/v1/openapi.json", app)
    try:
        ran, calls = fuzz(schema, CHECKS, EXAMPLES, ids, headers=auth)
    finally:
        broker.close()
    assert ran >= 60, ran  # every operation, positive and (where anything can be negated) negative
    assert calls >= 500, calls  # every operation, both modes
