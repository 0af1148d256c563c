"""No secret at rest in clear: webhook signing secrets are sealed like connection secrets,
migration 0008 seals the ones stored before, and ``shiftflow secrets rotate`` moves every
stored secret (connection credentials, webhook secrets) to the newest key.

Real PostgreSQL: the per-test database from the migrated template, and throwaway
``sf_mig_*`` databases for the upgrade from the schema before 0008.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import peewee
import psycopg2
import pytest
from cryptography.fernet import Fernet

from shiftflow.kernel import settings as settings_module
from shiftflow.kernel.db import bind_database, make_database
from shiftflow.kernel.secretbox import Vault
from shiftflow.kernel.settings import Settings, configure
from shiftflow.models.engine import connection_secrets
from shiftflow.models.manage import catalog
from shiftflow.models.tables import migrations, webhook_secrets
from shiftflow.models.tables.integrations import Connection
from shiftflow.models.tables.migrations import MigrationError, scratch
from shiftflow.models.tables.workflows import Webhook
from shiftflow.producers.ingress import hooks

pytestmark = pytest.mark.integration

ADMIN_URL = os.environ.get("SHIFTFLOW_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
SHIFTFLOW = str(Path(sys.executable).with_name("shiftflow"))
OLD_KEY = "the-old-secret-key-of-more-than-32-characters"
NEW_KEY = "the-new-secret-key-of-more-than-32-characters"
SECRET = "whsec_" + base64.b64encode(b"a-webhook-secret-of-32-bytes!!!!").decode()
FLOW = {"name": "hooked", "trigger": {"type": "webhook"},
        "steps": [{"id": "t", "type": "transform", "with": {"output": {"ok": True}}}]}


def _dump(db: peewee.Database, table: str) -> str:
    """Every row of ``table`` as JSON text: what a database dump would show."""
    return "\n".join(r[0] for r in db.execute_sql(f"SELECT row_to_json(t)::text FROM {table} t").fetchall())


def _legacy_token(passphrase: str, value: object) -> str:
    """A ciphertext as the code before issue 11 made it (key = one SHA-256 of the passphrase)."""
    fernet = Fernet(base64.urlsafe_b64encode(hashlib.sha256(passphrase.encode()).digest()))
    return fernet.encrypt(json.dumps(value, sort_keys=True).encode()).decode()


@pytest.fixture
def keyed(real_env, monkeypatch):
    monkeypatch.setattr(settings_module, "_current", None)
    env = {**real_env, "SHIFTFLOW_SECRET_KEYS": NEW_KEY}
    settings = configure(Settings.from_env(env))
    db = bind_database(settings.database_url)
    yield env, db
    db.close()


def test_a_new_webhook_secret_is_stored_sealed_and_opened_by_the_lookup(keyed):
    _, db = keyed
    workflow = catalog.apply_definition(catalog.ensure_workspace("sealed"), FLOW).workflow
    hook = catalog.create_webhook(workflow, secret=SECRET)
    dump = _dump(db, "webhook")
    assert SECRET not in dump and SECRET.removeprefix("whsec_") not in dump
    assert hook.key_id == Vault((NEW_KEY,)).current_key_id
    assert webhook_secrets.reveal(hook) == [SECRET]
    found = hooks.load_hook(hook.token)
    assert found is not None and found.secrets == (SECRET,)
    # A fresh secret when none is given, shown to its creator once, sealed too.
    other = catalog.create_webhook(workflow)
    assert webhook_secrets.reveal(other)[0] not in _dump(db, "webhook")


def _before_0008() -> str:
    return [n for n in migrations.available() if n < "0008"][-1]


def _schema_before_0008_with_a_clear_secret() -> tuple[str, peewee.Database]:
    name = scratch.create(ADMIN_URL)
    db = make_database(scratch.url_for(ADMIN_URL, name))
    migrations.upgrade(db, target=_before_0008())
    db.execute_sql(
        """
        INSERT INTO workspace (id, created_at, updated_at, name, slug, plan, max_workflows, max_executions)
        VALUES ('00000000-0000-0000-0000-000000000001', now(), now(), 'Acme', 'acme', 'FREE', 5, 1000);
        INSERT INTO workflow (id, created_at, updated_at, workspace_id, name, status, trigger_type,
                              current_version, execution_count, successful_executions, failed_executions, tags)
        VALUES ('00000000-0000-0000-0000-000000000002', now(), now(), '00000000-0000-0000-0000-000000000001',
                'hooked', 'ACTIVE', 'WEBHOOK', 1, 0, 0, 0, '[]');
        """
    )
    db.execute_sql(
        "INSERT INTO webhook (id, created_at, updated_at, workflow_id, token, scheme, secrets, is_active, total_calls)"
        " VALUES ('00000000-0000-0000-0000-000000000003', now(), now(), '00000000-0000-0000-0000-000000000002',"
        " 'tok-old', 'standard', %s, true, 0)",
        (json.dumps([SECRET, "whsec_b2xkZXItc2VjcmV0"]),),
    )
    return name, db


def test_migration_0008_seals_the_webhook_secrets_stored_in_clear(monkeypatch):
    name, db = _schema_before_0008_with_a_clear_secret()
    try:
        monkeypatch.setattr(settings_module, "_current", Settings(secret_keys=(NEW_KEY,)))
        applied = migrations.upgrade(db)
        assert any(n.startswith("0008_") for n in applied)
        dump = _dump(db, "webhook")
        assert SECRET not in dump and "b2xkZXItc2VjcmV0" not in dump
        sealed, key_id = db.execute_sql("SELECT sealed_secrets, key_id FROM webhook").fetchone()
        assert Vault((NEW_KEY,)).decrypt(sealed) == [SECRET, "whsec_b2xkZXItc2VjcmV0"]
        assert key_id == Vault((NEW_KEY,)).current_key_id
    finally:
        db.close_all()
        scratch.drop(ADMIN_URL, name)


def test_migration_0008_refuses_to_run_without_keys_and_changes_nothing(monkeypatch):
    name, db = _schema_before_0008_with_a_clear_secret()
    try:
        monkeypatch.setattr(settings_module, "_current", Settings(secret_keys=()))
        with pytest.raises(MigrationError, match="SHIFTFLOW_SECRET_KEYS"):
            migrations.upgrade(db)
        assert not any(n.startswith("0008_") for n in migrations.applied(db))
        assert json.loads(db.execute_sql("SELECT secrets::text FROM webhook").fetchone()[0]) == [
            SECRET, "whsec_b2xkZXItc2VjcmV0"]
        # And the SQL alone (without the step that seals) cannot leave a secret in clear either.
        sql = migrations.read(next(n for n in migrations.available() if n.startswith("0008_")))
        with pytest.raises(psycopg2.Error, match="clear"), db.atomic():
            db.cursor().execute(sql)
    finally:
        db.close_all()
        scratch.drop(ADMIN_URL, name)


def test_secrets_rotate_moves_every_stored_secret_to_the_newest_key(keyed):
    env, db = keyed
    workspace = catalog.ensure_workspace("rotate")
    workflow = catalog.apply_definition(workspace, FLOW).workflow
    # Stored by the code before issue 11, under the old key and the old derivation...
    legacy = Connection.create(workspace=workspace.id, integration=_integration(), name="crm",
                               credentials=_legacy_token(OLD_KEY, {"token": "crm-token-123456"}),
                               key_id=hashlib.sha256(b"shiftflow-key-id:" + OLD_KEY.encode()).hexdigest()[:12])
    old_hook = catalog.create_webhook(workflow, secret=SECRET)
    Webhook.update(sealed_secrets=_legacy_token(OLD_KEY, [SECRET]), key_id="legacy").where(
        Webhook.id == old_hook.id).execute()
    # ... and one already under the new key, by this code.
    configure(Settings.from_env({**env, "SHIFTFLOW_SECRET_KEYS": NEW_KEY}))
    current = connection_secrets.store_connection(workspace.id, "mail", "mail", {"password": "mail-password-42"})

    # The new key first, the old one still there to read what it made.
    rotate_env = {**os.environ, **env, "SHIFTFLOW_SECRET_KEYS": f"{NEW_KEY},{OLD_KEY}"}
    dry = _cli(rotate_env, "secrets", "rotate", "--dry-run")
    assert "would re-encrypt 1 connection secret(s) and 1 webhook secret(s)" in dry.stdout, dry.stdout
    assert Connection.get_by_id(legacy.id).credentials == legacy.credentials  # a dry run writes nothing
    done = _cli(rotate_env, "secrets", "rotate")
    assert done.returncode == 0 and "re-encrypted 1 connection secret(s) and 1 webhook secret(s)" in done.stdout

    newest = Vault((NEW_KEY,))  # the old key can now be dropped: everything opens without it
    assert newest.decrypt(Connection.get_by_id(legacy.id).credentials) == {"token": "crm-token-123456"}
    assert newest.decrypt(Webhook.get_by_id(old_hook.id).sealed_secrets) == [SECRET]
    assert {c.key_id for c in Connection.select()} == {newest.current_key_id}
    assert {w.key_id for w in Webhook.select()} == {newest.current_key_id}
    assert Connection.get_by_id(current.id).credentials == current.credentials  # already current: untouched
    again = _cli(rotate_env, "secrets", "rotate")
    assert "re-encrypted 0 connection secret(s) and 0 webhook secret(s)" in again.stdout


def test_secrets_rotate_names_what_no_configured_key_opens(keyed):
    env, _ = keyed
    workspace = catalog.ensure_workspace("lost")
    lost = Connection.create(workspace=workspace.id, integration=_integration(), name="lost",
                             credentials=_legacy_token("a-key-nobody-has-any-more-of-32-characters", {"a": 1}),
                             key_id="gone")
    result = _cli({**os.environ, **env}, "secrets", "rotate")
    assert result.returncode == 1, result.stdout + result.stderr
    assert str(lost.id) in result.stdout + result.stderr
    assert Connection.get_by_id(lost.id).credentials == lost.credentials


def _integration():
    from shiftflow.models.tables.integrations import Integration

    row, _ = Integration.get_or_create(key="crm", defaults={"name": "crm", "category": "custom", "auth_type": "API_KEY"})
    return row.id


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SHIFTFLOW, *args], env=env, capture_output=True, text=True, timeout=120)


def test_the_dump_helper_sees_clear_text(keyed):
    """The dump check above can fail: a value stored in clear shows in it."""
    _, db = keyed
    workspace = catalog.ensure_workspace("clear")
    Connection.create(workspace=workspace.id, integration=_integration(), name="plain",
                      credentials="clear-text-value-987")
    assert "clear-text-value-987" in _dump(db, "connection")
