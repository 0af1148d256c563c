"""The ``price`` step: a coin's price from a CoinGecko-compatible API, cached in ``PriceCache``.

One call ``GET {SHIFTFLOW_PRICE_API_URL}/api/v3/simple/price?ids=<coin>&vs_currencies=<cur>``
per coin and currency at most every ``SHIFTFLOW_PRICE_CACHE_SECONDS`` (60): a cache row
fetched within that time answers without any HTTP call, so a thousand workflows watching
ETH cost one request a minute. Concurrent misses may both call the API; the upsert keeps
the newest answer, which is harmless for market data.

The step's output is ``{coin, vs_currency, price, source, cached, fetched_at}``. ``price``
is a **decimal string** (``"2999.5"``): the JSON number is parsed as ``Decimal``, never as
a float, and conditions compare numeric strings as decimals
(``{left: "{{ steps.price.output.price }}", op: below, right: 3000}``). A cached price
comes from the cache's double column and is printed with the shortest exact repr.

Errors: a timeout, a connection failure, a 429 or a 5xx is transient (the step retries
with its ``retry`` policy); an unknown coin or currency, or another 4xx, is permanent.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import httpx

from shiftflow.kernel.enqueue import Outgoing
from shiftflow.kernel.errors import PermanentError, TransientError
from shiftflow.kernel.settings import Settings, get_settings
from shiftflow.kernel.tools.http import tls_context
from shiftflow.models.engine import runs
from shiftflow.models.tables.base import utcnow
from shiftflow.models.tables.price_cache import PriceCache

SOURCE = "coingecko"

#: CoinGecko ids of common coins and their tickers (``PriceCache.symbol``; swaps use tickers).
SYMBOLS = {
    "bitcoin": "btc", "ethereum": "eth", "tether": "usdt", "usd-coin": "usdc", "litecoin": "ltc",
    "ripple": "xrp", "solana": "sol", "dogecoin": "doge", "cardano": "ada", "tron": "trx",
    "binancecoin": "bnb", "polkadot": "dot", "avalanche-2": "avax", "monero": "xmr",
}  # fmt: skip

_COIN = re.compile(r"^[a-z0-9][a-z0-9-]{0,99}$")
_CURRENCY = re.compile(r"^[a-z]{2,10}$")
_INPUTS = frozenset({"coin", "vs_currency", "symbol", "max_age_seconds"})


class PriceInputError(PermanentError):
    """Raised when a price step's inputs are missing or malformed (the message names the field)."""


class PriceUnavailable(TransientError):
    """Raised when the price API timed out, was unreachable, rate-limited us or failed (5xx)."""


class UnknownPrice(PermanentError):
    """Raised when the price API does not know the coin or currency, or refused the request (4xx)."""


@dataclass(frozen=True)
class PriceRequest:
    """A validated price step input."""

    coin: str
    vs_currency: str = "usd"
    symbol: str | None = None
    max_age_seconds: int | None = None

    @classmethod
    def parse(cls, inputs: Any) -> PriceRequest:
        """Validate a rendered ``with:`` block.

        Raises:
            PriceInputError: an unknown field, or a field of the wrong form (named in the message).
        """
        if not isinstance(inputs, dict):
            raise PriceInputError("price step: 'with' must be an object with 'coin'")
        unknown = sorted(set(inputs) - _INPUTS)
        if unknown:
            raise PriceInputError(
                f"price step: unknown input {unknown[0]!r} (expected {', '.join(sorted(_INPUTS))})"
            )
        coin = inputs.get("coin")
        if not isinstance(coin, str) or not _COIN.match(coin.strip().lower()):
            raise PriceInputError(
                f"price step: 'coin' must be a CoinGecko id such as 'ethereum', got {coin!r}"
            )
        currency = inputs.get("vs_currency", "usd")
        if not isinstance(currency, str) or not _CURRENCY.match(currency.strip().lower()):
            raise PriceInputError(
                f"price step: 'vs_currency' must be a currency code such as 'usd', got {currency!r}"
            )
        symbol = inputs.get("symbol")
        if symbol is not None and (not isinstance(symbol, str) or not 0 < len(symbol) <= 20):
            raise PriceInputError("price step: 'symbol' must be a ticker of at most 20 characters")
        max_age = inputs.get("max_age_seconds")
        if max_age is not None and (isinstance(max_age, bool) or not isinstance(max_age, int) or max_age < 0):
            raise PriceInputError("price step: 'max_age_seconds' must be a whole number >= 0")
        return cls(coin.strip().lower(), currency.strip().lower(), symbol, max_age)


