"""Schemathesis over the webhook ingress's OpenAPI document (``GET /openapi.json``).

Every operation is fuzzed with positive and negative data (a fixed number of examples,
derandomized), with generated tokens (404) and with the token of a real webhook on a real
PostgreSQL database, whose signature checks then answer (401, 415, 422...). No answer
may be a 5xx or differ from the document. A correctly signed request, sent the same way,
is the positive control: 202 with the documented body.
"""

from __future__ import annotations

import json
import time

import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.testclient import TestClient

from shiftflow.kernel.contracts import execution_id_for
from shiftflow.kernel.db import bind_database
from shiftflow.kernel.settings import Settings, configure
from shiftflow.kernel.signatures import signed_headers
from shiftflow.models.manage import catalog
from shiftflow.models.tables import webhook_secrets
from shiftflow.producers.ingress.app import create_app
from tests.integration.api_support import SIMPLE, fuzz

pytestmark = pytest.mark.integration

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          negative_data_rejection]
EXAMPLES = 25


def test_ingress_holds_to_its_openapi_document_under_fuzzing(pg_url, amqp_url):
    env = {
        "SHIFTFLOW_MODE": "production",
        "SHIFTFLOW_DATABASE_URL": pg_url,
        "SHIFTFLOW_AMQP_URL": amqp_url,
        "SHIFTFLOW_MONGO_URL": "mongodb://127.0.0.1:9/?retryWrites=false",
        "SHIFTFLOW_METRICS_PORT": "0",
        "SHIFTFLOW_SECRET_KEYS": "fuzz-secret-key-of-at-least-32-characters",
    }
    app_settings = configure(Settings.from_env(env))
    bind_database(pg_url)
    workflow = catalog.apply_definition(catalog.ensure_workspace("fuzz"), dict(SIMPLE, name="hooked")).workflow
    hook = catalog.create_webhook(workflow)
    published: list[object] = []
    app = create_app(app_settings, publish=published.append)

    # Positive control: a correctly signed webhook is accepted, as documented.
    body = json.dumps({"n": 1}).encode()
    headers = {**signed_headers("standard", webhook_secrets.reveal(hook)[0], body, int(time.time()), "fuzz-1"),
               "content-type": "application/json"}
    with TestClient(app) as client:
        accepted = client.post(f"/hooks/{hook.token}", content=body, headers=headers)
        assert accepted.status_code == 202, accepted.text
        assert accepted.json() == {"status": "accepted", "execution_key": "standard:fuzz-1",
                                   "execution_id": str(execution_id_for(workflow.id, "standard:fuzz-1")),
                                   "workflow_id": str(workflow.id)}
        assert client.get("/openapi.json").json()["paths"]["/hooks/{token}"]["post"]["operationId"] == \
            "receiveWebhook"
        ready = client.get("/readyz")  # the webhook store is this database; publishing is faked
        assert ready.status_code == 200 and ready.json() == {"status": "ready", "checks": {"database": "ok"}}
    assert len(published) == 1

    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    started = time.monotonic()
    ran, calls = fuzz(schema, CHECKS, EXAMPLES, {"token": hook.token})
    assert ran >= 6, ran  # the webhook route both ways with both token kinds, and the GETs
    assert calls >= 100, calls
    assert len(published) == 1, "a fuzzed request was published: the signature check let it through"
    assert time.monotonic() - started < 120
