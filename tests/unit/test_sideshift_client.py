"""SideShift client without a server: parsing, error mapping, transport failures, limiter.

The client against the fake over real HTTP is in tests/integration/test_sideshift_fake.py.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from email.utils import format_datetime

import httpx
import pytest

from shiftflow.kernel.errors import PermanentError, TransientError
from shiftflow.kernel.sideshift import (
    QUOTES,
    SHIFTS,
    AmountTooHigh,
    AmountTooLow,
    BadRequest,
    Checkout,
    InProcessBackend,
    InvalidAddress,
    InvalidUserIp,
    NotFound,
    OrderNotCancellable,
    PairNotAvailable,
    PermissionDenied,
    QuoteAlreadyUsed,
    QuoteExpired,
    Rate,
    RateLimited,
    RateLimiter,
    ServiceUnavailable,
    Shift,
    ShiftNotFound,
    SideShiftClient,
    SideShiftRejected,
    SignableRequest,
    TooManyOpenShifts,
    Unauthorized,
    UnexpectedResponse,
    UnknownOutcome,
    decimal_text,
    to_decimal,
)
from shiftflow.kernel.sideshift.errors import error_from_response, parse_retry_after

SETTLED = {
    "id": "f0e1d2c3b4a596877869",
    "createdAt": "2025-01-02T10:00:05.000Z",
    "depositCoin": "BTC",
    "settleCoin": "ETH",
    "depositNetwork": "bitcoin",
    "settleNetwork": "ethereum",
    "depositAddress": "bc1qdepositexample00000000000000000",
    "settleAddress": "0x1111111111111111111111111111111111111111",
    "depositMin": "0.01",
    "depositMax": "0.01",
    "type": "fixed",
    "quoteId": "0b6e2f1a-3c4d-4e5f-8a9b-0c1d2e3f4a5b",
    "depositAmount": "0.01",
    "settleAmount": "0.17",
    "expiresAt": "2025-01-02T10:15:00.000Z",
    "status": "settled",
    "updatedAt": "2025-01-02T10:09:00.000Z",
    "depositHash": "9f1c",
    "settleHash": "0x7e2d",
    "depositReceivedAt": "2025-01-02T10:05:00.000Z",
    "rate": "17",
    "averageShiftSeconds": "44.5",
}


class FakeTime:
    """A monotonic clock and a sleep that only moves it."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def client_with(handler, **kwargs) -> SideShiftClient:
    kwargs.setdefault("limiter", RateLimiter(InProcessBackend(), rates={}))
    return SideShiftClient(
        "AbCdE1234", base_url="http://sideshift.test/api/v2", transport=httpx.MockTransport(handler), **kwargs
    )


# -- types -------------------------------------------------------------------------------


def test_amounts_are_exact_decimals_and_floats_are_refused():
    shift = Shift.from_json(SETTLED)
    assert shift.settle_amount == Decimal("0.17") and isinstance(shift.settle_amount, Decimal)
    assert shift.rate == Decimal("17")
    assert shift.deposit_received_at == datetime(2025, 1, 2, 10, 5, tzinfo=UTC)
    assert shift.is_final and shift.deposits == ()
    with pytest.raises(TypeError):
        to_decimal(0.1)
    with pytest.raises(ValueError):
        to_decimal("NaN")
    assert decimal_text(Decimal("1E-8")) == "0.00000001"
    assert decimal_text("0.10") == "0.10"


def test_checkout_timestamps_with_nine_fraction_digits():
    checkout = Checkout.from_json(
        {
            "id": "c1",
            "settleCoin": "ETH",
            "settleNetwork": "ethereum",
            "settleAmount": "0.5",
            "settleAddress": "0x" + "1" * 40,
            "affiliateId": "AbCdE1234",
            "successUrl": "https://example.com/ok",
            "cancelUrl": "https://example.com/no",
            "createdAt": "2024-09-26T01:52:56.885000000Z",
            "updatedAt": "2024-09-26T01:52:56.885000000Z",
            "orders": [{"id": "a1b2", "deposits": [{"depositHash": "h"}]}],
        }
    )
    assert checkout.created_at == datetime(2024, 9, 26, 1, 52, 56, 885000, tzinfo=UTC)
    assert checkout.orders[0].id == "a1b2"


