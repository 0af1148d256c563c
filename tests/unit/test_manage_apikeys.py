"""``models.manage.apikeys``: the API-key text and its hash."""

from __future__ import annotations

import hashlib

from shiftflow.models.manage import apikeys


def test_api_key_text_shape_and_hash():
    text, prefix = apikeys.generate()
    assert text.startswith(prefix + "_") and prefix.startswith("sfk_") and len(prefix) == 16
    secret = text[len(prefix) + 1 :]
    assert len(secret) == 43  # 32 random bytes, url-safe base64: 256 bits
    assert apikeys.hash_key(text) == hashlib.sha256(text.encode()).hexdigest()
    assert len({apikeys.generate()[0] for _ in range(200)}) == 200
