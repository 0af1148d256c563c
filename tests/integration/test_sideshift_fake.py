"""The SideShift client against the fake SideShift over real HTTP (uvicorn on 127.0.0.1).

Time in the fake moves only with ``fake.advance``; real sleeps are limited to the client
read timeout of the unknown-outcome tests and the short Redis window. The Redis tests
need Redis on 127.0.0.1:6379 (``SHIFTFLOW_REDIS_URL`` overrides) and use a unique key
prefix, deleted afterwards.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from shiftflow.fakes.sideshift import FakeBehaviour, FakeSideShift, FakeSideShiftServer, SystemClock
from shiftflow.kernel.sideshift import (
    QUOTES,
    SHIFTS,
    AmountTooHigh,
    AmountTooLow,
    BadRequest,
    InProcessBackend,
    InvalidAddress,
    InvalidUserIp,
    LimiterUnavailable,
    OrderNotCancellable,
    PairNotAvailable,
    PermissionDenied,
    QuoteAlreadyUsed,
    QuoteExpired,
    QuoteNotFound,
    Rate,
    RateLimited,
    RateLimiter,
    RedisBackend,
    ServiceUnavailable,
    ShiftNotFound,
    SideShiftClient,
    Timeouts,
    TooManyOpenShifts,
    Unauthorized,
    UnknownOutcome,
)
from tests.support.stopping import DIAGNOSABLE, stop_or_explain

pytestmark = pytest.mark.integration

SECRET = "0123456789abcdef0123456789abcdef"
ETH_ADDRESS = "0x" + "12" * 20
BTC_ADDRESS = "bc1q" + "q" * 38
TRON_ADDRESS = "T" + "a" * 33
REDIS_URL = os.environ.get("SHIFTFLOW_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
def fake():
    return FakeSideShift(secret=SECRET)


@pytest.fixture
def server(fake):
    with FakeSideShiftServer(fake) as running:
        yield running


def make_client(server, *, limiter=None, read=2.0, secret=SECRET, **kwargs) -> SideShiftClient:
    # No local limits unless a test passes a limiter: the fake's own 429s are under test.
    limiter = limiter or RateLimiter(InProcessBackend(), rates={})
    return SideShiftClient(
        "AbCdE1234",
        secret=secret,
        base_url=server.base_url,
        timeouts=Timeouts(connect=2.0, read=read, write=2.0, pool=2.0),
        limiter=limiter,
        **kwargs,
    )


@pytest.fixture
def client(server):
    with make_client(server) as made:
        yield made


def btc_quote(client, amount="0.01", **kwargs):
    return client.request_quote(
        deposit_coin="btc",
        deposit_network="bitcoin",
        settle_coin="eth",
        settle_network="ethereum",
        deposit_amount=amount,
        **kwargs,
    )


def variable(client, **kwargs):
    kwargs.setdefault("settle_address", BTC_ADDRESS)
    return client.create_variable_shift(
        deposit_coin="usdt", deposit_network="tron", settle_coin="btc", settle_network="bitcoin", **kwargs
    )


# -- endpoints ---------------------------------------------------------------------------


def test_coins_permissions_and_headers(client, fake):
    coins = {coin.coin: coin for coin in client.get_coins()}
    assert coins["USDT"].token_details["tron"].decimals == 6
    assert coins["XRP"].has_memo("ripple") and coins["ETH"].mainnet == "ethereum"
    assert client.get_permissions().create_shift
    fake.block_ip("203.0.113.9")
    assert not client.get_permissions(user_ip="203.0.113.9").create_shift
    assert fake.requests[-1].headers["x-user-ip"] == "203.0.113.9"
    assert "x-sideshift-secret" not in fake.requests[-1].headers


def test_pair_and_pairs_with_the_mainnet_alias(client, fake):
    pair = client.get_pair("btc", "eth-arbitrum")
    assert isinstance(pair.min, Decimal) and pair.min < pair.max
    assert (pair.deposit_network, pair.settle_network) == ("bitcoin", "arbitrum")
    same = [client.get_pair("btc", spec) for spec in ("eth", "eth-mainnet", "eth-ethereum")]
    assert {p.settle_network for p in same} == {"ethereum"}
    assert fake.requests[-1].headers["x-sideshift-secret"] == SECRET
    assert fake.requests[-1].query["affiliateId"] == "AbCdE1234"
    pairs = client.get_pairs(["btc-mainnet", "usdt-tron", "eth"])
    assert len(pairs) == 6 and {(p.deposit_coin, p.settle_coin) for p in pairs} >= {("USDT", "ETH")}


def test_quote_amounts_are_exact_decimals(client, fake):
    quote = btc_quote(client, "0.12345678")
    assert quote.deposit_amount == Decimal("0.12345678")
    assert quote.settle_amount == (Decimal("0.12345678") * quote.rate).quantize(Decimal("1e-8"), "ROUND_DOWN")
    assert quote.expires_at - quote.created_at == timedelta(minutes=15)
    assert fake.requests[-1].body["depositAmount"] == "0.12345678"  # sent as a string
    by_settle = client.request_quote(
        deposit_coin="eth",
        deposit_network="arbitrum",
        settle_coin="usdt",
        settle_network="tron",
        settle_amount="100",
    )
    assert by_settle.settle_amount == Decimal("100") and by_settle.deposit_amount * by_settle.rate >= 100


def test_fixed_shift_moves_through_its_lifecycle(client, fake):
    quote = btc_quote(client)
    shift = client.create_fixed_shift(quote_id=quote.id, settle_address=ETH_ADDRESS, external_id="job-1")
    assert (shift.type, shift.status, shift.external_id) == ("fixed", "waiting", "job-1")
    assert shift.deposit_min == shift.deposit_max == shift.deposit_amount == quote.deposit_amount
    assert shift.expires_at == quote.expires_at and len(shift.id) == 20
    fake.deposit(shift.id, shift.deposit_amount)
    seen = [client.get_shift(shift.id).status]
    for seconds in (120, 30, 60):
        fake.advance(seconds)
        seen.append(client.get_shift(shift.id).status)
    assert seen == ["pending", "processing", "settling", "settled"]
    done = client.get_shift(shift.id)
    assert (
        done.is_final and done.settle_hash and done.deposit_hash and done.settle_amount == quote.settle_amount
    )


def test_quote_expires_after_15_minutes_of_fake_time(client, fake):
    early, late = btc_quote(client), btc_quote(client)
    fake.advance(15 * 60 - 1)
    client.create_fixed_shift(quote_id=early.id, settle_address=ETH_ADDRESS)
    fake.advance(1)
    with pytest.raises(QuoteExpired):
        client.create_fixed_shift(quote_id=late.id, settle_address=ETH_ADDRESS)
    assert fake.created_total == 1


def test_a_quote_backs_one_shift_only(client, fake):
    quote = btc_quote(client)
    client.create_fixed_shift(quote_id=quote.id, settle_address=ETH_ADDRESS)
    with pytest.raises(QuoteAlreadyUsed):
        client.create_fixed_shift(quote_id=quote.id, settle_address=ETH_ADDRESS)
    assert fake.created_by_quote[quote.id] == 1 and not fake.double_orders()
    with pytest.raises(QuoteNotFound):
        client.create_fixed_shift(quote_id="00000000-0000-4000-8000-000000000000", settle_address=ETH_ADDRESS)


def test_unfunded_shift_expires_and_a_late_deposit_is_refunded(client, fake):
    shift = client.create_fixed_shift(quote_id=btc_quote(client).id, settle_address=ETH_ADDRESS)
    fake.advance(15 * 60)
    assert client.get_shift(shift.id).status == "expired"
    fake.deposit(shift.id, "0.01")
    fake.advance(120)
    assert client.get_shift(shift.id).status == "refund"  # no refund address yet
    updated = client.set_refund_address(shift.id, BTC_ADDRESS)
    assert updated.refund_address == BTC_ADDRESS
    fake.advance(10)
    assert client.get_shift(shift.id).status == "refunding"
    fake.advance(60)
    refunded = client.get_shift(shift.id)
    assert refunded.status == "refunded" and refunded.issue == "deposit after expiry" and refunded.is_final


def test_wrong_amount_to_a_fixed_shift_is_refunded(client, fake):
    shift = client.create_fixed_shift(
        quote_id=btc_quote(client).id, settle_address=ETH_ADDRESS, refund_address=BTC_ADDRESS
    )
    fake.deposit(shift.id, "0.011")
    fake.advance(120 + 10 + 60)
    assert client.get_shift(shift.id).status == "refunded"


def test_variable_shift_ranges_review_and_multiple_deposits(client, fake):
    shift = variable(client, external_id="v-1")
    assert shift.type == "variable" and shift.deposit_amount is None
    assert shift.expires_at - shift.created_at == timedelta(days=7)
    assert shift.network_fee_usd is not None and shift.deposit_min is not None
    fake.deposit(shift.id, "50")
    fake.advance(120 + 30 + 60)
    settled = client.get_shift(shift.id)
    assert settled.status == "settled" and settled.settle_amount == (Decimal(50) * settled.rate).quantize(
        Decimal("1e-8"), "ROUND_DOWN"
    )
    big = variable(client)
    assert big.deposit_max is not None
    fake.deposit(big.id, big.deposit_max + 1)
    fake.advance(120)
    assert client.get_shift(big.id).status == "review"
    fake.resolve_review(big.id, settle=True)
    fake.advance(60)
    assert client.get_shift(big.id).status == "settled"
    twice = variable(client)
    fake.deposit(twice.id, "20")
    fake.deposit(twice.id, "1")  # below the minimum: refunded, the first one settles
    fake.advance(120)
    multiple = client.get_shift(twice.id)
    assert multiple.status == "multiple" and [d.status for d in multiple.deposits] == ["processing", "refund"]


def test_bulk_status(client, fake):
    a, b = variable(client), variable(client)
    fake.deposit(a.id, "50")
    shifts = client.get_shifts([a.id, b.id, "ffffffffffffffffffff"])
    assert [(s.id, s.status) for s in shifts] == [(a.id, "pending"), (b.id, "waiting")]
    with pytest.raises(ShiftNotFound):
        client.get_shift("ffffffffffffffffffff")


def test_cancel_order_after_five_minutes_only(client, fake):
    shift = variable(client)
    with pytest.raises(OrderNotCancellable):
        client.cancel_order(shift.id)
    fake.advance(5 * 60)
    assert client.cancel_order(shift.id) is None
    assert client.get_shift(shift.id).status == "expired"
    with pytest.raises(OrderNotCancellable):
        client.cancel_order(shift.id)


def test_checkout_and_accounts(client, fake):
    checkout = client.create_checkout(
        settle_coin="usdt",
        settle_network="tron",
        settle_amount="25.5",
        settle_address=TRON_ADDRESS,
        success_url="https://shop.example/ok",
        cancel_url="https://shop.example/cancel",
        user_ip="198.51.100.4",
    )
    assert checkout.settle_amount == Decimal("25.5")
    assert client.get_checkout(checkout.id).orders == ()
    with pytest.raises(InvalidUserIp):
        client.create_checkout(
            settle_coin="usdt",
            settle_network="tron",
            settle_amount="1",
            settle_address=TRON_ADDRESS,
            success_url="https://shop.example/ok",
            cancel_url="https://shop.example/cancel",
            user_ip="not-an-ip",
        )
    legacy = client.create_account()
    assert legacy.secret and legacy.pub_key is None and fake.accounts[legacy.id] == legacy.secret
    assert client.create_account(pub_key="ab" * 32).pub_key == "ab" * 32
    with pytest.raises(BadRequest):
        client.create_account(pub_key="xyz")


# -- errors ------------------------------------------------------------------------------


def test_error_mapping_over_http(client, server, fake):
    fake.set_pair_range("btc", "eth", "0.001", "0.5")
    with pytest.raises(AmountTooLow) as low:
        btc_quote(client, "0.0009")
    assert low.value.minimum == Decimal("0.001") and low.value.maximum == Decimal("0.5")
    with pytest.raises(AmountTooHigh):
        btc_quote(client, "0.51")
    with pytest.raises(InvalidAddress):
        client.create_fixed_shift(quote_id=btc_quote(client).id, settle_address=BTC_ADDRESS)
    with pytest.raises(InvalidAddress):
        variable(client, refund_address=ETH_ADDRESS)
    with pytest.raises(PairNotAvailable):
        client.request_quote(
            deposit_coin="doge", settle_coin="eth", settle_network="ethereum", deposit_amount="1"
        )
    with pytest.raises(PairNotAvailable):
        client.get_pair("eth-tron", "btc")
    with pytest.raises(PairNotAvailable):
        client.get_pairs(["btc", "nope"])  # documented as a 500
    fake.disable_pair("btc", "eth")
    with pytest.raises(PairNotAvailable):
        btc_quote(client)
    with pytest.raises(BadRequest):  # USDT needs its network
        client.request_quote(
            deposit_coin="usdt", settle_coin="btc", settle_network="bitcoin", deposit_amount="50"
        )
    with make_client(server, secret="wrong") as intruder, pytest.raises(Unauthorized):
        variable(intruder)
    fake.block_ip("203.0.113.9")
    with pytest.raises(PermissionDenied):
        variable(client, user_ip="203.0.113.9")
    fake.max_open_variable = 1
    variable(client, user_ip="198.51.100.20")
    with pytest.raises(TooManyOpenShifts):
        variable(client, user_ip="198.51.100.20")


def test_injected_5xx_is_transient_for_reads_and_unknown_for_creates(client, fake):
    shift = variable(client)
    fake.fail_next(2, status=503, routes=["shift"])
    for _ in range(2):
        with pytest.raises(ServiceUnavailable):
            client.get_shift(shift.id)
    assert client.get_shift(shift.id).id == shift.id
    fake.fail_next(1, after_effect=True, routes=["shifts_variable"])
    with pytest.raises(UnknownOutcome):
        variable(client, external_id="ext-500")
    assert fake.created_by_external_id["ext-500"] == 1  # created although the answer was a 500


def test_read_timeout_after_the_create_is_an_unknown_outcome(server, fake):
    quote = None
    with make_client(server, read=0.3) as client:
        quote = btc_quote(client)
        fake.delay_next_create(0.8)
        started = time.monotonic()
        with pytest.raises(UnknownOutcome):
            client.create_fixed_shift(quote_id=quote.id, settle_address=ETH_ADDRESS, external_id="ext-slow")
        assert time.monotonic() - started < 0.8
    assert fake.created_total == 1 and fake.created_by_external_id["ext-slow"] == 1
    assert fake.created_by_quote[quote.id] == 1


def test_dropped_connection_after_the_create_is_an_unknown_outcome(client, fake):
    fake.drop_next_create()
    with pytest.raises(UnknownOutcome):
        variable(client, external_id="ext-drop")
    assert fake.created_by_external_id["ext-drop"] == 1
    assert variable(client).status == "waiting"  # the knob fired once


def test_a_refused_connection_creates_nothing_and_is_transient(fake):
    server = FakeSideShiftServer(fake).start()
    url = server.base_url
    server.stop()
    with SideShiftClient("AbCdE1234", base_url=url, timeouts=Timeouts(connect=0.5)) as client:
        with pytest.raises(ServiceUnavailable):
            client.create_variable_shift(deposit_coin="btc", settle_coin="eth", settle_address=ETH_ADDRESS)


# -- rate limits -------------------------------------------------------------------------


def test_fake_answers_429_per_ip_and_frees_with_fake_time(client, fake):
    for _ in range(20):
        btc_quote(client)
    with pytest.raises(RateLimited) as caught:
        btc_quote(client)
    assert not caught.value.local and caught.value.retry_after == 60 and fake.rate_limited["quotes"] == 1
    assert btc_quote(client, user_ip="198.51.100.30").id  # another end user, another budget
    fake.advance(60)
    assert btc_quote(client).id
    assert fake.rate_limited["quotes"] == 1  # neither was refused


def test_fake_counts_fixed_and_variable_shifts_together(client, fake):
    for _ in range(3):
        variable(client, user_ip="198.51.100.31")
    for _ in range(2):
        client.create_fixed_shift(
            quote_id=btc_quote(client).id, settle_address=ETH_ADDRESS, user_ip="198.51.100.31"
        )
    with pytest.raises(RateLimited):
        variable(client, user_ip="198.51.100.31")
    assert fake.created_total == 5


@pytest.fixture
def redis_prefix():
    r = redis.Redis.from_url(REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
    prefix = f"test:sideshift:{uuid.uuid4().hex}"
    yield r, prefix
    for key in r.scan_iter(f"{prefix}:*"):
        r.delete(key)
    r.close()


def test_two_clients_sharing_redis_stay_within_the_limits(server, fake, redis_prefix):
    r, prefix = redis_prefix
    fake.max_open_variable = 100
    clients = [
        make_client(server, limiter=RateLimiter(RedisBackend(r, prefix), max_wait=0)) for _ in range(2)
    ]
    outcomes: list[str] = []
    lock = threading.Lock()

    def work(c: SideShiftClient, n: int, call) -> None:
        for _ in range(n):
            try:
                call(c)
                result = "ok"
            except RateLimited as exc:
                result = "local" if exc.local else "server"
            with lock:
                outcomes.append(result)

    def run(call, n):
        outcomes.clear()
        threads = [threading.Thread(target=work, args=(c, n, call)) for c in clients for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        return sorted(outcomes)

    assert run(variable, 3) == ["local"] * 7 + ["ok"] * 5
    assert fake.created_total == 5 and sum(fake.rate_limited.values()) == 0
    assert run(btc_quote, 6) == ["local"] * 4 + ["ok"] * 20
    assert fake.quotes_created == 20 and sum(fake.rate_limited.values()) == 0
    assert r.zcard(f"{prefix}:{SHIFTS}:egress") == 5 and r.zcard(f"{prefix}:{QUOTES}:egress") == 20
    for c in clients:
        c.close()


def test_redis_limiter_waits_for_a_slot_across_clients(server, fake, redis_prefix):
    r, prefix = redis_prefix
    fake.enforce_rate_limits, fake.max_open_variable = False, 100
    rates = {SHIFTS: Rate(2, 0.4)}
    first, second = (
        make_client(server, limiter=RateLimiter(RedisBackend(r, prefix), rates, max_wait=2)) for _ in range(2)
    )
    variable(first)
    variable(second)
    started = time.monotonic()
    variable(first)  # waits until the window frees
    assert 0.2 < time.monotonic() - started < 1.5
    assert fake.created_total == 3
    first.close()
    second.close()


def test_limiter_fails_closed_when_redis_is_down(server, fake):
    no_retry = Retry(NoBackoff(), 0)  # redis-py retries with backoff by default: seconds per call
    dead = redis.Redis(
        host="127.0.0.1", port=1, socket_connect_timeout=0.5, socket_timeout=0.5, retry=no_retry
    )
    with make_client(server, limiter=RateLimiter(RedisBackend(dead, "test:dead"), max_wait=0)) as client:
        with pytest.raises(LimiterUnavailable):
            variable(client)
    assert fake.created_total == 0 and not [r for r in fake.requests if r.route == "shifts_variable"]


def test_paper_trading_mode_and_http_controls():
    fake = FakeSideShift(clock=SystemClock(), auto_deposit=True)
    with FakeSideShiftServer(fake) as server, make_client(server, secret=None) as client:
        shift = client.create_fixed_shift(quote_id=btc_quote(client).id, settle_address=ETH_ADDRESS)
        assert shift.status == "pending" and shift.deposit_hash  # deposited on creation
        other = variable(client)
        controls = httpx.Client(base_url=server.base_url.removesuffix("/api/v2"))
        assert controls.post("/_fake/advance", json={"seconds": 210}).status_code == 200
        assert client.get_shift(shift.id).status == "settled"
        assert controls.post(f"/_fake/shifts/{other.id}/deposit", json={"amount": "1"}).status_code == 200
        extra = client.get_shift(other.id)
        assert extra.status == "multiple" and [d.issue for d in extra.deposits] == [None, "amount too low"]
        counters = controls.get("/_fake/counters").json()
        assert counters["created"] == 2 and counters["doubleOrders"] == {}
        controls.close()


# -- strict where SideShift is strict, configurable where it is silent (docs/sideshift.md 12) --


def raw_post(server, path: str, body: dict) -> httpx.Response:
    """A request the client would never send (it checks first): what the fake itself says."""
    with httpx.Client(base_url=server.base_url, headers={"x-sideshift-secret": SECRET}) as http:
        return http.post(path, json=body)


def quote_body(**fields) -> dict:
    return {
        "depositCoin": "btc",
        "depositNetwork": "bitcoin",
        "settleCoin": "eth",
        "settleNetwork": "ethereum",
        "depositAmount": "0.01",
        "settleAmount": None,
        "affiliateId": "AbCdE1234",
        **fields,
    }


def expected_rate(fake, commission: str) -> Decimal:
    ratio = fake.coins["BTC"].usd / fake.coins["ETH"].usd
    return (ratio * (1 - Decimal(commission))).quantize(Decimal("1e-10"), "ROUND_DOWN")


@pytest.mark.parametrize("commission_format", ["fraction", "percent"])
def test_the_fake_checks_commission_and_applies_it_to_rates(server, fake, commission_format):
    fake.behaviour = fake.behaviour.updated({"commission_format": commission_format})
    scale = 100 if commission_format == "percent" else 1

    def written(fraction: str) -> str:
        return str(Decimal(fraction) * scale)

    default = raw_post(server, "/quotes", quote_body()).json()
    assert Decimal(default["rate"]) == expected_rate(fake, "0.005")  # 0.5 % when absent
    cheap = raw_post(server, "/quotes", quote_body(commissionRate=written("0"))).json()
    dear = raw_post(server, "/quotes", quote_body(commissionRate=written("0.02"))).json()
    assert Decimal(cheap["rate"]) == expected_rate(fake, "0") > Decimal(dear["rate"]) == expected_rate(fake, "0.02")
    assert Decimal(dear["settleAmount"]) == (Decimal("0.01") * Decimal(dear["rate"])).quantize(
        Decimal("1e-8"), "ROUND_DOWN"
    )
    for bad in (written("0.0201"), written("-0.001"), "abc", True):
        answer = raw_post(server, "/quotes", quote_body(commissionRate=bad))
        assert answer.status_code == 400, bad
        assert answer.json() == {
            "error": {"message": "Bad request: Invalid parameters: commissionRate", "code": "BAD_USER_INPUT"}
        }
    # A variable shift takes its commission to the deposit's rate; the pair shows the same rate.
    shift = raw_post(
        server,
        "/shifts/variable",
        {
            "depositCoin": "btc",
            "depositNetwork": "bitcoin",
            "settleCoin": "eth",
            "settleNetwork": "ethereum",
            "settleAddress": ETH_ADDRESS,
            "affiliateId": "AbCdE1234",
            "commissionRate": written("0.02"),
        },
    ).json()
    fake.deposit(shift["id"], "0.01")
    assert fake.shifts[shift["id"]].deposits[0].rate == expected_rate(fake, "0.02")
    with httpx.Client(base_url=server.base_url, headers={"x-sideshift-secret": SECRET}) as http:
        pair = http.get("/pair/btc/eth", params={"affiliateId": "AbCdE1234", "commissionRate": written("0")})
        assert Decimal(pair.json()["rate"]) == expected_rate(fake, "0")
        assert http.get("/pair/btc/eth", params={"commissionRate": written("0.03")}).status_code == 400


@pytest.mark.parametrize("excess_decimals", ["refuse", "round"])
def test_the_fake_refuses_or_rounds_amounts_beyond_the_coins_decimals(server, fake, excess_decimals):
    fake.behaviour = fake.behaviour.updated({"excess_decimals": excess_decimals})
    btc = raw_post(server, "/quotes", quote_body(depositAmount="0.123456789"))  # BTC has 8 decimals
    usdt = raw_post(
        server,
        "/quotes",
        quote_body(
            depositCoin="eth",
            depositNetwork="ethereum",
            settleCoin="usdt",
            settleNetwork="tron",
            depositAmount=None,
            settleAmount="100.1234567",  # USDT on tron has 6
        ),
    )
    if excess_decimals == "refuse":
        assert (btc.status_code, btc.json()["error"]["message"]) == (
            400,
            "Bad request: Invalid parameters: depositAmount",
        )
        assert usdt.status_code == 400 and usdt.json()["error"]["message"].endswith("settleAmount")
    else:
        assert btc.status_code == 201 and btc.json()["depositAmount"] == "0.12345678"
        assert usdt.status_code == 201 and usdt.json()["settleAmount"] == "100.123456"
    number = raw_post(server, "/quotes", quote_body(depositAmount=0.01))  # amounts are strings
    assert (number.status_code, number.json()["error"]["message"]) == (
        400,
        "Bad request: Invalid parameters: depositAmount",
    )
    # Amounts the fake computes never have more decimals than their coin either.
    tron = raw_post(
        server, "/quotes", quote_body(settleCoin="usdt", settleNetwork="tron", depositAmount="0.01")
    ).json()
    assert len(tron["settleAmount"].partition(".")[2]) <= 6
    xrp = raw_post(server, "/quotes", quote_body(settleCoin="xrp", settleNetwork="ripple")).json()
    assert len(xrp["settleAmount"].partition(".")[2]) <= 6


@pytest.mark.parametrize("reused_quote", ["refuse", "accept"])
def test_a_reused_quote_either_way(client, fake, reused_quote):
    fake.behaviour = fake.behaviour.updated({"reused_quote": reused_quote})
    quote = btc_quote(client)
    first = client.create_fixed_shift(quote_id=quote.id, settle_address=ETH_ADDRESS)
    if reused_quote == "refuse":
        with pytest.raises(QuoteAlreadyUsed):
            client.create_fixed_shift(quote_id=quote.id, settle_address=ETH_ADDRESS)
        assert fake.double_orders() == {}
    else:
        second = client.create_fixed_shift(quote_id=quote.id, settle_address=ETH_ADDRESS)
        assert second.id != first.id and second.quote_id == quote.id == first.quote_id
        assert fake.double_orders() == {f"quote:{quote.id}": 2}  # the fake's ledger sees it


@pytest.mark.parametrize("unknown", [404, 400])
@pytest.mark.parametrize("malformed", [404, 400])
def test_an_unknown_or_malformed_shift_id_is_not_found_whatever_the_status(server, client, fake, unknown, malformed):
    fake.behaviour = fake.behaviour.updated(
        {"unknown_shift_status": unknown, "malformed_shift_id_status": malformed}
    )
    with httpx.Client(base_url=server.base_url) as http:
        for shift_id, status in (("ffffffffffffffffffff", unknown), ("not-a-shift", malformed)):
            answer = http.get(f"/shifts/{shift_id}")
            assert answer.status_code == status
            assert isinstance(answer.json()["error"]["message"], str)
            with pytest.raises(ShiftNotFound):
                client.get_shift(shift_id)


@pytest.mark.parametrize("retry_after_header", [True, False])
def test_a_429_with_or_without_retry_after(client, fake, retry_after_header):
    fake.behaviour = fake.behaviour.updated({"retry_after_header": retry_after_header})
    fake.limits["quotes"] = 1
    btc_quote(client)
    with pytest.raises(RateLimited) as caught:
        btc_quote(client)
    assert str(caught.value) == "Rate limit exceeded" and not caught.value.local
    if retry_after_header:
        assert caught.value.retry_after == 60 and caught.value.wait_seconds(1, default=10) == 60
    else:
        assert caught.value.retry_after is None and caught.value.wait_seconds(1, default=10) == 10
    fake.fail_next(1, status=429, routes=["quotes"])  # an injected 429 is SideShift's too
    fake.advance(60)
    with pytest.raises(RateLimited, match="Rate limit exceeded") as injected:
        btc_quote(client)
    assert injected.value.retry_after == (1 if retry_after_header else None)


def test_the_client_rounds_what_it_sends_whatever_the_fake_would_do(server, fake):
    for excess_decimals in ("refuse", "round"):
        fake.behaviour = fake.behaviour.updated({"excess_decimals": excess_decimals})
        with make_client(server) as client:
            quote = btc_quote(client, "0.123456789")
            assert fake.requests[-1].body["depositAmount"] == "0.12345678"
            assert quote.deposit_amount == Decimal("0.12345678")
            usdt = client.request_quote(
                deposit_coin="usdt",
                deposit_network="tron",
                settle_coin="btc",
                settle_network="bitcoin",
                deposit_amount="12.3456789",
            )
            assert fake.requests[-1].body["depositAmount"] == "12.345678"  # 6 decimals, from /coins
            assert usdt.deposit_amount == Decimal("12.345678")


def test_behaviour_over_http_and_bad_choices():
    fake = FakeSideShift()
    with FakeSideShiftServer(fake) as server, httpx.Client(base_url=server.base_url.removesuffix("/api/v2")) as http:
        assert http.get("/_fake/behaviour").json()["reused_quote"] == "refuse"
        changed = http.post("/_fake/behaviour", json={"reused_quote": "accept", "unknown_shift_status": 400})
        assert changed.status_code == 200 and fake.behaviour.reused_quote == "accept"
        assert fake.behaviour.unknown_shift_status == 400
        bad = http.post("/_fake/behaviour", json={"unknown_shift_status": 418})
        assert bad.status_code == 400 and "unknown_shift_status" in bad.json()["error"]["message"]
        assert http.post("/_fake/behaviour", json={"nope": 1}).status_code == 400
    with pytest.raises(ValueError, match="excess_decimals"):
        FakeBehaviour(excess_decimals="echo")


def test_the_fakes_command_takes_the_behaviour_as_flags():
    shiftflow = str(Path(sys.executable).with_name("shiftflow"))
    bad = subprocess.run(
        [shiftflow, "sideshift", "fakes", "--unknown-shift-status", "418"], capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2 and "--unknown-shift-status" in bad.stderr
    proc = subprocess.Popen(
        [
            shiftflow, "sideshift", "fakes", "--reused-quote", "accept", "--unknown-shift-status", "400",
            "--malformed-shift-id-status", "404", "--no-retry-after", "--excess-decimals", "round",
            "--commission-format", "percent",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=DIAGNOSABLE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        base_url = None
        for line in proc.stdout:
            if "SHIFTFLOW_SIDESHIFT_BASE_URL=" in line:
                base_url = line.split("=", 1)[1].strip()
            if line.startswith("counters:"):
                break
        assert base_url, "the fakes command printed no base URL"
        behaviour = httpx.get(base_url.removesuffix("/api/v2") + "/_fake/behaviour", timeout=5).json()
        assert behaviour == {
            "reused_quote": "accept",
            "unknown_shift_status": 400,
            "malformed_shift_id_status": 404,
            "retry_after_header": False,
            "excess_decimals": "round",
            "commission_format": "percent",
        }
    finally:
        assert stop_or_explain(proc) == 0