def test_json_numbers_never_pass_through_float():
    def handler(request: httpx.Request) -> httpx.Response:
        body = b'{"min":0.1,"max":0.12345678901234567890,"rate":17.29,"depositCoin":"BTC","settleCoin":"ETH",'
        body += b'"depositNetwork":"bitcoin","settleNetwork":"ethereum"}'
        return httpx.Response(200, content=body)

    pair = client_with(handler).get_pair("btc", "eth")
    # A float would keep 17 significant digits (0.12345678901234568).
    assert pair.min == Decimal("0.1") and pair.max == Decimal("0.12345678901234567890")


def test_multiple_deposits_are_parsed():
    data = {
        **SETTLED,
        "status": "multiple",
        "deposits": [
            {
                "status": "settled",
                "depositHash": "a",
                "depositAmount": "0.01",
                "updatedAt": SETTLED["updatedAt"],
            },
            {
                "status": "refunding",
                "depositHash": "b",
                "depositAmount": "0.02",
                "issue": "multiple deposits",
            },
        ],
    }
    shift = Shift.from_json(data)
    assert [d.deposit_amount for d in shift.deposits] == [Decimal("0.01"), Decimal("0.02")]
    assert not shift.is_final


# -- error mapping -----------------------------------------------------------------------

CASES = [
    (400, "Amount too low", "BAD_USER_INPUT", AmountTooLow),
    (400, "Amount too high", None, AmountTooHigh),
    (400, "depositAmount must be greater than zero", "BAD_USER_INPUT", AmountTooLow),
    (400, "Invalid receiving address", "BAD_USER_INPUT", InvalidAddress),
    (400, "Invalid refundDestination", "BAD_USER_INPUT", InvalidAddress),
    (400, "This settle address belongs to SideShift.ai", "BAD_USER_INPUT", InvalidAddress),
    (400, "Method ETH/bitcoin not found", "METHOD_NOT_FOUND", PairNotAvailable),
    (400, "Something new", "METHOD_NOT_FOUND", PairNotAvailable),
    (500, "Invalid coin", None, PairNotAvailable),
    (500, "Rate unavailable", None, ServiceUnavailable),
    (400, "Quote has already expired. Request a new quote.", "BAD_USER_INPUT", QuoteExpired),
    (400, "Quote has already been used. Request a new quote.", "BAD_USER_INPUT", QuoteAlreadyUsed),
    (404, 'Incorrect or missing "x-sideshift-secret" header', "FORBIDDEN", Unauthorized),
    (401, "", None, Unauthorized),
    (403, "Access denied. See https://sideshift.ai/access-denied", "ACCESS_DENIED", PermissionDenied),
    (400, "The x-user-ip header must be set to the end-user IP address", None, InvalidUserIp),
    (400, "Orders can only be cancelled after 5 minutes.", "BAD_USER_INPUT", OrderNotCancellable),
    (400, "Too many open variable shifts. Cancel one.", "BAD_USER_INPUT", TooManyOpenShifts),
    (404, "Shift not found", "NOT_FOUND", ShiftNotFound),
    (404, "", None, NotFound),
    (400, "Bad request", None, BadRequest),
    (502, "", None, ServiceUnavailable),
]


@pytest.mark.parametrize(("status", "message", "code", "expected"), CASES)
def test_error_mapping(status, message, code, expected):
    error = {"message": message, "code": code} if message else None
    exc = error_from_response(status, error, "", {}, unsafe=False)
    assert type(exc) is expected
    assert exc.status == status and exc.code == code


