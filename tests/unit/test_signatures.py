"""Webhook signature verification: published vectors, every failure reason, rotation, and
the official ``standardwebhooks`` and ``stripe`` libraries as positive controls."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from collections.abc import Callable

import pytest

from shiftflow.kernel.errors import SignatureError
from shiftflow.kernel.signatures import (
    MAX_DELIVERY_ID,
    generate_secret,
    sign_github,
    sign_standard,
    sign_stripe,
    signed_headers,
    verify,
    verify_github,
    verify_standard,
    verify_stripe,
)

NOW = 1_700_000_000
TOL = 300
BODY = b'{"id":"evt_123","type":"order.paid","amount":42}'
STD_SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
STD_OTHER = "whsec_" + base64.b64encode(b"o" * 32).decode()
RAW_SECRET = "It's a Secret to Everybody"

Mutator = Callable[[dict[str, str], bytes], tuple[dict[str, str], bytes]]


def std_headers(
    secret: str = STD_SECRET, body: bytes = BODY, ts: int = NOW, msg_id: str = "msg_1"
) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": sign_standard(secret, msg_id, ts, body),
    }


def reason(exc: pytest.ExceptionInfo[SignatureError]) -> str:
    return str(exc.value)


# --- GitHub ---------------------------------------------------------------------------


def test_github_documented_vector() -> None:
    # https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries
    expected = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    assert sign_github(RAW_SECRET, b"Hello, World!") == expected
    headers = {"X-Hub-Signature-256": expected, "X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958"}
    assert verify_github([RAW_SECRET], headers, b"Hello, World!") == "72d3162e-cc78-11e3-81ab-4c9367dc0958"


def gh_headers(secret: str = RAW_SECRET, body: bytes = BODY) -> dict[str, str]:
    return {"x-hub-signature-256": sign_github(secret, body), "x-github-delivery": "d-1"}


def test_github_headers_are_case_insensitive_and_uppercase_hex_ok() -> None:
    headers = {"X-HUB-SIGNATURE-256": sign_github(RAW_SECRET, BODY).upper().replace("SHA256=", "sha256="),
               "x-github-delivery": "d-1"}  # fmt: skip
    assert verify_github([RAW_SECRET], headers, BODY, NOW, TOL) == "d-1"


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda h, b: (h, b + b" "), "no signature matched"),
        (lambda h, b: ({**h, "x-hub-signature-256": sign_github("wrong", b)}, b), "no signature matched"),
        (lambda h, b: ({"x-github-delivery": "d-1"}, b), "missing header X-Hub-Signature-256"),
        (
            lambda h, b: ({"x-hub-signature-256": h["x-hub-signature-256"]}, b),
            "missing header X-GitHub-Delivery",
        ),
        (lambda h, b: ({**h, "x-github-delivery": "  "}, b), "missing header X-GitHub-Delivery"),
        (lambda h, b: ({**h, "x-hub-signature-256": "sha1=" + "0" * 64}, b), "malformed X-Hub-Signature-256"),
        (lambda h, b: ({**h, "x-hub-signature-256": "sha256=zz"}, b), "malformed X-Hub-Signature-256"),
        (lambda h, b: ({**h, "x-hub-signature-256": "sha256=abcd"}, b), "malformed X-Hub-Signature-256"),
        (lambda h, b: ({**h, "x-github-delivery": "x" * 300}, b), "malformed X-GitHub-Delivery"),
        (lambda h, b: ({**h, "x-github-delivery": "a\nb"}, b), "malformed X-GitHub-Delivery"),
    ],
)
def test_github_rejections(mutate: Mutator, expected: str) -> None:
    headers, body = mutate(gh_headers(), BODY)
    with pytest.raises(SignatureError) as exc:
        verify_github([RAW_SECRET], headers, body, NOW, TOL)
    assert reason(exc).startswith(expected)


def test_github_rotation_accepts_old_and_new_secret() -> None:
    for signer in ("old", "new"):
        assert verify_github(["new", "old"], gh_headers(signer), BODY) == "d-1"


# --- Standard Webhooks ---------------------------------------------------------------


def test_standard_roundtrip_and_delivery_id() -> None:
    assert verify_standard([STD_SECRET], std_headers(), BODY, NOW, TOL) == "msg_1"


def test_standard_spec_example_vector() -> None:
    # The example from the Standard Webhooks spec and its reference libraries' tests.
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    sig = sign_standard(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
    assert sig == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_standard_unprefixed_secret_is_raw_bytes() -> None:
    headers = std_headers(secret="plain-secret-no-prefix")
    assert verify_standard(["plain-secret-no-prefix"], headers, BODY, NOW, TOL) == "msg_1"


def test_standard_accepts_unpadded_base64_secret() -> None:
    unpadded = STD_SECRET.rstrip("=")
    assert unpadded != STD_SECRET
    assert verify_standard([unpadded], std_headers(), BODY, NOW, TOL) == "msg_1"


def test_standard_rotation_signature_list_and_secret_list() -> None:
    # Sender signs with old and new secrets at once (space-separated list).
    headers = std_headers()
    headers["webhook-signature"] = (
        sign_standard(STD_OTHER, "msg_1", NOW, BODY) + " " + headers["webhook-signature"]
    )
    assert verify_standard([STD_SECRET], headers, BODY, NOW, TOL) == "msg_1"
    # We hold old and new secrets; the sender uses either one.
    for signer in (STD_SECRET, STD_OTHER):
        assert verify_standard([STD_OTHER, STD_SECRET], std_headers(signer), BODY, NOW, TOL) == "msg_1"


def test_standard_ignores_other_versions_and_garbled_entries() -> None:
    headers = std_headers()
    headers["webhook-signature"] = "v1a,AAAA v1,!!notbase64!! junk " + headers["webhook-signature"]
    assert verify_standard([STD_SECRET], headers, BODY, NOW, TOL) == "msg_1"


@pytest.mark.parametrize("skew", [TOL, -TOL])
def test_standard_tolerance_boundary_is_inclusive(skew: int) -> None:
    assert verify_standard([STD_SECRET], std_headers(ts=NOW + skew), BODY, NOW, TOL) == "msg_1"


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda h, b: (h, b.replace(b"42", b"43")), "no signature matched"),
        (lambda h, b: ({**h, "webhook-id": "msg_2"}, b), "no signature matched"),
        (lambda h, b: ({**h, "webhook-timestamp": str(NOW + 1)}, b), "no signature matched"),
        (lambda h, b: (std_headers(secret=STD_OTHER), b), "no signature matched"),
        (lambda h, b: (std_headers(ts=NOW - TOL - 1), b), "timestamp outside tolerance of 300 s"),
        (lambda h, b: (std_headers(ts=NOW + TOL + 1), b), "timestamp outside tolerance of 300 s"),
        (lambda h, b: ({k: v for k, v in h.items() if k != "webhook-signature"}, b), "missing header webhook-signature"),
        (lambda h, b: ({k: v for k, v in h.items() if k != "webhook-id"}, b), "missing header webhook-id"),
        (lambda h, b: ({k: v for k, v in h.items() if k != "webhook-timestamp"}, b), "missing header webhook-timestamp"),
        (lambda h, b: ({**h, "webhook-timestamp": "17e8"}, b), "malformed webhook-timestamp"),
        (lambda h, b: ({**h, "webhook-timestamp": "-5"}, b), "malformed webhook-timestamp"),
        (lambda h, b: ({**h, "webhook-timestamp": "1700000000.5"}, b), "malformed webhook-timestamp"),
        (lambda h, b: ({**h, "webhook-signature": "v2,abc"}, b), "malformed webhook-signature"),
        (lambda h, b: ({**h, "webhook-signature": "garbage"}, b), "malformed webhook-signature"),
        (lambda h, b: ({**h, "webhook-id": "é"}, b), "malformed webhook-id"),
    ],
)  # fmt: skip
def test_standard_rejections(mutate: Mutator, expected: str) -> None:
    headers, body = mutate(std_headers(), BODY)
    with pytest.raises(SignatureError) as exc:
        verify_standard([STD_SECRET], headers, body, NOW, TOL)
    assert reason(exc).startswith(expected)


@pytest.mark.parametrize("secrets", [[], [""], ["whsec_!!!not-base64!!!"]])
def test_no_usable_secret_fails_closed(secrets: list[str]) -> None:
    with pytest.raises(SignatureError, match="no signing secret configured"):
        verify_standard(secrets, std_headers(), BODY, NOW, TOL)
    with pytest.raises(SignatureError, match="no signing secret configured"):
        verify_github([s for s in secrets if not s.startswith("whsec_")], gh_headers(), BODY)


def test_empty_key_signature_does_not_verify() -> None:
    # An attacker who signs with an empty key must not match an endpoint whose only
    # secret is empty or malformed (both decode to no key).
    headers = std_headers(secret="whsec_")
    with pytest.raises(SignatureError):
        verify_standard(["whsec_"], headers, BODY, NOW, TOL)


# --- Stripe ---------------------------------------------------------------------------

STRIPE_SECRET = "whsec_test_stripe_secret"


def stripe_headers(secret: str = STRIPE_SECRET, body: bytes = BODY, ts: int = NOW) -> dict[str, str]:
    return {"Stripe-Signature": sign_stripe(secret, ts, body)}


def test_stripe_roundtrip_uses_event_id() -> None:
    assert verify_stripe([STRIPE_SECRET], stripe_headers(), BODY, NOW, TOL) == "evt_123"


def test_stripe_known_vector() -> None:
    # Independent computation: hex HMAC-SHA256(secret as UTF-8, "t.body").
    import hmac

    expected = hmac.new(STRIPE_SECRET.encode(), f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert sign_stripe(STRIPE_SECRET, NOW, BODY) == f"t={NOW},v1={expected}"


@pytest.mark.parametrize("body", [b'{"type":"x"}', b'{"id":7}', b"[1,2]", b"not json", b'{"id":""}'])
def test_stripe_without_string_id_uses_timestamp_and_body_hash(body: bytes) -> None:
    delivery = verify_stripe([STRIPE_SECRET], stripe_headers(body=body), body, NOW, TOL)
    assert delivery == f"{NOW}.{hashlib.sha256(body).hexdigest()}"


def test_stripe_rotation_several_v1_and_several_secrets() -> None:
    header = stripe_headers()["Stripe-Signature"] + ",v1=" + sign_stripe("other", NOW, BODY).split("v1=")[1]
    assert verify_stripe(["other"], {"stripe-signature": header}, BODY, NOW, TOL) == "evt_123"
    assert verify_stripe(["old", STRIPE_SECRET], stripe_headers(), BODY, NOW, TOL) == "evt_123"


def test_stripe_ignores_unknown_schemes_in_header() -> None:
    header = stripe_headers()["Stripe-Signature"] + ",v0=deadbeef,v1=nothex,junk"
    assert verify_stripe([STRIPE_SECRET], {"stripe-signature": header}, BODY, NOW, TOL) == "evt_123"


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda h, b: (h, b + b"\n"), "no signature matched"),
        (lambda h, b: (stripe_headers(secret="wrong"), b), "no signature matched"),
        (lambda h, b: ({"Stripe-Signature": h["Stripe-Signature"].replace(f"t={NOW}", f"t={NOW + 1}")}, b),
         "no signature matched"),
        (lambda h, b: (stripe_headers(ts=NOW - TOL - 1), b), "timestamp outside tolerance of 300 s"),
        (lambda h, b: (stripe_headers(ts=NOW + TOL + 1), b), "timestamp outside tolerance of 300 s"),
        (lambda h, b: ({}, b), "missing header Stripe-Signature"),
        (lambda h, b: ({"Stripe-Signature": "v1=" + "0" * 64}, b), "malformed Stripe-Signature: missing t="),
        (lambda h, b: ({"Stripe-Signature": f"t={NOW}"}, b), "malformed Stripe-Signature: no v1="),
        (lambda h, b: ({"Stripe-Signature": h["Stripe-Signature"].replace(f"t={NOW}", "t=abc")}, b),
         "malformed Stripe-Signature timestamp"),
    ],
)  # fmt: skip
def test_stripe_rejections(mutate: Mutator, expected: str) -> None:
    headers, body = mutate(stripe_headers(), BODY)
    with pytest.raises(SignatureError) as exc:
        verify_stripe([STRIPE_SECRET], headers, body, NOW, TOL)
    assert reason(exc).startswith(expected)


# --- Dispatcher, helpers ------------------------------------------------------------


@pytest.mark.parametrize(("scheme", "secret", "expected"), [
    ("standard", STD_SECRET, "d-9"),
    ("stripe", STRIPE_SECRET, "evt_123"),
    ("github", RAW_SECRET, "d-9"),
])  # fmt: skip
def test_dispatcher_with_signed_headers(scheme: str, secret: str, expected: str) -> None:
    headers = signed_headers(scheme, secret, BODY, NOW, "d-9")
    assert headers["content-type"] == "application/json"
    assert verify(scheme, [secret], headers, BODY, NOW, TOL) == expected


@pytest.mark.parametrize(("scheme", "secret"), [
    ("standard", STD_SECRET), ("stripe", STRIPE_SECRET), ("github", RAW_SECRET),
])  # fmt: skip
def test_every_accepted_delivery_id_fits_the_dedup_key_column(scheme: str, secret: str) -> None:
    """``<scheme>:<delivery id>`` is the execution's dedup key: one that does not fit its column
    would be answered 202 and then fail to insert."""
    from shiftflow.models.tables.executions import Execution

    column = Execution.dedup_key.max_length
    for length in (MAX_DELIVERY_ID, MAX_DELIVERY_ID + 1, column):
        delivery = "d" * length
        body = json.dumps({"id": delivery}).encode() if scheme == "stripe" else BODY
        try:
            key = verify(scheme, [secret], signed_headers(scheme, secret, body, NOW, delivery), body, NOW, TOL)
        except SignatureError as exc:
            assert length > MAX_DELIVERY_ID and "malformed" in str(exc)
            continue
        assert len(f"{scheme}:{key}") <= column, (scheme, length)
        assert key == delivery or (scheme == "stripe" and length > MAX_DELIVERY_ID)  # else the body hash


def test_dispatcher_unknown_scheme() -> None:
    with pytest.raises(SignatureError, match="unsupported signature scheme 'svix'"):
        verify("svix", [STD_SECRET], std_headers(), BODY, NOW, TOL)
    with pytest.raises(ValueError):
        signed_headers("svix", STD_SECRET, BODY, NOW, "d")


def test_generate_secret_is_random_32_bytes_and_usable() -> None:
    a, b = generate_secret(), generate_secret()
    assert a != b and a.startswith("whsec_")
    assert len(base64.b64decode(a.removeprefix("whsec_"), validate=True)) == 32
    assert verify_standard([a], std_headers(secret=a), BODY, NOW, TOL) == "msg_1"


def test_sign_standard_rejects_malformed_prefixed_secret() -> None:
    with pytest.raises(ValueError):
        sign_standard("whsec_!!!", "m", NOW, BODY)


# --- Official libraries as positive controls -----------------------------------------


def test_standardwebhooks_library_signs_what_we_verify_and_vice_versa() -> None:
    standardwebhooks = pytest.importorskip("standardwebhooks")
    wh = standardwebhooks.Webhook(STD_SECRET)
    ts = dt.datetime.fromtimestamp(NOW, tz=dt.UTC)
    theirs = wh.sign("msg_lib", ts, BODY.decode())
    headers = {"webhook-id": "msg_lib", "webhook-timestamp": str(NOW), "webhook-signature": theirs}
    assert verify_standard([STD_SECRET], headers, BODY, NOW, TOL) == "msg_lib"
    assert sign_standard(STD_SECRET, "msg_lib", NOW, BODY) == theirs
    # Their verifier reads the wall clock, so sign ours with the current time for it.
    now = int(dt.datetime.now(dt.UTC).timestamp())
    ours = {
        "webhook-id": "m2",
        "webhook-timestamp": str(now),
        "webhook-signature": sign_standard(STD_SECRET, "m2", now, BODY),
    }
    assert wh.verify(BODY, ours) == json.loads(BODY)


def test_stripe_library_signs_what_we_verify_and_vice_versa() -> None:
    stripe = pytest.importorskip("stripe")
    theirs = stripe.WebhookSignature.generate_signature_header(BODY.decode(), STRIPE_SECRET, timestamp=NOW)
    assert verify_stripe([STRIPE_SECRET], {"Stripe-Signature": theirs}, BODY, NOW, TOL) == "evt_123"
    assert sign_stripe(STRIPE_SECRET, NOW, BODY) == theirs
    now = int(dt.datetime.now(dt.UTC).timestamp())
    assert stripe.WebhookSignature.verify_header(
        BODY, sign_stripe(STRIPE_SECRET, now, BODY), STRIPE_SECRET, 300
    )
