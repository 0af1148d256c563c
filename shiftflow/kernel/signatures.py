"""Webhook signature verification: Standard Webhooks, Stripe and GitHub.

Pure functions: no I/O, no clock (``now`` is passed in), so every rule is tested
without a server. Each ``verify_*`` takes the endpoint's accepted secrets (more than
one while a secret is being rotated), the request headers, the raw body bytes exactly
as received, and returns the delivery id that becomes the trigger's deduplication key.
Every failure raises ``SignatureError`` with a reason a person can act on.

Signatures are always compared with ``hmac.compare_digest`` on bytes, never ``==``,
so the time taken does not leak how many leading bytes matched.

The three schemes side by side: docs/architecture.md#webhook-signatures.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import json
import secrets as _secrets
from collections.abc import Callable, Mapping, Sequence

from shiftflow.kernel.contracts import MAX_DEDUP_KEY
from shiftflow.kernel.errors import SignatureError

#: Schemes a webhook endpoint can use; the value stored in ``Webhook.scheme``.
SCHEMES = ("standard", "stripe", "github")

#: Longest delivery id we accept: it ends up in log lines and, after ``<scheme>:``, in the
#: execution's dedup key column; a longer one would be answered 202 and then not stored.
MAX_DELIVERY_ID = MAX_DEDUP_KEY - max(len(scheme) for scheme in SCHEMES) - 1

_STANDARD_PREFIX = "whsec_"


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """Return header ``name`` case-insensitively, or None when absent or blank.

    Starlette's ``Headers`` is already case-insensitive; plain dicts (tests, CLI) are not,
    so fall back to a scan.
    """
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lowered), None)
    if value is None or not value.strip():
        return None
    return value.strip()


def _require(headers: Mapping[str, str], name: str) -> str:
    value = _header(headers, name)
    if value is None:
        raise SignatureError(f"missing header {name}")
    return value


def _delivery_id(value: str, header: str) -> str:
    # Printable ASCII only: the id is echoed in responses, logs and the dedup key.
    if len(value) > MAX_DELIVERY_ID or not value.isascii() or not value.isprintable():
        raise SignatureError(
            f"malformed {header}: expected at most {MAX_DELIVERY_ID} printable ASCII characters"
        )
    return value


def _timestamp(raw: str, header: str) -> int:
    # Only plain decimal seconds: int() would also accept "+1_700_000_000" or " 17 ".
    if not raw.isascii() or not raw.isdigit() or len(raw) > 12:
        raise SignatureError(f"malformed {header}: expected Unix seconds")
    return int(raw)


def _check_tolerance(timestamp: int, now: float, tolerance: int) -> None:
    # Both directions: a timestamp far in the future is as suspicious as an old one
    # (a captured request replayed later, or a sender with a broken clock).
    if abs(now - timestamp) > tolerance:
        raise SignatureError(f"timestamp outside tolerance of {tolerance} s")


def _usable(secrets: Sequence[str], decode: Callable[[str], bytes | None]) -> list[bytes]:
    """Decode every configured secret into an HMAC key, skipping empty or malformed ones.

    Fail closed: with no usable key at all, nothing can verify, so refuse the request
    (an empty HMAC key would let anyone compute a valid signature).
    """
    keys = _decoded(tuple(secrets), decode) if isinstance(secrets, tuple) else _decode_all(secrets, decode)
    if not keys:
        raise SignatureError("no signing secret configured for this webhook")
    return list(keys)


def _decode_all(secrets: Sequence[str], decode: Callable[[str], bytes | None]) -> tuple[bytes, ...]:
    return tuple(key for key in (decode(s) for s in secrets if isinstance(s, str)) if key)


#: An endpoint's secrets arrive as the same tuple on every request: decode them once
#: (base64 for Standard Webhooks), not per webhook. Keys only live as long as the cache.
_decoded = functools.lru_cache(maxsize=4096)(_decode_all)


def _standard_key(secret: str) -> bytes | None:
    if secret.startswith(_STANDARD_PREFIX):
        encoded = secret[len(_STANDARD_PREFIX) :]
        try:
            # Some senders drop the base64 padding; restore it before strict decoding.
            return base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except (binascii.Error, ValueError):
            return None
    return secret.encode("utf-8")


def _raw_key(secret: str) -> bytes | None:
    # Stripe and GitHub use the secret string itself (Stripe's includes its whsec_ prefix).
    return secret.encode("utf-8")


def _hmac(key: bytes, message: bytes) -> bytes:
    # The one-shot form runs in OpenSSL without building an HMAC object per call.
    return hmac.digest(key, message, "sha256")


def _any_match(keys: list[bytes], message: bytes, candidates: list[bytes]) -> bytes | None:
    """Return the first candidate signature that any key produces, else None."""
    for key in keys:
        expected = _hmac(key, message)
        for candidate in candidates:
            if hmac.compare_digest(expected, candidate):
                return candidate
    return None


def verify_standard(
    secrets: Sequence[str], headers: Mapping[str, str], body: bytes, now: float, tolerance: int
) -> str:
    """Verify a Standard Webhooks delivery (``webhook-id``/``-timestamp``/``-signature``).

    The signed content is ``"{id}.{timestamp}.{body}"``; the key is the base64-decoded part
    after ``whsec_`` (a secret without the prefix is used as raw UTF-8 bytes). The signature
    header is a space-separated list of ``v1,<base64>``; any entry matching any secret is
    accepted, which is how senders rotate secrets without downtime. Other versions (such as
    the asymmetric ``v1a``) are ignored.

    Parameters:
        secrets: the endpoint's accepted secrets, newest first.
        headers: request headers (any case).
        body: the raw request body, exactly as received.
        now: the current Unix time in seconds.
        tolerance: the accepted distance between ``webhook-timestamp`` and ``now``, in seconds.

    Returns:
        The delivery id (``webhook-id``), stable across the sender's retries.

    Raises:
        SignatureError: a header is missing or malformed, no signature matched, or the
            timestamp is outside the tolerance.
    """
    msg_id = _delivery_id(_require(headers, "webhook-id"), "webhook-id")
    raw_ts = _require(headers, "webhook-timestamp")
    timestamp = _timestamp(raw_ts, "webhook-timestamp")
    candidates: list[bytes] = []
    for entry in _require(headers, "webhook-signature").split():
        version, _, encoded = entry.partition(",")
        if version != "v1" or not encoded:
            continue
        try:
            candidates.append(base64.b64decode(encoded, validate=True))
        except (binascii.Error, ValueError):
            continue  # one garbled entry must not hide a valid one beside it
    if not candidates:
        raise SignatureError("malformed webhook-signature: expected space-separated v1,<base64> entries")
    keys = _usable(secrets, _standard_key)
    message = f"{msg_id}.{raw_ts}.".encode() + body
    # Signature before timestamp: only an authenticated sender learns its clock is off.
    if _any_match(keys, message, candidates) is None:
        raise SignatureError("no signature matched")
    _check_tolerance(timestamp, now, tolerance)
    return msg_id


def _parse_stripe_header(value: str) -> tuple[str, list[bytes]]:
    timestamp: str | None = None
    candidates: list[bytes] = []
    for item in value.split(","):
        key, sep, val = item.strip().partition("=")
        if not sep:
            continue
        if key == "t" and timestamp is None:
            timestamp = val
        elif key == "v1":
            try:
                candidates.append(bytes.fromhex(val))
            except ValueError:
                continue
    if timestamp is None:
        raise SignatureError("malformed Stripe-Signature: missing t=<timestamp>")
    if not candidates:
        raise SignatureError("malformed Stripe-Signature: no v1=<hex> signature")
    return timestamp, candidates


def _stripe_event_id(body: bytes) -> str | None:
    try:
        event = json.loads(body)
    except (ValueError, RecursionError):
        return None
    event_id = event.get("id") if isinstance(event, dict) else None
    if (
        isinstance(event_id, str)
        and 0 < len(event_id) <= MAX_DELIVERY_ID
        and event_id.isascii()
        and event_id.isprintable()
    ):
        return event_id
    return None


def verify_stripe(
    secrets: Sequence[str], headers: Mapping[str, str], body: bytes, now: float, tolerance: int
) -> str:
    """Verify a Stripe delivery (``Stripe-Signature: t=<unix>,v1=<hex>[,v1=...]``).

    The signature is hex HMAC-SHA256 over ``"{t}.{body}"``, keyed with the secret string
    itself (Stripe's secrets carry a ``whsec_`` prefix but, unlike Standard Webhooks, are
    not base64-decoded). Several ``v1`` values appear while Stripe rolls a secret.

    Parameters:
        secrets: the endpoint's accepted secrets.
        headers: request headers (any case).
        body: the raw request body, exactly as received.
        now: the current Unix time in seconds.
        tolerance: the accepted distance between ``t`` and ``now``, in seconds.

    Returns:
        The event's top-level ``"id"`` when the body is a JSON object with a string id:
        Stripe re-signs every retry with a new ``t`` but keeps the event id, so that is
        the key that deduplicates retries. Otherwise ``"{t}.{sha256(body)}"``: stable for a
        byte-identical resend, and independent of which secret matched.

    Raises:
        SignatureError: the header is missing or malformed, no signature matched, or the
            timestamp is outside the tolerance.
    """
    raw_ts, candidates = _parse_stripe_header(_require(headers, "Stripe-Signature"))
    timestamp = _timestamp(raw_ts, "Stripe-Signature timestamp")
    keys = _usable(secrets, _raw_key)
    if _any_match(keys, f"{raw_ts}.".encode() + body, candidates) is None:
        raise SignatureError("no signature matched")
    _check_tolerance(timestamp, now, tolerance)
    return _stripe_event_id(body) or f"{raw_ts}.{hashlib.sha256(body).hexdigest()}"


def verify_github(
    secrets: Sequence[str], headers: Mapping[str, str], body: bytes, now: float = 0.0, tolerance: int = 0
) -> str:
    """Verify a GitHub delivery (``X-Hub-Signature-256: sha256=<hex>`` over the raw body).

    GitHub signs no timestamp, so ``now`` and ``tolerance`` are accepted (one signature for
    every scheme) and ignored; replays are caught by deduplicating on the delivery id,
    which GitHub keeps on a manual redelivery. The legacy SHA-1 ``X-Hub-Signature`` is
    not accepted.

    Parameters:
        secrets: the endpoint's accepted secrets (GitHub sends one; we accept old and new
            while the hook's secret is being changed).
        headers: request headers (any case).
        body: the raw request body, exactly as received.
        now: unused.
        tolerance: unused.

    Returns:
        The delivery id (``X-GitHub-Delivery``).

    Raises:
        SignatureError: a header is missing or malformed, or no signature matched.
    """
    value = _require(headers, "X-Hub-Signature-256")
    prefix, _, hexsig = value.partition("=")
    try:
        candidate = bytes.fromhex(hexsig) if prefix == "sha256" else b""
    except ValueError:
        candidate = b""
    if len(candidate) != hashlib.sha256().digest_size:
        raise SignatureError("malformed X-Hub-Signature-256: expected sha256=<64 hex digits>")
    delivery = _delivery_id(_require(headers, "X-GitHub-Delivery"), "X-GitHub-Delivery")
    if _any_match(_usable(secrets, _raw_key), body, [candidate]) is None:
        raise SignatureError("no signature matched")
    return delivery


_VERIFIERS: dict[str, Callable[[Sequence[str], Mapping[str, str], bytes, float, int], str]] = {
    "standard": verify_standard,
    "stripe": verify_stripe,
    "github": verify_github,
}


def verify(
    scheme: str,
    secrets: Sequence[str],
    headers: Mapping[str, str],
    body: bytes,
    now: float,
    tolerance: int,
) -> str:
    """Verify a delivery with the verifier of ``scheme``.

    Parameters:
        scheme: ``standard``, ``stripe`` or ``github``.
        secrets, headers, body, now, tolerance: as for ``verify_standard``.

    Returns:
        The delivery id; the caller prefixes it with the scheme to build a dedup key.

    Raises:
        SignatureError: the scheme is unknown or the delivery does not verify.
    """
    verifier = _VERIFIERS.get(scheme)
    if verifier is None:
        raise SignatureError(f"unsupported signature scheme {scheme!r}: expected one of {', '.join(SCHEMES)}")
    return verifier(secrets, headers, body, now, tolerance)


def sign_standard(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """Sign like a Standard Webhooks sender.

    Returns:
        The ``webhook-signature`` header value, ``v1,<base64>``.

    Raises:
        ValueError: ``secret`` has a ``whsec_`` prefix but is not valid base64 after it.
    """
    key = _standard_key(secret)
    if key is None:
        raise ValueError("secret is not valid base64 after the whsec_ prefix")
    digest = _hmac(key, f"{msg_id}.{timestamp}.".encode() + body)
    return "v1," + base64.b64encode(digest).decode("ascii")


def sign_stripe(secret: str, timestamp: int, body: bytes) -> str:
    """Sign like Stripe.

    Returns:
        The ``Stripe-Signature`` header value, ``t=<timestamp>,v1=<hex>``.
    """
    digest = _hmac(secret.encode("utf-8"), f"{timestamp}.".encode() + body)
    return f"t={timestamp},v1={digest.hex()}"


def sign_github(secret: str, body: bytes) -> str:
    """Sign like GitHub.

    Returns:
        The ``X-Hub-Signature-256`` header value, ``sha256=<hex>``.
    """
    return "sha256=" + _hmac(secret.encode("utf-8"), body).hex()


def signed_headers(scheme: str, secret: str, body: bytes, timestamp: int, delivery_id: str) -> dict[str, str]:
    """Every header a sender of ``scheme`` would add, for tests, the CLI and dev mode.

    Parameters:
        scheme: ``standard``, ``stripe`` or ``github``.
        secret: the signing secret.
        body: the exact body that will be sent.
        timestamp: Unix seconds to sign (ignored by ``github``).
        delivery_id: the delivery id (ignored by ``stripe``, whose id is in the body).

    Returns:
        Header names to values, including ``content-type: application/json``.

    Raises:
        ValueError: ``scheme`` is unknown.
    """
    headers = {"content-type": "application/json"}
    if scheme == "standard":
        headers |= {
            "webhook-id": delivery_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign_standard(secret, delivery_id, timestamp, body),
        }
    elif scheme == "stripe":
        headers["stripe-signature"] = sign_stripe(secret, timestamp, body)
    elif scheme == "github":
        headers |= {"x-hub-signature-256": sign_github(secret, body), "x-github-delivery": delivery_id}
    else:
        raise ValueError(f"unsupported signature scheme {scheme!r}: expected one of {', '.join(SCHEMES)}")
    return headers


def generate_secret() -> str:
    """A new Standard Webhooks secret: ``whsec_`` + base64 of 32 random bytes.

    32 bytes is above the spec's 24-byte minimum; the same string works as a Stripe-style
    or GitHub secret, where it is used as-is.
    """
    return _STANDARD_PREFIX + base64.b64encode(_secrets.token_bytes(32)).decode("ascii")
