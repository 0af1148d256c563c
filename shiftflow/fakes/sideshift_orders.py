"""The fake SideShift's order endpoints: quotes, fixed and variable shifts, refund address, cancel.

Plus the input checks every endpoint shares. Error texts are SideShift's where
docs/sideshift.md confirms them (section 7); where it does not, the fake's choice is marked
"[fake]". Where SideShift's behaviour itself is open, ``state.behaviour`` decides
(``sideshift_behaviour``): a reused quote, an unknown or malformed shift id, an amount
with more decimals than its coin, the format of ``commissionRate``.
"""

from __future__ import annotations

import re
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
    FakeCoin,
    bad_input,
    decimals_of,
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
#: Every shift id the fake makes (and every one in SideShift's examples): 20 lower-case hex.
SHIFT_ID = re.compile(r"[0-9a-f]{20}")


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
    """An optional positive amount, given as a decimal string as SideShift documents (a JSON
    number is refused), else a 400."""
    if value is None:
        return None
    if not isinstance(value, str):
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


def check_precision(state: FakeSideShift, amount: Decimal, coin: FakeCoin, network: str, key: str) -> Decimal:
    """An amount with no more decimals than ``coin`` has on ``network``.

    More decimals: a 400 naming ``key``, or rounded down, as ``state.behaviour.excess_decimals``
    says (SideShift's choice is open: docs/sideshift.md section 11).
    """
    places = coin.precision(network)
    if decimals_of(amount) <= places:
        return amount
    if state.behaviour.excess_decimals == "refuse":
        raise bad_input(f"Bad request: Invalid parameters: {key}")
    rounded = quantize_amount(amount, places=places)
    if rounded <= 0:
        raise bad_input(f"{key} must be greater than zero")
    return rounded


def commission_of(state: FakeSideShift, source: Mapping[str, Any]) -> Decimal:
    """``commissionRate`` of a body or query as a fraction (absent: the 0.5 % default).

    Malformed, negative or above the documented 2 %: 400 ``Bad request: Invalid parameters:
    commissionRate`` [fake text]. Read as ``state.behaviour.commission_format`` says.
    """
    commission = state.behaviour.commission(source.get("commissionRate"))
    if commission is None:
        raise bad_input("Bad request: Invalid parameters: commissionRate")
    return commission


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
    """``POST /quotes``: exactly one amount, within the coin's decimals; range-checked; the
    rate is less ``commissionRate``; valid 15 minutes."""
    body = body_of(req)
    affiliate = check_affiliate(state, body, 'Invalid "affiliateId"')
    dspec, dnet = state.resolve(required(body, "depositCoin"), body.get("depositNetwork"), "depositNetwork")
    sspec, snet = state.resolve(required(body, "settleCoin"), body.get("settleNetwork"), "settleNetwork")
    commission = commission_of(state, body)
    low, high, rate = state.pair(dspec, dnet, sspec, snet, commission)
    deposit, settle = (
        amount_of(body.get("depositAmount"), "depositAmount"),
        amount_of(body.get("settleAmount"), "settleAmount"),
    )
    if (deposit is None) == (settle is None):
        raise bad_input("Bad request: Invalid parameters: depositAmount")
    if deposit is not None:
        deposit = check_precision(state, deposit, dspec, dnet, "depositAmount")
        settle = quantize_amount(deposit * rate, places=sspec.places(snet))
    else:
        assert settle is not None
        settle = check_precision(state, settle, sspec, snet, "settleAmount")
        deposit = quantize_amount(settle / rate, up=True, places=dspec.places(dnet))
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
        commission=commission,
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
    """``POST /shifts/fixed``: redeem a quote before it expires (a second time only if
    ``state.behaviour.reused_quote`` is ``accept``)."""
    body = body_of(req)
    quote = state.quotes.get(required(body, "quoteId"))
    if quote is None:
        raise ApiError(404, "Quote not found", "NOT_FOUND")  # [fake] text and status unconfirmed
    if body.get("affiliateId") != quote.affiliate_id:
        raise bad_input("Quote has different affiliateId than input")
    if state.now() >= quote.expires_at:
        raise bad_input("Quote has already expired. Request a new quote.")
    if quote.used_by is not None and state.behaviour.reused_quote == "refuse":
        raise bad_input("Quote has already been used. Request a new quote.")  # [fake] text
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
    quote.used_by = quote.used_by or shift.id
    state.record_shift(shift)
    return 201, shift.to_json(state.now())


def shifts_variable(state: FakeSideShift, req: ApiRequest, key: str) -> tuple[int, Any]:
    """``POST /shifts/variable``: range from the pair, rate at deposit (less
    ``commissionRate``), valid 7 days."""
    body = body_of(req)
    check_affiliate(state, body, "Unknown affiliateId")
    dspec, dnet = state.resolve(required(body, "depositCoin"), body.get("depositNetwork"), "depositNetwork")
    sspec, snet = state.resolve(required(body, "settleCoin"), body.get("settleNetwork"), "settleNetwork")
    commission = commission_of(state, body)
    low, high, _ = state.pair(dspec, dnet, sspec, snet, commission)
    if state.open_variable_shifts(key) >= state.max_open_variable:
        # [fake] text; the limit itself is documented (docs/sideshift.md section 8).
        raise bad_input("Too many open variable shifts. Cancel one or wait for one to expire.")
    fee_usd = NETWORK_FEE_USD.get(snet, DEFAULT_FEE_USD)
    now = state.now()
    shift = _new_shift(
        state, body, key, type="variable", expires_at=now + VARIABLE_TTL,
        deposit_coin=dspec.coin, deposit_network=dnet, settle_coin=sspec.coin, settle_network=snet,
        deposit_min=low, deposit_max=high,
        settle_coin_network_fee=quantize_amount(fee_usd / sspec.usd, places=sspec.places(snet)),
        network_fee_usd=fee_usd, commission=commission,
    )  # fmt: skip
    state.record_shift(shift)
    return 201, shift.to_json(now)


def find_shift(state: FakeSideShift, shift_id: str, what: str = "Shift", key: str = "shiftId") -> FakeShift:
    """The shift with this id.

    Otherwise SideShift documents a 404 for an unknown id but says nothing of a malformed
    one, and wallets also see 400s: ``state.behaviour`` picks 404 ``<what> not found`` or
    400 ``Bad request: Invalid parameters: <key>``, separately for a well-formed unknown id
    and a malformed one (not 20 lower-case hex). [fake] texts.
    """
    shift = state.shifts.get(shift_id)
    if shift is not None:
        return shift
    behaviour = state.behaviour
    malformed = SHIFT_ID.fullmatch(shift_id) is None
    status = behaviour.malformed_shift_id_status if malformed else behaviour.unknown_shift_status
    if status == 400:
        raise bad_input(f"Bad request: Invalid parameters: {key}")
    raise ApiError(404, f"{what} not found", "NOT_FOUND")


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
    target = find_shift(state, required(body_of(req), "orderId"), "Order", "orderId")
    now = state.now()
    if target.status == "expired":
        raise bad_input("Order already expired")
    if target.deposits:
        raise bad_input("Order already has a deposit")  # [fake] text
    if now - target.created_at < CANCEL_AFTER:
        raise bad_input("Orders can only be cancelled after 5 minutes.")
    target.expired, target.expires_at, target.updated_at = True, now, now
    return 204, None