def test_a_5xx_of_a_create_call_is_an_unknown_outcome_and_never_transient():
    exc = error_from_response(
        500, {"message": "Internal Server Error", "code": "UNKNOWN"}, "", {}, unsafe=True
    )
    assert isinstance(exc, UnknownOutcome)
    # Permanent on purpose: a broker that retries TransientError must not re-post a create.
    assert isinstance(exc, PermanentError) and not isinstance(exc, TransientError)
    assert issubclass(RateLimited, TransientError) and issubclass(ServiceUnavailable, TransientError)
    assert issubclass(QuoteExpired, PermanentError)


def test_429_carries_retry_after_in_both_header_forms():
    exc = error_from_response(429, {"message": "Rate limit exceeded"}, "", {"retry-after": "42"}, unsafe=True)
    assert isinstance(exc, RateLimited) and exc.retry_after == 42 and not exc.local
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 25 < (parse_retry_after(later) or 0) <= 30
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None


def test_amount_range_comes_from_the_error_body():
    body = {"message": "Amount too low", "depositRangeMin": "0.0001", "depositRangeMax": "2"}
    exc = error_from_response(400, body, "", {}, unsafe=False)
    assert isinstance(exc, AmountTooLow)
    assert exc.minimum == Decimal("0.0001") and exc.maximum == Decimal("2")


# -- transport failures ------------------------------------------------------------------


def _raising(exc_type):
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc_type("boom", request=request)

    return handler


@pytest.mark.parametrize(
    "exc_type", [httpx.ReadTimeout, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError]
)
def test_sent_but_unanswered_create_is_unknown_outcome_and_get_is_transient(exc_type):
    client = client_with(_raising(exc_type))
    with pytest.raises(UnknownOutcome):
        client.create_fixed_shift(quote_id="q", settle_address="0x" + "1" * 40)
    with pytest.raises(ServiceUnavailable):
        client.get_shift("abc")


@pytest.mark.parametrize("exc_type", [httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout])
def test_a_create_that_never_left_is_transient(exc_type):
    with pytest.raises(ServiceUnavailable):
        client_with(_raising(exc_type)).create_variable_shift(
            deposit_coin="btc", deposit_network="bitcoin", settle_coin="eth", settle_address="0x" + "1" * 40
        )


def test_unreadable_201_of_a_create_keeps_the_body_for_reconciliation():
    client = client_with(lambda request: httpx.Response(201, content=b'{"id":"8c9ba87d02a801a2f254"'))
    with pytest.raises(UnknownOutcome) as caught:
        client.create_fixed_shift(quote_id="q", settle_address="0x" + "1" * 40)
    assert "8c9ba87d02a801a2f254" in caught.value.body
    with pytest.raises(UnexpectedResponse):
        client_with(lambda request: httpx.Response(200, json={"id": "x"})).get_shift("x")


def test_bare_404_on_a_shift_is_shift_not_found():
    with pytest.raises(ShiftNotFound):
        client_with(lambda request: httpx.Response(404, text="not here")).get_shift("nope")


# -- headers and signing -----------------------------------------------------------------


def test_headers_secret_user_ip_and_signer_see_the_exact_bytes():
    seen: list[httpx.Request] = []
    signed: list[SignableRequest] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"createShift": True})

    def signer(req: SignableRequest) -> dict[str, str]:
        signed.append(req)
        return {"x-signature": f"sig:{len(req.body)}"}

    client = client_with(handler, secret="s3cret", user_ip="203.0.113.7", signer=signer)
    client.get_permissions()
    assert "x-sideshift-secret" not in seen[0].headers  # not an authenticated endpoint
    assert seen[0].headers["x-user-ip"] == "203.0.113.7"
    with pytest.raises(UnexpectedResponse):
        client.request_quote(
            deposit_coin="btc", settle_coin="eth", deposit_amount="0.01", user_ip="198.51.100.1"
        )
    quote = seen[1]
    assert quote.headers["x-sideshift-secret"] == "s3cret"
    assert quote.headers["x-user-ip"] == "198.51.100.1"
    assert signed[1].body == quote.content and quote.headers["x-signature"] == f"sig:{len(quote.content)}"
    body = json.loads(quote.content)
    assert (
        body["depositAmount"] == "0.01"
        and body["settleAmount"] is None
        and body["affiliateId"] == "AbCdE1234"
    )


