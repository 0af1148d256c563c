"""The fake SideShift's order endpoints: quotes, fixed and variable shifts, refund address, cancel.

Plus the input checks every endpoint shares. Error texts are SideShift's where the
docs/sideshift.md confirms them (section 7); where it does not, the fake's choice is marked "[fake]".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from shiftflow.fakes.sideshift_catalog import (
    DEFAULT_FEE_USD,
    EVM_NETWORKS,
    NETWORK_FEE_USD,
    ApiError,
    bad_input,
    fmt,
    new_address,
    quantize_amount,
    valid_address,
)
from shiftflow.fakes.sideshift_records import FakeQuote, FakeShift
from shiftflow.fakes.sideshift_state import FakeSideShift

QUOTE_TTL = timedelta(minutes=15)
VARIABLE_TTL = timedelta(days=7)
CANCEL_AFTER = timedelta(minutes=5)


@dataclass(frozen=True)
class ApiRequest:
    """A request as the handlers see it (headers lower-cased, body decoded)."""

    route: str
    method: str
    path: str
    headers: Mapping[str, str]
    query: Mapping[str, str]
    params: Mapping[str, str]
    body: Any
    client: str


def body_of(req: ApiRequest) -> Mapping[str, Any]:
    """The JSON object body; anything else is a 400 ``Bad request``."""
    if not isinstance(req.body, Mapping):
        raise bad_input("Bad request")
    return req.body


def required(body: Mapping[str, Any], key: str) -> str:
    """A required non-empty string field, else 400 ``Bad request: Invalid parameters: <key>``."""
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise bad_input(f"Bad request: Invalid parameters: {key}")
    return value


def amount_of(value: Any, key: str) -> Decimal | None:
    """An optional positive decimal amount (string, int or Decimal; never float), else a 400."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        raise bad_input(f"Bad request: Invalid parameters: {key}")
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise bad_input(f"Bad request: Invalid parameters: {key}") from None
    if not amount.is_finite():
        raise bad_input(f"Bad request: Invalid parameters: {key}")
    if amount <= 0:
        raise bad_input(f"{key} must be greater than zero")
    return amount


def check_affiliate(state: FakeSideShift, body: Mapping[str, Any], message: str) -> str:
    """The body's ``affiliateId`` when it is a known account, else 400 with ``message``."""
    affiliate = body.get("affiliateId")
    if not isinstance(affiliate, str) or affiliate not in state.accounts:
        raise bad_input(message)
    return affiliate


def check_address(state: FakeSideShift, network: str, address: Any, kind: str) -> str:
    """A well-formed address of ``network`` not owned by the fake, else the documented 400."""
    if not isinstance(address, str) or not valid_address(network, address):
        raise bad_input("Invalid receiving address" if kind == "settle" else "Invalid refundDestination")
    if address in state.deposit_addresses:
        raise bad_input(f"This {kind} address belongs to SideShift.ai")
    return address


def check_memo(state: FakeSideShift, coin: str, network: str, memo: Any, key: str) -> str | None:
    """An optional memo, allowed only on the coin's memo networks."""
    if memo is None:
        return None
    if not isinstance(memo, str) or network not in state.coins[coin].networks_with_memo:
        raise bad_input(f"Bad request: Invalid parameters: {key}")
    return memo


def _range_error(amount: Decimal, low: Decimal, high: Decimal) -> ApiError | None:
    extra = {"depositRangeMin": fmt(low), "depositRangeMax": fmt(high)}
    if amount < low:
        return ApiError(400, "Amount too low", extra=extra)  # text from Edge's matcher [fake status]
    if amount > high:
        return ApiError(400, "Amount too high", extra=extra)
    return None


def quotes(state: FakeSideShift, req: ApiRequest, key: str) -> tuple[int, Any]:
    """``POST /quotes``: exactly one amount; range-checked; valid 15 minutes."""
    body = body_of(req)
    affiliate = check_affiliate(state, body, 'Invalid "affiliateId"')
    dspec, dnet = state.resolve(required(body, "depositCoin"), body.get("depositNetwork"), "depositNetwork")
    sspec, snet = state.resolve(required(body, "settleCoin"), body.get("settleNetwork"), "settleNetwork")
    low, high, rate = state.pair(dspec, dnet, sspec, snet)
    deposit, settle = (
        amount_of(body.get("depositAmount"), "depositAmount"),
        amount_of(body.get("settleAmount"), "settleAmount"),
    )
    if (deposit is None) == (settle is None):
        raise bad_input("Bad request: Invalid parameters: depositAmount")
    if deposit is not None:
        settle = quantize_amount(deposit * rate)
    else:
        assert settle is not None
        deposit = quantize_amount(settle / rate, up=True)
    error = _range_error(deposit, low, high)
    if error:
        raise error
    now = state.now()
    quote = FakeQuote(
        state.new_uuid(),
        now,
        now + QUOTE_TTL,
        dspec.coin,
        dnet,
        sspec.coin,
        snet,
        deposit,
        settle,
        rate,
        affiliate,
    )
    state.quotes[quote.id] = quote
    state.quotes_created += 1
    return 201, quote.to_json()


