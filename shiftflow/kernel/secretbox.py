"""Encryption of secrets at rest (connection credentials, webhook signing secrets): Fernet
(AES-128-CBC + HMAC-SHA256) with rotation.

Keys come from ``SHIFTFLOW_SECRET_KEYS`` (newest first). Encryption always uses the
newest key; decryption tries every key, so a rotation is: put the new key first, run
``shiftflow secrets rotate`` (re-encrypts every stored secret under the newest key), then
drop the old key.

Derivation. Each configured key is a passphrase of at least 32 characters. It is
stretched with scrypt (n=2^14, r=8, p=1, a fixed salt) so that a weak passphrase costs a
guesser 16 MiB and tens of milliseconds per guess, then split with HKDF-SHA256 (fixed
info strings) into the Fernet key and the key's id. The id is stored beside each
ciphertext (``key_id``, ``v2:`` and 16 hex digits) to tell which rows still need a
rotation; it is derived from the stretched key, so it is no cheaper to test a guess
against than the ciphertext itself. Derivations are made once per process and key.

In the first releases the Fernet key was one SHA-256 of the passphrase and the key id a
SHA-256 of it too: an offline guess cost one hash. Ciphertexts of that derivation stay
readable (decryption also tries it), are never produced any more, and ``rotate`` moves
them to the new one; ``needs_rotation`` finds them.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from shiftflow.kernel.errors import PermanentError, SettingsError

#: scrypt parameters: 2^14 x 8 x 128 bytes = 16 MiB per derivation (the interactive-use
#: minimum commonly recommended); the salt is fixed because it has to be known before
#: anything can be read, and each deployment's passphrase is its own.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
_SALT = b"shiftflow/secret-keys/v2"
_FERNET_INFO = b"shiftflow fernet key v2"
_KEY_ID_INFO = b"shiftflow key id v2"
#: Prefix of key ids of the current derivation.
KEY_ID_PREFIX = "v2:"


class DecryptionError(PermanentError):
    """Raised when a ciphertext matches none of the configured keys (or was tampered with)."""


def _hkdf(master: bytes, length: int, info: bytes) -> bytes:
    return HKDF(algorithm=SHA256(), length=length, salt=None, info=info).derive(master)


@functools.lru_cache(maxsize=32)
def _derive(passphrase: str) -> tuple[bytes, str]:
    """(Fernet key, key id) of one passphrase; slow on purpose, so made once per process."""
    master = Scrypt(salt=_SALT, length=32, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P).derive(passphrase.encode())
    fernet_key = base64.urlsafe_b64encode(_hkdf(master, 32, _FERNET_INFO))
    return fernet_key, KEY_ID_PREFIX + _hkdf(master, 8, _KEY_ID_INFO).hex()


def _legacy_fernet(passphrase: str) -> Fernet:
    """The first releases' derivation (one SHA-256): read only, never used to encrypt."""
    return Fernet(base64.urlsafe_b64encode(hashlib.sha256(passphrase.encode()).digest()))


def key_id(passphrase: str) -> str:
    """The non-secret id of a key, stored beside ciphertexts to tell which key made them."""
    return _derive(passphrase)[1]


class Vault:
    """Encrypts and decrypts JSON values with the configured keys.

    Raises:
        SettingsError: no key is configured.
    """

    def __init__(self, passphrases: tuple[str, ...]) -> None:
        if not passphrases:
            raise SettingsError("SHIFTFLOW_SECRET_KEYS is not set: stored secrets cannot be encrypted")
        current = [Fernet(_derive(p)[0]) for p in passphrases]
        self._newest = current[0]
        # Current derivations first: what is written now is found by the first try.
        self._multi = MultiFernet(current + [_legacy_fernet(p) for p in passphrases])
        self.current_key_id = key_id(passphrases[0])

    def encrypt(self, value: Any) -> str:
        """The ciphertext (text) of a JSON-able value, under the newest key."""
        return self._newest.encrypt(json.dumps(value, sort_keys=True).encode()).decode()

    def decrypt(self, token: str) -> Any:
        """The value of a ciphertext made by any configured key, of either derivation.

        Raises:
            DecryptionError: no key opens it.
        """
        try:
            return json.loads(self._multi.decrypt(token.encode()))
        except InvalidToken:
            raise DecryptionError("a stored secret cannot be decrypted with the configured keys") from None

    def needs_rotation(self, token: str) -> bool:
        """True when the ciphertext is not under the newest key (an older key or derivation)."""
        try:
            self._newest.decrypt(token.encode())
        except InvalidToken:
            return True
        return False

    def rotate(self, token: str) -> str:
        """Re-encrypt a ciphertext under the newest key.

        Raises:
            DecryptionError: no configured key opens it.
        """
        try:
            return self._multi.rotate(token.encode()).decode()
        except InvalidToken:
            raise DecryptionError("a stored secret cannot be decrypted with the configured keys") from None


@functools.lru_cache(maxsize=8)
def vault_for(passphrases: tuple[str, ...]) -> Vault:
    """The process's ``Vault`` for these keys (built once: derivations are slow on purpose).

    Raises:
        SettingsError: no key is configured.
    """
    return Vault(passphrases)
