"""Tools, integrations, connections and artifacts through the management API, over real HTTP
on real PostgreSQL, RabbitMQ and MongoDB-wire; connection tests against a real local SMTP
server (aiosmtpd, STARTTLS and AUTH). A planted password must never come back: not in an
answer, not in a log line, not in an audit entry, not in the connection row."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from shiftflow.kernel.artifacts import make_store
from shiftflow.kernel.contracts import TriggerPayload
from shiftflow.kernel.db import bind_database
from shiftflow.models.engine.start import start_execution
from shiftflow.models.manage import catalog
from shiftflow.models.tables.artifacts import Artifact
from shiftflow.models.tables.audit_log import AuditLog
from shiftflow.models.tables.integrations import Connection
from shiftflow.models.tables.tools import Tool as ToolRow
from shiftflow.models.tables.tools import ToolExecution, WorkspaceTool
from shiftflow.producers.app import create_app
from tests.integration.api_support import SIMPLE, seed_tenant, serve, worker
from tests.tool_servers import SelfSigned, SmtpServer, free_port, self_signed

pytestmark = pytest.mark.integration

#: The password the SMTP server accepts; it must never leave the sealed column.
PLANTED = "planted-Pw-7f3a9c2e51"
#: A wrong password tried later; it must not leak through a failed test's message either.
WRONG = "wrong-Pw-0b4d8e6a17"


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> SelfSigned:
    return self_signed(str(tmp_path_factory.mktemp("tls")))


@pytest.fixture
def smtp(cert: SelfSigned) -> Iterator[SmtpServer]:
    server = SmtpServer(cert)
    server.PASSWORD = PLANTED  # read at each AUTH
    yield server
    server.stop()


@pytest.fixture
def api(real_env: dict[str, str], tmp_path: Any) -> Iterator[dict[str, Any]]:
    env = {**real_env, "SHIFTFLOW_ARTIFACT_DIR": str(tmp_path / "artifacts")}
    with worker(env) as settings:
        a, b = seed_tenant("alpha"), seed_tenant("beta")
        with serve(create_app(settings)) as base:
            with httpx.Client(base_url=base + "/api/v1", timeout=30,
                              headers={"User-Agent": "shiftflow-tests/1.0"}) as client:
                yield {"client": client, "a": a, "b": b, "settings": settings}


# --------------------------------------------------------------------------- tools


def test_tools_list_with_schemas_and_are_enabled_per_workspace(api):
    c, a, b = api["client"], api["a"], api["b"]
    listed = c.get("/tools", headers=a.auth("VIEWER"))
    assert listed.status_code == 200, listed.text
    tools = {t["name"]: t for t in listed.json()["items"]}
    assert {"http.request", "email.send", "notify.chat", "browser.screenshot", "media.image"} <= set(tools)
    mail = tools["email.send"]
    assert mail["queue"] == "tools.email" and mail["effect"] == "once" and mail["source"] == "builtin"
    assert "to" in mail["params_schema"]["properties"] and mail["result_schema"]["type"] == "object"
    assert mail["enabled"] is True and mail["usage_count"] == 0
    only_media = c.get("/tools", params={"category": "media"}, headers=a.auth("VIEWER")).json()["items"]
    assert only_media and {t["category"] for t in only_media} == {"media"}

    assert c.put("/tools/email.send", json={"enabled": False}, headers=a.auth("MEMBER")).status_code == 403
    off = c.put("/tools/email.send", json={"enabled": False}, headers=a.auth("ADMIN"))
    assert off.status_code == 200 and off.json()["enabled"] is False
    assert c.get("/tools/email.send", headers=a.auth("VIEWER")).json()["enabled"] is False
    assert WorkspaceTool.disabled(a.workspace.id, "email.send")
    # Another workspace keeps it.
    assert c.get("/tools/email.send", headers=b.auth("VIEWER")).json()["enabled"] is True
    assert not WorkspaceTool.disabled(b.workspace.id, "email.send")
    on = c.put("/tools/email.send", json={"enabled": True}, headers=a.auth("OWNER"))
    assert on.json()["enabled"] is True
    actions = [e.action for e in AuditLog.select().where((AuditLog.workspace_id == a.workspace.id)
                                                           & (AuditLog.entity_type == "tool")).order_by(AuditLog.created_at)]
    assert actions == ["tool.disabled", "tool.enabled"]

    unknown = c.get("/tools/no.such_tool", headers=a.auth("VIEWER"))
    assert unknown.status_code == 404 and "email.send" in unknown.json()["error"]  # lists the known ones
    assert c.put("/tools/no.such_tool", json={"enabled": False}, headers=a.auth("OWNER")).status_code == 404
    bad = c.put("/tools/email.send", json={"enabled": "no"}, headers=a.auth("OWNER"))
    assert bad.status_code == 422 and "enabled" in bad.json()["error"]

    # Usage counts are the workspace's own calls.
    row = ToolRow.create(name="email.send", display_name="email.send", queue="tools.email")
    for _ in range(2):
        ToolExecution.create(workspace=a.workspace.id, tool=row.id, status="SUCCEEDED")
    assert c.get("/tools/email.send", headers=a.auth("VIEWER")).json()["usage_count"] == 2
    assert c.get("/tools/email.send", headers=b.auth("VIEWER")).json()["usage_count"] == 0
    listed_again = {t["name"]: t for t in c.get("/tools", headers=a.auth("VIEWER")).json()["items"]}
    assert listed_again["email.send"]["usage_count"] == 2 and listed_again["http.request"]["usage_count"] == 0


def test_integration_catalogue_gives_each_credential_schema(api):
    c, a = api["client"], api["a"]
    listed = c.get("/integrations", headers=a.auth("VIEWER"))
    assert listed.status_code == 200, listed.text
    entries = {i["key"]: i for i in listed.json()["items"]}
    assert {"http", "smtp", "slack", "discord", "s3", "oauth2", "sideshift", "coingecko"} <= set(entries)
    smtp = c.get("/integrations/smtp", headers=a.auth("VIEWER")).json()
    assert smtp == entries["smtp"]
    assert smtp["secret_fields"] == ["password"] and smtp["tools"] == ["email.send"]
    assert smtp["credentials_schema"]["required"] == ["host"]
    fields = {f["name"]: f for f in smtp["fields"]}
    assert fields["password"]["secret"] is True and fields["host"]["required"] is True
    missing = c.get("/integrations/nope", headers=a.auth("VIEWER"))
    assert missing.status_code == 404 and "smtp" in missing.json()["error"]


# --------------------------------------------------------------------------- connections


def test_connection_lifecycle_against_a_local_smtp_server_never_shows_the_password(api, smtp, cert, caplog):
    caplog.set_level(logging.DEBUG)
    c, a, b = api["client"], api["a"], api["b"]
    admin = a.auth("ADMIN")
    answers: list[str] = []

    def call(method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = c.request(method, path, **kwargs)
        answers.append(response.text)
        return response

    good = smtp.credentials(cert)
    assert good["password"] == PLANTED

    # Validation: the field is named, the secret is not quoted.
    no_password = {k: v for k, v in good.items() if k != "password"}
    refused = call("POST", "/connections", json={"integration": "smtp", "name": "smtp-main",
                                                 "credentials": no_password}, headers=admin)
    assert refused.status_code == 422 and refused.json()["error"].startswith("credentials.password: ")
    bad_port = call("POST", "/connections", json={"integration": "smtp", "name": "smtp-main",
                                                  "credentials": {**good, "port": 99999}}, headers=admin)
    assert bad_port.status_code == 422 and "credentials.port" in bad_port.json()["error"]
    unknown = call("POST", "/connections", json={"integration": "nope", "name": "x", "credentials": {}},
                   headers=admin)
    assert unknown.status_code == 422 and unknown.json()["error"].startswith("integration: ")
    member = call("POST", "/connections", json={"integration": "smtp", "name": "smtp-main", "credentials": good},
                  headers=a.auth("MEMBER"))
    assert member.status_code == 403
    assert Connection.select().count() == 0  # nothing half-written

    made = call("POST", "/connections", json={"integration": "smtp", "name": "smtp-main", "credentials": good},
                headers=admin)
    assert made.status_code == 201, made.text
    conn = made.json()
    assert conn["credentials"]["password"] == "***" and conn["credentials"]["host"] == "127.0.0.1"
    assert conn["credentials"]["security"] == "starttls" and conn["test_status"] == "PENDING"
    row = Connection.get_by_id(conn["id"])
    assert PLANTED not in row.credentials and row.key_id  # sealed at rest
    again = call("POST", "/connections", json={"integration": "smtp", "name": "smtp-main", "credentials": good},
                 headers=admin)
    assert again.status_code == 409

    # Everyone reads it masked; the test logs in over STARTTLS and sends nothing.
    for role in ("VIEWER", "MEMBER", "ADMIN", "OWNER"):
        shown = call("GET", f"/connections/{conn['id']}", headers=a.auth(role))
        assert shown.status_code == 200 and shown.json()["credentials"]["password"] == "***"
        assert [x["name"] for x in call("GET", "/connections", headers=a.auth(role)).json()["items"]] == ["smtp-main"]
    assert call("POST", f"/connections/{conn['id']}/test", headers=a.auth("VIEWER")).status_code == 403
    tested = call("POST", f"/connections/{conn['id']}/test", headers=admin)
    assert tested.status_code == 200, tested.text
    assert tested.json()["result"]["status"] == "passed" and tested.json()["connection"]["test_status"] == "SUCCESS"
    assert smtp.handler.logins == ["mailer"] and smtp.handler.messages == []

    # A wrong password: the test fails for good, and says so without the password.
    changed = call("PATCH", f"/connections/{conn['id']}", json={"credentials": {"password": WRONG}}, headers=admin)
    assert changed.status_code == 200 and changed.json()["test_status"] == "PENDING"
    assert changed.json()["credentials"]["host"] == "127.0.0.1"  # merged: the host was kept
    failed = call("POST", f"/connections/{conn['id']}/test", headers=admin).json()
    assert failed["result"]["status"] == "failed" and failed["result"]["retryable"] is False
    assert failed["connection"]["test_status"] == "FAILED" and failed["connection"]["last_error"]
    # A server that is down: failed, but retryable.
    call("PATCH", f"/connections/{conn['id']}", json={"credentials": {"password": PLANTED, "port": free_port()}},
         headers=admin)
    down = call("POST", f"/connections/{conn['id']}/test", headers=admin).json()["result"]
    assert down["status"] == "failed" and down["retryable"] is True
    renamed = call("PATCH", f"/connections/{conn['id']}", json={"name": "mail", "is_active": False}, headers=admin)
    assert renamed.json()["name"] == "mail" and renamed.json()["is_active"] is False
    invalid = call("PATCH", f"/connections/{conn['id']}", json={"credentials": {"host": None}}, headers=admin)
    assert invalid.status_code == 422 and invalid.json()["error"].startswith("credentials.host: ")

    # Another workspace sees nothing of it.
    for method in ("GET", "PATCH", "DELETE"):
        body = {"name": "stolen"} if method == "PATCH" else None
        assert call(method, f"/connections/{conn['id']}", json=body, headers=b.auth("OWNER")).status_code == 404
    assert call("POST", f"/connections/{conn['id']}/test", headers=b.auth("OWNER")).status_code == 404
    assert call("GET", "/connections", headers=b.auth("OWNER")).json()["items"] == []

    assert call("DELETE", f"/connections/{conn['id']}", headers=admin).status_code == 204
    assert call("GET", f"/connections/{conn['id']}", headers=admin).status_code == 404

    entries = list(AuditLog.select().where(AuditLog.entity_type == "connection").order_by(AuditLog.created_at))
    assert [e.action for e in entries] == ["connection.created", "connection.tested", "connection.updated",
                                           "connection.tested", "connection.updated", "connection.tested",
                                           "connection.updated", "connection.deleted"]
    assert entries[2].metadata["credential_fields"] == ["password"]
    assert entries[0].changes["after"]["credentials"]["password"] == "***"
    answers.append(c.get("/audit-log", params={"entity_type": "connection"}, headers=a.auth("OWNER")).text)

    # The planted secrets: nowhere.
    audit_text = json.dumps([[e.changes, e.metadata] for e in AuditLog.select()], default=str)
    logs = caplog.text + "".join(str(r.args) for r in caplog.records)
    for secret in (PLANTED, WRONG):
        assert not [t for t in answers if secret in t], secret
        assert secret not in audit_text and secret not in logs


# --------------------------------------------------------------------------- artifacts


def _artifact(settings: Any, tenant: Any, data: bytes, name: str, mime: str) -> tuple[Artifact, str]:
    workflow = catalog.apply_definition(tenant.workspace, dict(SIMPLE, name=f"art-{uuid.uuid4().hex[:6]}")).workflow
    execution = start_execution(TriggerPayload(workflow_id=str(workflow.id), dedup_key=uuid.uuid4().hex,
                                               source="manual", data={"n": 1})).execution
    ref = make_store(settings).put(data, name, mime)
    row = Artifact.create(workspace=tenant.workspace.id, execution=execution.id, type="IMAGE", name=ref.name,
                          url=ref.location, size_bytes=ref.size, mime_type=ref.mime, sha256=ref.sha256)
    return row, str(execution.id)


def test_artifacts_are_listed_and_downloaded_within_their_workspace(api):
    c, a, b, settings = api["client"], api["a"], api["b"], api["settings"]
    data = bytes(range(256)) * 5000  # 1.28 MB: several chunks
    row, execution_id = _artifact(settings, a, data, "shot.png", "image/png")
    listed = c.get(f"/executions/{execution_id}/artifacts", headers=a.auth("VIEWER"))
    assert listed.status_code == 200, listed.text
    [item] = listed.json()["items"]
    assert item["id"] == str(row.id) and item["mime_type"] == "image/png" and item["size_bytes"] == len(data)
    assert "url" not in item and "location" not in item
    got = c.get(f"/artifacts/{row.id}/content", headers=a.auth("VIEWER"))
    assert got.status_code == 200 and got.content == data
    assert got.headers["content-type"] == "application/octet-stream"
    assert got.headers["x-artifact-mime-type"] == "image/png"
    assert 'filename="shot.png"' in got.headers["content-disposition"]
    assert got.headers["etag"] == f'"{row.sha256}"'

    # Another workspace: 404 for the list and the bytes.
    assert c.get(f"/executions/{execution_id}/artifacts", headers=b.auth("OWNER")).status_code == 404
    assert c.get(f"/artifacts/{row.id}/content", headers=b.auth("OWNER")).status_code == 404
    assert c.get(f"/artifacts/{uuid.uuid4()}/content", headers=a.auth("OWNER")).status_code == 404
    # Bytes removed (retention), or a location outside this store: 404, never a 500.
    make_store(settings).delete(row.url)
    gone = c.get(f"/artifacts/{row.id}/content", headers=a.auth("OWNER"))
    assert gone.status_code == 404, gone.text
    Artifact.update(url="local:../../etc/passwd").where(Artifact.id == row.id).execute()
    assert c.get(f"/artifacts/{row.id}/content", headers=a.auth("OWNER")).status_code == 404
    Artifact.update(url="s3://elsewhere/key").where(Artifact.id == row.id).execute()
    assert c.get(f"/artifacts/{row.id}/content", headers=a.auth("OWNER")).status_code == 404


# --------------------------------------------------------------------------- CLI


def test_cli_lists_tools_and_integrations_and_manages_connections(real_env, smtp, cert, tmp_path, monkeypatch,
                                                                  capsys, caplog):
    from shiftflow.cli.main import main

    caplog.set_level(logging.DEBUG)
    for name, value in real_env.items():
        monkeypatch.setenv(name, value)
    bind_database(real_env["SHIFTFLOW_DATABASE_URL"])
    catalog.ensure_workspace("cli")
    printed: list[str] = []

    def run(*argv: str) -> int:
        code = main(list(argv))
        captured = capsys.readouterr()
        printed.append(captured.out + captured.err)
        return code

    assert run("tools", "list", "--workspace", "cli") == 0 and "email.send" in printed[-1]
    assert run("tools", "show", "email.send", "--workspace", "cli") == 0
    assert json.loads(printed[-1])["params_schema"]["properties"]["to"]
    assert run("tools", "disable", "browser.pdf", "--workspace", "cli") == 0
    assert run("tools", "list", "--workspace", "cli", "--category", "browser") == 0
    assert "DISABLED" in next(line for line in printed[-1].splitlines() if line.startswith("browser.pdf"))
    assert run("integrations", "list") == 0 and "password*" in printed[-1]
    assert run("integrations", "show", "smtp") == 0 and json.loads(printed[-1])["secret_fields"] == ["password"]

    creds = tmp_path / "smtp.json"
    creds.write_text(json.dumps({k: v for k, v in smtp.credentials(cert).items() if k != "password"}))
    # The password is asked for without echo (getpass), never typed on the command line.
    monkeypatch.setattr("getpass.getpass", lambda prompt="": PLANTED)
    assert run("connections", "create", "smtp", "mail", "--workspace", "cli", "--credentials-file", str(creds)) == 2
    assert "credentials.password" in printed[-1]
    assert run("connections", "create", "smtp", "mail", "--workspace", "cli", "--credentials-file", str(creds),
               "--ask") == 0
    assert "password: ***" in printed[-1]
    assert run("connections", "test", "mail", "--workspace", "cli") == 0 and "passed" in printed[-1]
    assert run("connections", "update", "mail", "--workspace", "cli", "--set", "port=" + str(free_port())) == 0
    assert run("connections", "test", "mail", "--workspace", "cli") == 1 and "failed" in printed[-1]
    assert run("connections", "list", "--workspace", "cli", "--json") == 0
    assert [c["name"] for c in json.loads(printed[-1])] == ["mail"]
    assert run("connections", "show", "mail", "--workspace", "cli") == 0
    assert run("connections", "delete", "mail", "--workspace", "cli") == 0
    assert run("connections", "show", "mail", "--workspace", "cli") == 1
    actions = [e.action for e in AuditLog.select().where(AuditLog.entity_type == "connection")
               .order_by(AuditLog.created_at)]
    assert actions == ["connection.created", "connection.tested", "connection.updated", "connection.tested",
                       "connection.deleted"]
    assert all(e.metadata["via"] == "cli" for e in AuditLog.select())
    audit_text = json.dumps([[e.changes, e.metadata] for e in AuditLog.select()], default=str)
    assert PLANTED not in "".join(printed) + audit_text + caplog.text


def test_without_secret_keys_a_connection_is_refused_with_the_reason(real_env, tmp_path):
    env = {k: v for k, v in real_env.items() if k != "SHIFTFLOW_SECRET_KEYS"}
    with worker(env) as settings:
        tenant = seed_tenant("nokeys", roles=("OWNER",))
        with serve(create_app(settings)) as base:
            body = {"integration": "http", "name": "api",
                    "credentials": {"auth": "bearer", "token": "t-1234567", "base_url": "https://api.example.com"}}
            answer = httpx.post(base + "/api/v1/connections", json=body, headers=tenant.auth(), timeout=15)
    assert answer.status_code == 503 and "SHIFTFLOW_SECRET_KEYS" in answer.json()["error"], answer.text
    assert Connection.select().count() == 0


def test_a_connection_sealed_under_a_retired_key_is_listed_and_can_be_replaced(api):
    from shiftflow.kernel.secretbox import vault_for

    c, a = api["client"], api["a"]
    admin = a.auth("ADMIN")
    body = {"integration": "http", "name": "old",
            "credentials": {"auth": "bearer", "token": "t-1234567", "base_url": "https://api.example.com"}}
    made = c.post("/connections", json=body, headers=admin).json()
    retired = vault_for(("a-retired-key-of-at-least-32-characters!",))
    Connection.update(credentials=retired.encrypt(body["credentials"])).where(Connection.id == made["id"]).execute()

    listed = c.get("/connections", headers=a.auth("VIEWER"))
    assert listed.status_code == 200, listed.text
    [item] = listed.json()["items"]
    assert item["credentials"] == {} and item["credentials_readable"] is False
    tested = c.post(f"/connections/{made['id']}/test", headers=admin)
    assert tested.status_code == 200 and tested.json()["result"]["status"] == "failed"
    assert "decrypted" in tested.json()["result"]["message"]
    # New credentials replace what nobody can read any more.
    fixed = c.patch(f"/connections/{made['id']}", json={"credentials": body["credentials"]}, headers=admin)
    assert fixed.status_code == 200, fixed.text
    assert fixed.json()["credentials_readable"] is True and fixed.json()["credentials"]["token"] == "***"
    assert c.delete(f"/connections/{made['id']}", headers=admin).status_code == 204
