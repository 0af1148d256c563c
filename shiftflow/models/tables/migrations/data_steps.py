"""Data steps: what a migration needs done in Python, inside its transaction, before its SQL.

A step runs after the migration lock is taken and before the migration's SQL file, in
the same transaction, so a failure in either rolls both back and leaves the migration
pending. Steps read and write with plain SQL on the connection they are given (the
models describe the schema after the migration, not before it).
"""

from __future__ import annotations

import json
from collections.abc import Callable

import peewee

from shiftflow.kernel.errors import PermanentError
from shiftflow.kernel.secretbox import vault_for
from shiftflow.kernel.settings import get_settings


class DataStepError(PermanentError):
    """Raised when a data step cannot run (``migrations.upgrade`` reports it as a MigrationError)."""


def seal_webhook_secrets(db: peewee.Database) -> None:
    """0008: replace every webhook's clear list of signing secrets by
    ``{"sealed": <ciphertext>, "key_id": <id>}`` (the SQL then moves them into columns).

    Raises:
        DataStepError: there are secrets to seal and ``SHIFTFLOW_SECRET_KEYS`` is not set.
    """
    rows = db.execute_sql("SELECT id, secrets FROM webhook WHERE jsonb_typeof(secrets) = 'array'").fetchall()
    if not rows:
        return
    keys = get_settings().secret_keys
    if not keys:
        raise DataStepError(
            f"migration 0008 encrypts the signing secrets of {len(rows)} webhook(s), which are stored in "
            "clear: set SHIFTFLOW_SECRET_KEYS (the keys of every process) and run `shiftflow migrate` again"
        )
    vault = vault_for(keys)
    for row_id, secrets in rows:
        if isinstance(secrets, str | bytes):  # the JSONB column, as the driver hands it over unparsed
            secrets = json.loads(secrets)
        values = [s for s in secrets if isinstance(s, str) and s]
        sealed = {"sealed": vault.encrypt(values), "key_id": vault.current_key_id}
        db.execute_sql("UPDATE webhook SET secrets = %s::jsonb WHERE id = %s", (json.dumps(sealed), row_id))


#: Migration name -> its data step, run before its SQL.
BEFORE: dict[str, Callable[[peewee.Database], None]] = {
    "0008_key_makers_sealed_webhook_secrets": seal_webhook_secrets,
}