def price_text(value: float | Decimal) -> str:
    """A price as a plain decimal string (``"2999.5"``, never ``"3e-05"``)."""
    number = value if isinstance(value, Decimal) else Decimal(repr(float(value)))
    text = format(number, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def _output(row: PriceCache, *, cached: bool) -> dict[str, Any]:
    return {
        "coin": row.coin_id,
        "vs_currency": row.vs_currency,
        "price": price_text(row.price),
        "source": row.source,
        "cached": cached,
        "fetched_at": row.fetched_at.isoformat() + "Z",
    }


def cached_price(coin: str, vs_currency: str, max_age_seconds: float) -> PriceCache | None:
    """The cache row of ``coin`` if it was fetched within ``max_age_seconds``, else None."""
    row = PriceCache.get_or_none((PriceCache.coin_id == coin) & (PriceCache.vs_currency == vs_currency))
    if row is None or row.fetched_at < utcnow() - dt.timedelta(seconds=max_age_seconds):
        return None
    return row


def fetch(
    request: PriceRequest, settings: Settings, *, transport: httpx.BaseTransport | None = None
) -> Decimal:
    """Ask the price API for one price (no cache).

    Raises:
        PriceUnavailable: timeout, connection failure, 429 or 5xx.
        UnknownPrice: 4xx, or an answer without this coin and currency.
    """
    headers = {"accept": "application/json", "user-agent": "shiftflow-price/0.1"}
    if settings.price_api_key:
        headers["x-cg-demo-api-key"] = settings.price_api_key
    url = settings.price_api_url.rstrip("/") + "/api/v3/simple/price"
    timeout = httpx.Timeout(settings.http_timeout_seconds, connect=min(5.0, settings.http_timeout_seconds))
    try:
        with httpx.Client(timeout=timeout, transport=transport, follow_redirects=False,
                          verify=tls_context()) as client:
            response = client.get(
                url, params={"ids": request.coin, "vs_currencies": request.vs_currency}, headers=headers
            )
    except httpx.HTTPError as exc:
        raise PriceUnavailable(f"price API: {type(exc).__name__}: {exc}") from exc
    if response.status_code == 429 or response.status_code >= 500:
        raise PriceUnavailable(f"price API answered {response.status_code}")
    if response.status_code != 200:
        raise UnknownPrice(
            f"price API refused {request.coin}/{request.vs_currency}: HTTP {response.status_code}"
        )
    try:
        data = json.loads(response.text, parse_float=Decimal, parse_int=Decimal)
        value = data[request.coin][request.vs_currency]
        price = value if isinstance(value, Decimal) else Decimal(str(value))
    except (ValueError, KeyError, TypeError, InvalidOperation):
        raise UnknownPrice(f"price API has no {request.vs_currency} price for {request.coin!r}") from None
    if not price.is_finite() or price < 0:
        raise UnknownPrice(f"price API gave an invalid price {price} for {request.coin!r}")
    return price


def store(request: PriceRequest, price: Decimal) -> PriceCache:
    """Upsert the cache row of ``request`` with a freshly fetched ``price``."""
    now = utcnow()
    symbol = (request.symbol or SYMBOLS.get(request.coin) or request.coin)[:20].lower()
    values = {"price": float(price), "symbol": symbol, "source": SOURCE, "fetched_at": now, "updated_at": now}
    PriceCache.insert(coin_id=request.coin, vs_currency=request.vs_currency, **values).on_conflict(
        conflict_target=[PriceCache.coin_id, PriceCache.vs_currency], update=values
    ).execute()
    return PriceCache.get(
        (PriceCache.coin_id == request.coin) & (PriceCache.vs_currency == request.vs_currency)
    )


def get_price(
    request: PriceRequest, settings: Settings, *, transport: httpx.BaseTransport | None = None
) -> dict[str, Any]:
    """The price step's output: from a fresh cache row, else from the API (then cached).

    Raises:
        PriceUnavailable, UnknownPrice: see ``fetch``.
    """
    max_age = settings.price_cache_seconds
    if request.max_age_seconds is not None:
        max_age = min(max_age, request.max_age_seconds)
    row = cached_price(request.coin, request.vs_currency, max_age) if max_age > 0 else None
    if row is not None:
        return _output(row, cached=True)
    price = fetch(request, settings, transport=transport)
    output = _output(store(request, price), cached=False)
    output["price"] = price_text(price)  # the API's exact digits, not the double's
    return output


def usd_price(symbol: str) -> Decimal | None:
    """The last known USD price of a ticker (any age), for money totals; None when unknown."""
    row = (
        PriceCache.select()
        .where((PriceCache.symbol == symbol.lower()) & (PriceCache.vs_currency == "usd"))
        .order_by(PriceCache.fetched_at.desc())
        .first()
    )
    return None if row is None else Decimal(price_text(row.price))


def run_price_step(claim: runs.Claim, inputs: Any, stored: Any) -> list[Outgoing]:
    """The ``price`` step handler (``run_step.register_handler``): fetch or reuse, then record.

    Raises:
        PriceInputError, UnknownPrice: permanent; the engine fails the step.
        PriceUnavailable: transient; the engine retries the step with its policy.
    """
    output = get_price(PriceRequest.parse(inputs), get_settings())
    return runs.complete_step(claim, output, stored)
