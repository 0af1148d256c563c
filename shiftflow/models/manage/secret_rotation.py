"""Re-encrypting every stored secret under the newest key (``shiftflow secrets rotate``).

Stored secrets are connection credentials (``Connection.credentials``) and webhook
signing secrets (``Webhook.sealed_secrets``). A row needs rotating when the newest key
of ``SHIFTFLOW_SECRET_KEYS`` does not open it: it was made by an older key, or by the
derivation of the first releases (``kernel.secretbox``). Each row is rewritten on its own with a
compare-and-set on its old ciphertext, so a secret replaced meanwhile is never
overwritten with a stale one, and a run stopped half-way is finished by running again.
A row no configured key opens is reported and left as it is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import peewee

from shiftflow.kernel.secretbox import DecryptionError, vault_for
from shiftflow.kernel.settings import get_settings
from shiftflow.models.tables.integrations import Connection
from shiftflow.models.tables.workflows import Webhook

#: Rows read per query.
BATCH = 500


@dataclass
class RotationReport:
    """What a rotation did (or, dry, would do)."""

    key_id: str
    connections: int = 0
    webhooks: int = 0
    current: int = 0
    unreadable: list[str] = field(default_factory=list)


def _rows(model: Any, column: peewee.Field) -> Iterator[tuple[Any, str, str | None]]:
    """(id, ciphertext, key id) of every row, in id order, ``BATCH`` at a time."""
    last = None
    while True:
        query = model.select(model.id, column, model.key_id).order_by(model.id).limit(BATCH)
        if last is not None:
            query = query.where(model.id > last)
        page = list(query.tuples())
        if not page:
            return
        yield from page
        last = page[-1][0]


def rotate_all(*, dry_run: bool = False, progress: Callable[[str], None] | None = None) -> RotationReport:
    """Re-encrypt every stored secret the newest key does not open.

    Parameters:
        dry_run: count only, write nothing.
        progress: called with a line per table done.

    Returns:
        The counts, and the rows no configured key opens (``connection <id>``, ``webhook <id>``).

    Raises:
        SettingsError: ``SHIFTFLOW_SECRET_KEYS`` is not set.
    """
    vault = vault_for(get_settings().secret_keys)
    report = RotationReport(vault.current_key_id)
    # Models as Any: both have ``id`` and ``key_id``, which peewee's stubs cannot know.
    tables: tuple[tuple[str, Any, peewee.Field], ...] = (
        ("connection", Connection, Connection.credentials),
        ("webhook", Webhook, Webhook.sealed_secrets),
    )
    for kind, model, column in tables:
        rotated = 0
        for row_id, token, key_id in _rows(model, column):
            stale = vault.needs_rotation(token)
            if not stale and key_id == vault.current_key_id:
                report.current += 1
                continue
            try:
                fresh = vault.rotate(token) if stale else token
            except DecryptionError:
                report.unreadable.append(f"{kind} {row_id}")
                continue
            if not dry_run:
                changed = (
                    model.update({column: fresh, model.key_id: vault.current_key_id})
                    .where((model.id == row_id) & (column == token))
                    .execute()
                )
                if not changed:  # rewritten meanwhile, by code that writes under the newest key
                    report.current += 1
                    continue
            rotated += 1
        if kind == "connection":
            report.connections = rotated
        else:
            report.webhooks = rotated
        if progress is not None:
            progress(f"  {kind}: {rotated} {'to re-encrypt' if dry_run else 're-encrypted'}")
    return report