def test_quote_needs_exactly_one_amount_and_no_float():
    client = client_with(lambda request: httpx.Response(500))
    with pytest.raises(ValueError):
        client.request_quote(deposit_coin="btc", settle_coin="eth")
    with pytest.raises(ValueError):
        client.request_quote(deposit_coin="btc", settle_coin="eth", deposit_amount="1", settle_amount="2")
    with pytest.raises(TypeError):
        client.request_quote(deposit_coin="btc", settle_coin="eth", deposit_amount=0.1)  # type: ignore[arg-type]


# -- rate limiter ------------------------------------------------------------------------


def test_in_process_limiter_refuses_past_the_limit_and_frees_with_time():
    t = FakeTime()
    limiter = RateLimiter(InProcessBackend(clock=t.clock), max_wait=0, sleep=t.sleep, clock=t.clock)
    for _ in range(5):
        limiter.acquire(SHIFTS)
        t.now += 1
    with pytest.raises(RateLimited) as caught:
        limiter.acquire(SHIFTS)
    assert caught.value.local and caught.value.retry_after == pytest.approx(55)
    for _ in range(20):
        limiter.acquire(QUOTES)  # a separate window
    limiter.acquire("coins")  # a kind without a rate is never limited
    t.now += 55
    limiter.acquire(SHIFTS)


def test_limiter_waits_when_a_slot_frees_within_max_wait():
    t = FakeTime()
    limiter = RateLimiter(
        InProcessBackend(clock=t.clock), {SHIFTS: Rate(2, 10)}, max_wait=5, sleep=t.sleep, clock=t.clock
    )
    limiter.acquire(SHIFTS)
    t.now += 6
    limiter.acquire(SHIFTS)
    limiter.acquire(SHIFTS)  # the first slot frees 4 s later: wait for it
    assert t.slept == [pytest.approx(4)]
    with pytest.raises(RateLimited):
        limiter.acquire(SHIFTS)  # the next one frees 6 s later, beyond max_wait


def test_client_takes_a_slot_before_sending_and_sends_nothing_when_refused():
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(500)

    t = FakeTime()
    limiter = RateLimiter(InProcessBackend(clock=t.clock), {SHIFTS: Rate(1, 60)}, max_wait=0, clock=t.clock)
    client = client_with(handler, limiter=limiter, user_ip="198.51.100.1", limit_per_user_ip=True)
    with pytest.raises(UnknownOutcome):
        client.create_fixed_shift(quote_id="q", settle_address="a")
    with pytest.raises(RateLimited):
        client.create_fixed_shift(quote_id="q", settle_address="a")
    assert len(sent) == 1
    with pytest.raises(UnknownOutcome):  # another end user has their own budget
        client.create_fixed_shift(quote_id="q", settle_address="a", user_ip="198.51.100.2")
    assert len(sent) == 2


# -- what the client checks itself (docs/sideshift.md sections 9, 11, 12) ------------------


def _quote_echo(request: httpx.Request, **override: str) -> httpx.Response:
    """A quote answering what was asked (a deposit amount), or ``override``."""
    body = json.loads(request.content)
    deposit = body["depositAmount"] or "0.5"
    data = {
        "id": "0b6e2f1a-3c4d-4e5f-8a9b-0c1d2e3f4a5b",
        "createdAt": "2025-01-02T10:00:00.000Z",
        "expiresAt": "2025-01-02T10:15:00.000Z",
        "depositCoin": body["depositCoin"].upper(),
        "settleCoin": body["settleCoin"].upper(),
        "depositNetwork": body.get("depositNetwork") or "bitcoin",
        "settleNetwork": body.get("settleNetwork") or "ethereum",
        "depositAmount": deposit,
        "settleAmount": body["settleAmount"] or "8.5",
        "rate": "17",
        "affiliateId": "AbCdE1234",
        **override,
    }
    return httpx.Response(201, json=data)


