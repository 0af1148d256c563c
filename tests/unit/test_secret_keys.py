"""Keys from SHIFTFLOW_SECRET_KEYS: derived with a KDF, a key id that does not help guessing,
ciphertexts of the old derivation still readable and rotated to the new one."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.fernet import Fernet, InvalidToken

from shiftflow.kernel.secretbox import DecryptionError, Vault, vault_for

OLD = "an-old-passphrase-of-more-than-32-characters"
NEW = "a-new-passphrase-also-of-more-than-32-characters"


def _legacy_fernet(passphrase: str) -> Fernet:
    """The derivation before issue 11: one SHA-256 of the passphrase."""
    return Fernet(base64.urlsafe_b64encode(hashlib.sha256(passphrase.encode()).digest()))


def _legacy_key_id(passphrase: str) -> str:
    return hashlib.sha256(b"shiftflow-key-id:" + passphrase.encode()).hexdigest()[:12]


def test_keys_are_derived_with_a_kdf_not_one_sha256():
    token = Vault((NEW,)).encrypt({"token": "s3cr3t"})
    with pytest.raises(InvalidToken):
        _legacy_fernet(NEW).decrypt(token.encode())


def test_the_stored_key_id_is_not_a_fast_hash_of_the_passphrase():
    kid = Vault((NEW,)).current_key_id
    assert kid != _legacy_key_id(NEW)
    assert kid.startswith("v2:")  # tells a row under the new derivation from an old one
    digests = {hashlib.sha256(s.encode()).hexdigest() for s in (NEW, "shiftflow-key-id:" + NEW)}
    assert not any(kid[3:] in d for d in digests)


def test_ciphertexts_of_the_old_derivation_stay_readable_and_rotate_to_the_new():
    old_token = _legacy_fernet(NEW).encrypt(b'{"token": "s3cr3t"}').decode()
    vault = Vault((NEW,))
    assert vault.decrypt(old_token) == {"token": "s3cr3t"}
    assert vault.needs_rotation(old_token)
    rotated = vault.rotate(old_token)
    assert vault.decrypt(rotated) == {"token": "s3cr3t"} and not vault.needs_rotation(rotated)
    with pytest.raises(InvalidToken):
        _legacy_fernet(NEW).decrypt(rotated.encode())  # no longer under the old derivation


def test_rotation_moves_ciphertexts_to_the_newest_key():
    token = Vault((OLD,)).encrypt(["whsec_abc"])
    both = Vault((NEW, OLD))
    assert both.decrypt(token) == ["whsec_abc"] and both.needs_rotation(token)
    rotated = both.rotate(token)
    assert Vault((NEW,)).decrypt(rotated) == ["whsec_abc"]
    with pytest.raises(DecryptionError):
        Vault((OLD,)).decrypt(rotated)


def test_derivations_are_made_once_per_process():
    assert vault_for((NEW, OLD)) is vault_for((NEW, OLD))
    assert vault_for((NEW,)).current_key_id == Vault((NEW,)).current_key_id


def test_dev_mode_makes_its_own_key_once_and_keeps_it(tmp_path):
    import os
    import stat

    from shiftflow.cli.dev import DEV_SECRET_KEY_FILE, dev_secret_key

    first = dev_secret_key(str(tmp_path))
    assert len(first) >= 32 and dev_secret_key(str(tmp_path)) == first  # a restart opens what was sealed
    assert stat.S_IMODE(os.stat(tmp_path / DEV_SECRET_KEY_FILE).st_mode) == 0o600
    assert Vault((first,)).decrypt(Vault((first,)).encrypt("x")) == "x"
