"""What the client checks in the amounts it sends: coin decimals and the commission rate.

**Decimals.** SideShift's coin list gives the decimals of tokens per network
(``tokenDetails[network].decimals``) but not those of native coins, which are their chains'
own: ``NATIVE_DECIMALS`` holds them (docs/sideshift.md section 11). What SideShift does
with an amount that has more decimals than its coin is open, so the client rounds every
amount it sends DOWN to the coin's decimals first: a swap never commits to more than it
was asked, and a fixed shift's deposit is an amount that can be sent to the last unit.
A coin in ``NATIVE_DECIMALS`` keeps its decimals on every network (where SideShift carries
it as a token, e.g. BTC on bsc, the token has at least as many).

**Commission.** ``commissionRate`` is optional, 0.5 % by default and at most 2 %
(docs/sideshift.md section 9); how it is written is open. The client sends a fraction
(``"0.005"`` is 0.5 %): read as a percentage, it would only lower the commission.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import ROUND_DOWN, Decimal
from types import MappingProxyType
from typing import Any

from shiftflow.kernel.sideshift.types import Coin, decimal_text, to_decimal

#: Decimals of native coins: each chain's smallest unit (satoshi, wei, drop, lamport...).
NATIVE_DECIMALS: Mapping[str, int] = MappingProxyType(
    {
        "BTC": 8,
        "BCH": 8,
        "BSV": 8,
        "LTC": 8,
        "DOGE": 8,
        "DASH": 8,
        "ZEC": 8,
        "GRS": 8,
        "ETH": 18,
        "ETC": 18,
        "BNB": 18,
        "AVAX": 18,
        "POL": 18,
        "MATIC": 18,
        "FTM": 18,
        "XRP": 6,
        "XLM": 7,
        "SOL": 9,
        "TRX": 6,
        "ADA": 6,
        "ATOM": 6,
        "ALGO": 6,
        "XTZ": 6,
        "DOT": 10,
        "XMR": 12,
    }
)

#: The documented maximum commission (2 %), as a fraction.
MAX_COMMISSION_RATE = Decimal("0.02")


def decimals_of(value: Decimal) -> int:
    """How many decimals ``value`` has once trailing zeros are dropped (``1.50`` has 1)."""
    exponent = value.normalize().as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else 0


def round_down(value: Decimal, places: int) -> Decimal:
    """``value`` cut to ``places`` decimals (never rounded up); unchanged when it fits."""
    if decimals_of(value) <= places:
        return value
    return value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_DOWN)


def commission_text(value: Any) -> str:
    """A commission rate checked and written as SideShift receives it (a fraction).

    Parameters:
        value: a fraction, as a decimal string or ``Decimal`` (``"0.005"`` is 0.5 %).

    Returns:
        The plain decimal text to send.

    Raises:
        ValueError: not a decimal number, or outside 0 to 0.02 (the message names
            ``commission_rate``).
    """
    try:
        rate = to_decimal(value, "commission_rate")
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{exc} (a fraction such as 0.005 for 0.5 %)") from None
    if not Decimal(0) <= rate <= MAX_COMMISSION_RATE:
        raise ValueError(
            f"commission_rate must be a fraction from 0 to {MAX_COMMISSION_RATE} (2 %, SideShift's "
            f"maximum), got {value!r}; 0.005 is SideShift's default of 0.5 %"
        )
    return decimal_text(rate)


class CoinPrecision:
    """Decimals per coin and network: native coins from ``NATIVE_DECIMALS``, tokens from
    ``GET /coins``.

    Parameters:
        coins: the coin list (``SideShiftClient.get_coins``); empty knows native coins only.
        native: decimals of native coins by upper-case ticker.
    """

    def __init__(self, coins: Iterable[Coin] = (), native: Mapping[str, int] = NATIVE_DECIMALS) -> None:
        self._native = dict(native)
        self._tokens: dict[str, dict[str, int]] = {}
        self._home: dict[str, str] = {}
        for coin in coins:
            details = {net.lower(): d.decimals for net, d in coin.token_details.items()}
            if details:
                self._tokens[coin.coin.upper()] = details
            if coin.mainnet:
                self._home[coin.coin.upper()] = coin.mainnet.lower()

    def decimals(self, coin: str, network: str | None = None) -> int | None:
        """How many decimals an amount of ``coin`` may have on ``network``, or None if unknown.

        Without a network (or ``mainnet``), a token's home network counts when the list
        names it, else its fewest decimals on any network (an amount that fits those fits
        every network).
        """
        ticker = coin.upper()
        if ticker in self._native:
            return self._native[ticker]
        tokens = self._tokens.get(ticker)
        if not tokens:
            return None
        net = (network or "").lower()
        if net and net != "mainnet":
            return tokens.get(net)
        home = self._home.get(ticker)
        return tokens[home] if home is not None and home in tokens else min(tokens.values())

    def is_native(self, coin: str) -> bool:
        """True when ``coin``'s decimals are known without the coin list."""
        return coin.upper() in self._native


__all__ = [
    "MAX_COMMISSION_RATE",
    "NATIVE_DECIMALS",
    "CoinPrecision",
    "commission_text",
    "decimals_of",
    "round_down",
]
