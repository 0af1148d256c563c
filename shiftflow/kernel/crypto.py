"""Encryption of connection secrets at rest: Fernet (AES-128-CBC + HMAC-SHA256) with rotation.

Keys come from ``SHIFTFLOW_SECRET_KEYS`` (newest first). Encryption always uses the
newest key; decryption tries every key, so a rotation is: put the new key first,
re-encrypt with ``rotate`` at leisure, then drop the old key. Each configured key is a
passphrase of at least 32 characters, stretched to a Fernet key with SHA-256.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from shiftflow.kernel.errors import PermanentError, SettingsError


class DecryptionError(PermanentError):
    """Raised when a ciphertext matches none of the configured keys (or was tampered with)."""


def key_id(passphrase: str) -> str:
    """A short, non-secret id of a key, stored beside ciphertexts to tell which key made them."""
    return hashlib.sha256(b"shiftflow-key-id:" + passphrase.encode()).hexdigest()[:12]


class Vault:
    """Encrypts and decrypts JSON values with the configured keys.

    Raises:
        SettingsError: no key is configured.
    """

    def __init__(self, passphrases: tuple[str, ...]) -> None:
        if not passphrases:
            raise SettingsError("SHIFTFLOW_SECRET_KEYS is not set: connection secrets cannot be encrypted")
        fernets = [Fernet(base64.urlsafe_b64encode(hashlib.sha256(p.encode()).digest())) for p in passphrases]
        self._multi = MultiFernet(fernets)
        self.current_key_id = key_id(passphrases[0])

    def encrypt(self, value: Any) -> str:
        """The ciphertext (text) of a JSON-able value, under the newest key."""
        return self._multi.encrypt(json.dumps(value, sort_keys=True).encode()).decode()

    def decrypt(self, token: str) -> Any:
        """The value of a ciphertext made by any configured key.

        Raises:
            DecryptionError: no key opens it.
        """
        try:
            return json.loads(self._multi.decrypt(token.encode()))
        except InvalidToken:
            raise DecryptionError("a stored secret cannot be decrypted with the configured keys") from None

    def rotate(self, token: str) -> str:
        """Re-encrypt a ciphertext under the newest key."""
        return self._multi.rotate(token.encode()).decode()
