"""A SideShift v2 REST client: one method per endpoint, typed results, mapped errors.

Safe calls (GETs, quotes, set-refund-address, cancel-order) map a timeout or a 5xx to
``ServiceUnavailable`` (transient, retry). Create calls (fixed/variable shift, checkout,
account) are never retried here, and once the request may have left, a missing or
broken answer is ``UnknownOutcome``: SideShift has no idempotency key and no way to list
shifts (docs/sideshift.md section 10), so only reconciliation is safe (rules in ``transport``).

Amounts are checked before they leave (``amounts``): every amount is cut down to its
coin's decimals, a quote must be for exactly the amount asked (a fixed shift needs
exactly the quoted deposit), and ``commissionRate`` must be 0 to 2 %. Ids go into paths
as one escaped segment; ``GET /shifts/{id}`` reads a plain 400 as "not found", as wallets
do (docs/sideshift.md section 7).

Headers: ``x-sideshift-secret`` on the endpoints the docs mark as authenticated,
``x-user-ip`` when a call is made for an end user, and whatever an injected ``signer``
returns (the Ed25519 scheme is undocumented; the hook receives the exact bytes sent).
Shift and quote creations first take a slot of the shared rate limiter (``ratelimit``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from decimal import Decimal
from typing import Any
from urllib.parse import quote as url_quote

import httpx

from shiftflow.kernel.sideshift.amounts import CoinPrecision, commission_text, decimals_of, round_down
from shiftflow.kernel.sideshift.errors import AmountTooLow, QuoteMismatch, ShiftNotFound, UnknownPrecision
from shiftflow.kernel.sideshift.ratelimit import QUOTES, SHIFTS, InProcessBackend, RateLimiter
from shiftflow.kernel.sideshift.transport import SignableRequest, Signer, Timeouts, Transport
from shiftflow.kernel.sideshift.types import (
    Account,
    Checkout,
    Coin,
    Pair,
    Permissions,
    Quote,
    Shift,
    decimal_text,
    parse_list,
    to_decimal,
)

DEFAULT_BASE_URL = "https://sideshift.ai/api/v2"
#: How long the coin list (token decimals) is reused before it is fetched again, seconds.
COINS_TTL_SECONDS = 3600.0


class SideShiftClient:
    """SideShift v2 client. Thread-safe; one per process is enough.

    Parameters:
        affiliate_id: the account id, sent as ``affiliateId``.
        secret: the account secret for ``x-sideshift-secret``; None sends no secret.
        base_url: the API root, ``https://sideshift.ai/api/v2`` or a fake's URL.
        timeouts: connect/read/write/pool timeouts of every call.
        limiter: the shared rate limiter; None means an in-process one with the published
            rates (pass a ``RateLimiter`` on ``RedisBackend`` when several processes run).
        limit_per_user_ip: count limits per ``x-user-ip`` instead of for our one egress IP.
            Off by default: whether SideShift counts by the forwarded IP is unconfirmed,
            and one shared budget cannot exceed either reading.
        user_ip: a default ``x-user-ip`` for every call (None: we are the end user).
        commission_rate: optional ``commissionRate`` as a fraction (``"0.005"`` is 0.5 %),
            0 to 0.02; None leaves SideShift's default (0.5 %).
        precision: the decimals of each coin; None means native coins from
            ``NATIVE_DECIMALS`` and tokens from ``GET /coins``, fetched when first needed
            and kept ``COINS_TTL_SECONDS``.
        signer: optional hook adding signature headers to every request.
        transport: an ``httpx`` transport (tests); the default opens real connections.

    Raises:
        ValueError: ``commission_rate`` is malformed or outside 0 to 0.02.
    """

    def __init__(
        self,
        affiliate_id: str,
        *,
        secret: str | None = None,
        base_url: str = DEFAULT_BASE_URL,
        timeouts: Timeouts | None = None,
        limiter: RateLimiter | None = None,
        limit_per_user_ip: bool = False,
        user_ip: str | None = None,
        commission_rate: Decimal | str | None = None,
        precision: CoinPrecision | None = None,
        signer: Signer | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.affiliate_id = affiliate_id
        self.base_url = base_url.rstrip("/")
        self.timeouts = timeouts or Timeouts()
        self.limiter = limiter or RateLimiter(InProcessBackend())
        self._limit_per_user_ip = limit_per_user_ip
        self._user_ip = user_ip
        self._commission_rate = None if commission_rate is None else commission_text(commission_rate)
        self._precision = precision
        self._native = CoinPrecision()
        self._coins: tuple[float, CoinPrecision] | None = None
        self._coins_lock = threading.Lock()
        self._transport = Transport(
            self.base_url, self.timeouts, secret=secret, user_ip=user_ip, signer=signer, transport=transport
        )
        self._call = self._transport.call

    def close(self) -> None:
        """Close the connection pools."""
        self._transport.close()

    def __enter__(self) -> SideShiftClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reference data -------------------------------------------------------------

    def get_coins(self) -> list[Coin]:
        """``GET /coins``: every coin with its networks and flags.

        Raises:
            ServiceUnavailable, UnexpectedResponse, SideShiftRejected: see the module docstring.
        """
        return self._call("GET", "/coins", parse=lambda d: parse_list(d, Coin.from_json))

    def get_permissions(self, *, user_ip: str | None = None) -> Permissions:
        """``GET /permissions``: may this user create shifts (False in a restricted jurisdiction)?"""
        return self._call(
            "GET", "/permissions", user_ip=user_ip, parse=lambda d: Permissions(bool(d["createShift"]))
        )

    def get_pair(
        self, deposit: str, settle: str, *, amount: Decimal | str | None = None, user_ip: str | None = None
    ) -> Pair:
        """``GET /pair/{from}/{to}``: deposit range and rate.

        Parameters:
            deposit: ``coin`` or ``coin-network`` (``coin_spec`` builds it; ``mainnet`` allowed).
            settle: the same for the settle side.
            amount: optional deposit amount for an exact fee impact (cut to the coin's decimals).

        Returns:
            The pair's ``min``/``max`` (deposit units) and ``rate``.

        Raises:
            PairNotAvailable: unknown or disabled pair; others as the module docstring says.
        """
        params = self._affiliate_params()
        if amount is not None:
            coin, _, network = deposit.partition("-")
            params["amount"] = decimal_text(self.round_amount(coin, network or None, amount))
        return self._call(
            "GET",
            f"/pair/{_segment(deposit)}/{_segment(settle)}",
            params=params,
            auth=True,
            user_ip=user_ip,
            parse=Pair.from_json,
        )

    def get_pairs(self, coins: Sequence[str], *, user_ip: str | None = None) -> list[Pair]:
        """``GET /pairs?pairs=a,b,c``: every ordered pair among ``coins`` (``coin[-network]``)."""
        params = {**self._affiliate_params(), "pairs": ",".join(coins)}
        return self._call(
            "GET",
            "/pairs",
            params=params,
            auth=True,
            user_ip=user_ip,
            parse=lambda d: parse_list(d, Pair.from_json),
        )

    # -- amounts -------------------------------------------------------------------

    def decimals(self, coin: str, network: str | None = None) -> int:
        """How many decimals an amount of ``coin`` on ``network`` may have.

        Raises:
            UnknownPrecision: neither the native table nor SideShift's coin list says.
            ServiceUnavailable, UnexpectedResponse: the coin list could not be read.
        """
        places = (self._precision or self._native).decimals(coin, network)
        if places is None and self._precision is None:
            places = self._coin_list().decimals(coin, network)
        if places is None:
            raise UnknownPrecision(
                f"{coin.upper()} on {network or 'its home network'}: SideShift's coin list gives no "
                "decimals for it, so the amount cannot be checked; nothing was sent"
            )
        return places

    def round_amount(self, coin: str, network: str | None, amount: Decimal | str) -> Decimal:
        """``amount`` cut down to ``coin``'s decimals (never rounded up).

        Raises:
            AmountTooLow: nothing is left (less than one unit of the coin's last decimal).
            UnknownPrecision, ServiceUnavailable: see ``decimals``.
            TypeError, ValueError: not a decimal amount (a float is refused).
        """
        value = to_decimal(amount)
        places = self.decimals(coin, network)
        rounded = round_down(value, places)
        if rounded <= 0:
            raise AmountTooLow(
                f"{decimal_text(value)} {coin.upper()} is less than the smallest amount its "
                f"{places} decimals can carry; nothing was sent"
            )
        return rounded

    def _coin_list(self) -> CoinPrecision:
        with self._coins_lock:
            if self._coins is None or time.monotonic() - self._coins[0] > COINS_TTL_SECONDS:
                self._coins = (time.monotonic(), CoinPrecision(self.get_coins()))
            return self._coins[1]

    # -- quotes and shifts ---------------------------------------------------------

    def request_quote(
        self,
        *,
        deposit_coin: str,
        settle_coin: str,
        deposit_network: str | None = None,
        settle_network: str | None = None,
        deposit_amount: Decimal | str | None = None,
        settle_amount: Decimal | str | None = None,
        user_ip: str | None = None,
    ) -> Quote:
        """``POST /quotes``: lock a rate for 15 minutes. Give exactly one of the two amounts.

        The amount is first cut down to its coin's decimals; the quote must then be for
        exactly that amount, and its deposit amount must fit the deposit coin's decimals
        (a fixed shift from it needs exactly that deposit). Takes a ``QUOTES`` slot of the
        rate limiter before sending. Safe to retry: a quote moves no money.

        Raises:
            ValueError: not exactly one amount given.
            QuoteMismatch: the quote is not for the amount asked, or its deposit cannot be
                sent exactly; UnknownPrecision: the coin's decimals are unknown.
            RateLimited, AmountTooLow, AmountTooHigh, PairNotAvailable, Unauthorized,
            PermissionDenied, ServiceUnavailable: see the errors module.
        """
        if (deposit_amount is None) == (settle_amount is None):
            raise ValueError("give exactly one of deposit_amount and settle_amount")
        deposit = None if deposit_amount is None else self.round_amount(deposit_coin, deposit_network, deposit_amount)
        settle = None if settle_amount is None else self.round_amount(settle_coin, settle_network, settle_amount)
        body: dict[str, Any] = {
            "depositCoin": deposit_coin,
            "settleCoin": settle_coin,
            "depositAmount": None if deposit is None else decimal_text(deposit),
            "settleAmount": None if settle is None else decimal_text(settle),
            "affiliateId": self.affiliate_id,
        }
        _put(
            body,
            depositNetwork=deposit_network,
            settleNetwork=settle_network,
            commissionRate=self._commission_rate,
        )
        self.limiter.acquire(QUOTES, self._bucket(user_ip))
        quote: Quote = self._call(
            "POST", "/quotes", json_body=body, auth=True, user_ip=user_ip, parse=Quote.from_json
        )
        self._check_quote(quote, deposit, settle, self.decimals(deposit_coin, deposit_network))
        return quote

    @staticmethod
    def _check_quote(quote: Quote, deposit: Decimal | None, settle: Decimal | None, places: int) -> None:
        asked = "depositAmount" if deposit is not None else "settleAmount"
        wanted = deposit if deposit is not None else settle
        got = quote.deposit_amount if deposit is not None else quote.settle_amount
        if got != wanted:
            raise QuoteMismatch(
                f"quote {quote.id} is for {asked} {decimal_text(got)}, not the {decimal_text(wanted or 0)} "
                "asked; a fixed shift would commit to the quoted amount, so the quote is not used"
            )
        if decimals_of(quote.deposit_amount) > places:
            raise QuoteMismatch(
                f"quote {quote.id} asks for a deposit of {decimal_text(quote.deposit_amount)} "
                f"{quote.deposit_coin}, more decimals than the coin has ({places}): a fixed shift needs "
                "exactly that amount, which cannot be sent, so the quote is not used"
            )

    def create_fixed_shift(
        self,
        *,
        quote_id: str,
        settle_address: str,
        settle_memo: str | None = None,
        refund_address: str | None = None,
        refund_memo: str | None = None,
        external_id: str | None = None,
        user_ip: str | None = None,
    ) -> Shift:
        """``POST /shifts/fixed``: turn a quote into a shift with a deposit address. Never retried.

        Parameters:
            quote_id: from ``request_quote``; usable once, for 15 minutes.
            external_id: our own id, echoed back; store it BEFORE calling (reconciliation).

        Returns:
            The shift, status ``waiting``; send exactly ``deposit_amount`` before ``expires_at``.

        Raises:
            UnknownOutcome: the request may have created a shift but no answer was read.
            QuoteExpired, QuoteAlreadyUsed, QuoteNotFound, InvalidAddress, RateLimited,
            ServiceUnavailable (nothing sent), Unauthorized, PermissionDenied.
        """
        body: dict[str, Any] = {
            "quoteId": quote_id,
            "settleAddress": settle_address,
            "affiliateId": self.affiliate_id,
        }
        _put(
            body,
            settleMemo=settle_memo,
            refundAddress=refund_address,
            refundMemo=refund_memo,
            externalId=external_id,
        )
        self.limiter.acquire(SHIFTS, self._bucket(user_ip))
        return self._call(
            "POST",
            "/shifts/fixed",
            json_body=body,
            auth=True,
            user_ip=user_ip,
            unsafe=True,
            parse=Shift.from_json,
        )

    def create_variable_shift(
        self,
        *,
        deposit_coin: str,
        settle_coin: str,
        settle_address: str,
        deposit_network: str | None = None,
        settle_network: str | None = None,
        settle_memo: str | None = None,
        refund_address: str | None = None,
        refund_memo: str | None = None,
        external_id: str | None = None,
        user_ip: str | None = None,
    ) -> Shift:
        """``POST /shifts/variable``: a shift whose rate is fixed when the deposit arrives (7 days).

        Returns:
            The shift with ``deposit_min``/``deposit_max``; no amounts until a deposit.

        Raises:
            UnknownOutcome, TooManyOpenShifts, PairNotAvailable, InvalidAddress, RateLimited,
            ServiceUnavailable (nothing sent), Unauthorized, PermissionDenied.
        """
        body: dict[str, Any] = {
            "depositCoin": deposit_coin,
            "settleCoin": settle_coin,
            "settleAddress": settle_address,
            "affiliateId": self.affiliate_id,
        }
        _put(
            body,
            depositNetwork=deposit_network,
            settleNetwork=settle_network,
            settleMemo=settle_memo,
            refundAddress=refund_address,
            refundMemo=refund_memo,
            externalId=external_id,
            commissionRate=self._commission_rate,
        )
        self.limiter.acquire(SHIFTS, self._bucket(user_ip))
        return self._call(
            "POST",
            "/shifts/variable",
            json_body=body,
            auth=True,
            user_ip=user_ip,
            unsafe=True,
            parse=Shift.from_json,
        )

    def get_shift(self, shift_id: str) -> Shift:
        """``GET /shifts/{id}``: the shift's current state.

        Raises:
            ShiftNotFound: SideShift answered 404, or a plain 400 (the id is its only input:
                wallets see 400s for unknown and malformed ids); ServiceUnavailable: retry later.
        """
        return self._call(
            "GET",
            f"/shifts/{_segment(shift_id)}",
            parse=Shift.from_json,
            not_found=ShiftNotFound,
            bad_request_not_found=True,
        )

    def get_shifts(self, shift_ids: Sequence[str]) -> list[Shift]:
        """``GET /shifts?ids=a,b``: several shifts in one call (ids SideShift does not know are absent)."""
        return self._call(
            "GET",
            "/shifts",
            params={"ids": ",".join(shift_ids)},
            parse=lambda d: parse_list(d, Shift.from_json),
        )

    def set_refund_address(
        self, shift_id: str, address: str, *, memo: str | None = None, user_ip: str | None = None
    ) -> Shift:
        """``POST /shifts/{id}/set-refund-address``: where a refund goes. Safe to repeat.

        Raises:
            InvalidAddress, ShiftNotFound, ServiceUnavailable, Unauthorized.
        """
        body: dict[str, Any] = {"address": address}
        _put(body, memo=memo)
        return self._call(
            "POST",
            f"/shifts/{_segment(shift_id)}/set-refund-address",
            json_body=body,
            auth=True,
            user_ip=user_ip,
            parse=Shift.from_json,
            not_found=ShiftNotFound,
        )

    def cancel_order(self, shift_id: str, *, user_ip: str | None = None) -> None:
        """``POST /cancel-order``: expire an unfunded shift at least 5 minutes old (204).

        Raises:
            OrderNotCancellable: already expired, or younger than 5 minutes.
            ShiftNotFound, ServiceUnavailable, Unauthorized.
        """
        self._call(
            "POST",
            "/cancel-order",
            json_body={"orderId": shift_id},
            auth=True,
            user_ip=user_ip,
            parse=None,
            not_found=ShiftNotFound,
        )

    # -- SideShift Pay and accounts ------------------------------------------------

    def create_checkout(
        self,
        *,
        settle_coin: str,
        settle_network: str,
        settle_amount: Decimal | str,
        settle_address: str,
        success_url: str,
        cancel_url: str,
        user_ip: str,
        settle_memo: str | None = None,
    ) -> Checkout:
        """``POST /checkout``: a SideShift Pay checkout; ``user_ip`` is required here. Never retried.

        ``settle_amount`` is cut down to the settle coin's decimals first.

        Raises:
            UnknownOutcome, InvalidAddress, InvalidUserIp, PairNotAvailable, ServiceUnavailable,
            UnknownPrecision.
        """
        body: dict[str, Any] = {
            "settleCoin": settle_coin,
            "settleNetwork": settle_network,
            "settleAmount": decimal_text(self.round_amount(settle_coin, settle_network, settle_amount)),
            "settleAddress": settle_address,
            "affiliateId": self.affiliate_id,
            "successUrl": success_url,
            "cancelUrl": cancel_url,
        }
        _put(body, settleMemo=settle_memo)
        return self._call(
            "POST",
            "/checkout",
            json_body=body,
            auth=True,
            user_ip=user_ip,
            unsafe=True,
            parse=Checkout.from_json,
        )

    def get_checkout(self, checkout_id: str) -> Checkout:
        """``GET /checkout/{id}``: the checkout and its ``orders`` (shift ids)."""
        return self._call("GET", f"/checkout/{_segment(checkout_id)}", parse=Checkout.from_json)

    def create_account(self, *, pub_key: str | None = None) -> Account:
        """``POST /create-account``: legacy (no key: returns ``secret``) or Ed25519 (``pub_key``).

        Raises:
            UnknownOutcome: no usable answer; an account may exist.
        """
        body = None if pub_key is None else {"pubKey": pub_key}
        return self._call("POST", "/create-account", json_body=body, unsafe=True, parse=Account.from_json)

    # -- plumbing ------------------------------------------------------------------

    def _affiliate_params(self) -> dict[str, str]:
        params = {"affiliateId": self.affiliate_id}
        if self._commission_rate is not None:
            params["commissionRate"] = self._commission_rate
        return params

    def _bucket(self, user_ip: str | None) -> str:
        ip = user_ip or self._user_ip
        return ip if (self._limit_per_user_ip and ip) else "egress"


def _segment(value: str) -> str:
    """``value`` as one escaped path segment: an id can never reach another endpoint."""
    return url_quote(str(value), safe="")


def _put(body: dict[str, Any], **optional: Any) -> None:
    """Add the optional fields that have a value (SideShift rejects explicit nulls on some)."""
    body.update({key: value for key, value in optional.items() if value is not None})


__all__ = ["COINS_TTL_SECONDS", "DEFAULT_BASE_URL", "SideShiftClient", "SignableRequest", "Signer", "Timeouts"]