def _new_shift(state: FakeSideShift, body: Mapping[str, Any], key: str, **fields: Any) -> FakeShift:
    dnet, scoin, snet = fields["deposit_network"], fields["settle_coin"], fields["settle_network"]
    dcoin = fields["deposit_coin"]
    settle_address = check_address(state, snet, body.get("settleAddress"), "settle")
    refund = body.get("refundAddress")
    refund_address = None if refund is None else check_address(state, dnet, refund, "refund")
    external = body.get("externalId")
    if external is not None and not isinstance(external, str):
        raise bad_input("Bad request: Invalid parameters: externalId")
    memo_net = dnet in state.coins[dcoin].networks_with_memo
    return FakeShift(
        id=state.new_shift_id(),
        created_at=state.now(),
        deposit_address=new_address(dnet, state.rng),
        settle_address=settle_address,
        ip_key=key,
        evm_token=bool(state.coins[dcoin].tokens) and dnet in EVM_NETWORKS,
        deposit_memo=str(state.rng.randint(10**8, 10**9)) if memo_net else None,
        settle_memo=check_memo(state, scoin, snet, body.get("settleMemo"), "settleMemo"),
        refund_address=refund_address,
        refund_memo=check_memo(state, dcoin, dnet, body.get("refundMemo"), "refundMemo"),
        external_id=external,
        updated_at=None,
        **fields,
    )


def shifts_fixed(state: FakeSideShift, req: ApiRequest, key: str) -> tuple[int, Any]:
    """``POST /shifts/fixed``: redeem a quote (once, before it expires)."""
    body = body_of(req)
    quote = state.quotes.get(required(body, "quoteId"))
    if quote is None:
        raise ApiError(404, "Quote not found", "NOT_FOUND")  # [fake] text and status unconfirmed
    if body.get("affiliateId") != quote.affiliate_id:
        raise bad_input("Quote has different affiliateId than input")
    if state.now() >= quote.expires_at:
        raise bad_input("Quote has already expired. Request a new quote.")
    if quote.used_by is not None:
        raise bad_input("Quote has already been used. Request a new quote.")  # [fake] reuse refused
    state.pair(
        state.coins[quote.deposit_coin],
        quote.deposit_network,
        state.coins[quote.settle_coin],
        quote.settle_network,
    )
    shift = _new_shift(
        state, body, key, type="fixed", expires_at=quote.expires_at, quote_id=quote.id,
        deposit_coin=quote.deposit_coin, deposit_network=quote.deposit_network,
        settle_coin=quote.settle_coin, settle_network=quote.settle_network,
        deposit_min=quote.deposit_amount, deposit_max=quote.deposit_amount,
        deposit_amount=quote.deposit_amount, settle_amount=quote.settle_amount, rate=quote.rate,
    )  # fmt: skip
    quote.used_by = shift.id
    state.record_shift(shift)
    return 201, shift.to_json(state.now())


def shifts_variable(state: FakeSideShift, req: ApiRequest, key: str) -> tuple[int, Any]:
    """``POST /shifts/variable``: range from the pair, rate at deposit, valid 7 days."""
    body = body_of(req)
    check_affiliate(state, body, "Unknown affiliateId")
    dspec, dnet = state.resolve(required(body, "depositCoin"), body.get("depositNetwork"), "depositNetwork")
    sspec, snet = state.resolve(required(body, "settleCoin"), body.get("settleNetwork"), "settleNetwork")
    low, high, _ = state.pair(dspec, dnet, sspec, snet)
    if state.open_variable_shifts(key) >= state.max_open_variable:
        # [fake] text; the limit itself is documented (docs/sideshift.md section 8).
        raise bad_input("Too many open variable shifts. Cancel one or wait for one to expire.")
    fee_usd = NETWORK_FEE_USD.get(snet, DEFAULT_FEE_USD)
    now = state.now()
    shift = _new_shift(
        state, body, key, type="variable", expires_at=now + VARIABLE_TTL,
        deposit_coin=dspec.coin, deposit_network=dnet, settle_coin=sspec.coin, settle_network=snet,
        deposit_min=low, deposit_max=high,
        settle_coin_network_fee=quantize_amount(fee_usd / sspec.usd), network_fee_usd=fee_usd,
    )  # fmt: skip
    state.record_shift(shift)
    return 201, shift.to_json(now)


def find_shift(state: FakeSideShift, shift_id: str, what: str = "Shift") -> FakeShift:
    """The shift with this id, else 404 ``<what> not found``."""
    shift = state.shifts.get(shift_id)
    if shift is None:
        raise ApiError(404, f"{what} not found", "NOT_FOUND")  # [fake] 404 body unconfirmed
    return shift


def set_refund_address(state: FakeSideShift, req: ApiRequest, key: str) -> tuple[int, Any]:
    """``POST /shifts/{id}/set-refund-address`` with ``{"address", "memo"?}``."""
    body = body_of(req)
    target = find_shift(state, req.params["shift_id"])
    target.refund_address = check_address(state, target.deposit_network, body.get("address"), "refund")
    target.refund_memo = check_memo(
        state, target.deposit_coin, target.deposit_network, body.get("memo"), "memo"
    )
    target.updated_at = state.now()
    target.start_refunds(state.now(), state.timings)
    return 201, target.to_json(state.now())


def cancel_order(state: FakeSideShift, req: ApiRequest, key: str) -> tuple[int, Any]:
    """``POST /cancel-order``: expire an unfunded order at least 5 minutes old (204)."""
    target = find_shift(state, required(body_of(req), "orderId"), "Order")
    now = state.now()
    if target.status == "expired":
        raise bad_input("Order already expired")
    if target.deposits:
        raise bad_input("Order already has a deposit")  # [fake] text
    if now - target.created_at < CANCEL_AFTER:
        raise bad_input("Orders can only be cancelled after 5 minutes.")
    target.expired, target.expires_at, target.updated_at = True, now, now
    return 204, None
