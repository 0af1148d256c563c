"""Webhook signing secrets at rest: sealed with the keys of ``SHIFTFLOW_SECRET_KEYS``.

A webhook accepts several secrets at once (a sender rotating its secret); the whole list
is encrypted as one value into ``Webhook.sealed_secrets``, with the id of the key that
sealed it in ``Webhook.key_id``, exactly as connection credentials are. Only the ingress's
hook lookup (``producers.ingress.hooks``) and the creator of a webhook (shown once) open it.
"""

from __future__ import annotations

from collections.abc import Iterable

from shiftflow.kernel.secretbox import vault_for
from shiftflow.kernel.settings import get_settings
from shiftflow.models.tables.workflows import Webhook


def usable(values: Iterable[object]) -> list[str]:
    """The non-empty text values of a list of secrets (anything else verifies nothing)."""
    return [v for v in values if isinstance(v, str) and v]


def seal(secrets: Iterable[object]) -> tuple[str, str]:
    """(ciphertext, key id) of a list of signing secrets, under the newest key.

    Raises:
        SettingsError: ``SHIFTFLOW_SECRET_KEYS`` is not set.
    """
    vault = vault_for(get_settings().secret_keys)
    return vault.encrypt(usable(secrets)), vault.current_key_id


def open_sealed(ciphertext: str) -> list[str]:
    """The signing secrets of a ``sealed_secrets`` value.

    Raises:
        SettingsError: ``SHIFTFLOW_SECRET_KEYS`` is not set.
        DecryptionError: no configured key opens it.
    """
    value = vault_for(get_settings().secret_keys).decrypt(ciphertext)
    return usable(value if isinstance(value, list) else [])


def reveal(row: Webhook) -> list[str]:
    """A webhook's signing secrets in clear, newest first (for its creator and the ingress)."""
    return open_sealed(row.sealed_secrets)