@pytest.mark.parametrize("bad", ["0.5", "0.0201", "-0.001", "abc", "NaN", ""])
def test_commission_rate_is_checked_before_anything_is_sent(bad):
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return _quote_echo(request)

    with pytest.raises(ValueError, match="commission_rate"):
        client_with(handler, commission_rate=bad)
    assert sent == []
    client = client_with(handler, commission_rate=Decimal("0.02"))
    client.request_quote(deposit_coin="btc", settle_coin="eth", deposit_amount="0.01")
    assert json.loads(sent[-1].content)["commissionRate"] == "0.02"  # a fraction, as text


def test_amounts_are_rounded_down_to_the_coins_decimals_before_sending():
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return _quote_echo(request)

    client = client_with(handler)
    quote = client.request_quote(deposit_coin="btc", settle_coin="eth", deposit_amount="0.123456789")
    assert json.loads(sent[-1].content)["depositAmount"] == "0.12345678"  # BTC has 8 decimals
    assert quote.deposit_amount == Decimal("0.12345678")
    client.request_quote(deposit_coin="btc", settle_coin="xrp", settle_amount="10.1234567")
    assert json.loads(sent[-1].content)["settleAmount"] == "10.123456"  # XRP has 6


def test_a_quote_that_a_fixed_shift_could_not_honour_exactly_is_refused():
    # Asked 0.01 BTC, quoted 0.0100001: creating the shift would commit to another amount.
    other = client_with(lambda request: _quote_echo(request, depositAmount="0.0100001"))
    with pytest.raises(SideShiftRejected, match="0.0100001"):
        other.request_quote(deposit_coin="btc", settle_coin="eth", deposit_amount="0.01")
    # By settle amount, the deposit SideShift computes must be sendable to the last decimal.
    unsendable = client_with(lambda request: _quote_echo(request, depositAmount="0.123456789"))
    with pytest.raises(SideShiftRejected, match="decimals"):
        unsendable.request_quote(deposit_coin="btc", settle_coin="eth", settle_amount="2")
    wrong_settle = client_with(lambda request: _quote_echo(request, settleAmount="1.9"))
    with pytest.raises(SideShiftRejected, match="1.9"):
        wrong_settle.request_quote(deposit_coin="btc", settle_coin="eth", settle_amount="2")


def test_a_plain_400_on_a_shift_id_means_not_found():
    bad_id = {"error": {"message": "Bad request: Invalid parameters: shiftId", "code": "BAD_USER_INPUT"}}
    with pytest.raises(ShiftNotFound):
        client_with(lambda request: httpx.Response(400, json=bad_id)).get_shift("nope")
    ip = {"error": {"message": "The x-user-ip header must be set to the end-user IP address"}}
    with pytest.raises(InvalidUserIp):  # a 400 that names another cause keeps its meaning
        client_with(lambda request: httpx.Response(400, json=ip)).get_shift("f0e1d2c3b4a596877869")


def test_a_shift_id_is_one_path_segment():
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(404)

    with pytest.raises(ShiftNotFound):
        client_with(handler).get_shift("../coins")
    assert seen[0].url.raw_path == b"/api/v2/shifts/..%2Fcoins"


def test_429_without_retry_after_gets_a_default_backoff():
    bare = error_from_response(429, {"message": "Rate limit exceeded"}, "", {}, unsafe=True)
    assert isinstance(bare, RateLimited) and bare.retry_after is None
    assert [bare.wait_seconds(n, default=10) for n in (1, 2, 3, 4)] == [10, 20, 40, 60]  # up to the window
    told = error_from_response(429, {"message": "Rate limit exceeded"}, "", {"retry-after": "42"}, unsafe=True)
    assert told.wait_seconds(1, default=10) == 42
