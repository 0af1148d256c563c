"""Reference data and small helpers of the fake SideShift: coins, prices, addresses, clock.

The coin list is a small, plausible subset (docs/sideshift.md section 1): tickers upper case,
network ids lower case, ``mainnet`` as an alias of each coin's home network, tokens that
need a network, a memo network (XRP). Each coin has its chain's decimals (tokens per
network, as ``tokenDetails`` shows them; docs/sideshift.md section 11). Prices are made
up; rates derive from them, less the commission.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_DOWN, ROUND_UP, Decimal
from random import Random
from typing import Any

from shiftflow.fakes.sideshift_behaviour import DEFAULT_COMMISSION

#: SideShift's default affiliate commission (0.5 %), taken from every rate.
COMMISSION = DEFAULT_COMMISSION
#: The most decimals the fake writes in an amount it computes (SideShift's examples show 8).
AMOUNT_PLACES = 8
#: Deposit range in USD before conversion to the deposit coin (docs/sideshift.md section 6).
MIN_USD = Decimal("3")
MAX_USD = Decimal("100000")
EVM_NETWORKS = frozenset({"ethereum", "arbitrum", "optimism", "base", "bsc"})
#: Estimated network fee per settle network, USD; the minimum is at least 5x this.
NETWORK_FEE_USD: Mapping[str, Decimal] = {"bitcoin": Decimal("1.5"), "ethereum": Decimal("2")}
DEFAULT_FEE_USD = Decimal("0.1")


class ApiError(Exception):
    """An error answer: HTTP ``status`` and SideShift's body ``{"error": {...}}``.

    Parameters:
        status: the HTTP status.
        message: ``error.message``.
        code: ``error.code`` (None omits it, as older SideShift answers did).
        extra: more fields inside ``error`` (``depositRangeMin``...).
        headers: response headers (``Retry-After``).
    """

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = "BAD_USER_INPUT",
        *,
        extra: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {message}")
        self.status = status
        self.message = message
        self.code = code
        self.extra = dict(extra or {})
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        """The JSON body SideShift sends for this error."""
        error: dict[str, Any] = {"message": self.message}
        if self.code:
            error["code"] = self.code
        error.update(self.extra)
        return {"error": error}


def bad_input(message: str) -> ApiError:
    """A 400 ``BAD_USER_INPUT`` error."""
    return ApiError(400, message)


class FakeClock:
    """A clock the test moves by hand; thread-safe.

    Parameters:
        start: the initial time (aware UTC); 2025-01-02T10:00Z by default.
    """

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2025, 1, 2, 10, 0, tzinfo=UTC)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        """The current fake time."""
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> datetime:
        """Move time forward by ``seconds`` and return the new time."""
        if seconds < 0:
            raise ValueError("time only moves forward")
        with self._lock:
            self._now += timedelta(seconds=seconds)
            return self._now


class SystemClock:
    """Real UTC time plus an offset that ``advance`` grows: for dev mode (paper trading),
    where statuses should move on their own yet can still be fast-forwarded."""

    def __init__(self) -> None:
        self._offset = timedelta()
        self._lock = threading.Lock()

    def now(self) -> datetime:
        """The current time, shifted by every ``advance`` so far."""
        with self._lock:
            return datetime.now(UTC) + self._offset

    def advance(self, seconds: float) -> datetime:
        """Jump ``seconds`` ahead of real time and return the new time."""
        if seconds < 0:
            raise ValueError("time only moves forward")
        with self._lock:
            self._offset += timedelta(seconds=seconds)
        return self.now()


Clock = FakeClock | SystemClock


@dataclass(frozen=True)
class FakeCoin:
    """One coin of the fake's catalog.

    ``tokens`` maps network -> (contract address, decimals) for token coins; a coin with
    tokens, or with several networks, needs an explicit network in quotes and shifts.
    ``decimals`` is the native coin's precision (its chain's smallest unit).
    """

    coin: str
    name: str
    networks: tuple[str, ...]
    mainnet: str
    usd: Decimal
    networks_with_memo: tuple[str, ...] = ()
    tokens: Mapping[str, tuple[str, int]] = field(default_factory=dict)
    decimals: int = 8

    def to_json(self) -> dict[str, Any]:
        """The coin as ``GET /coins`` shows it."""
        return {
            "coin": self.coin,
            "name": self.name,
            "networks": list(self.networks),
            "mainnet": self.mainnet,
            "hasMemo": bool(self.networks_with_memo),
            "networksWithMemo": list(self.networks_with_memo),
            "fixedOnly": False,
            "variableOnly": False,
            "depositOffline": False,
            "settleOffline": False,
            "tokenDetails": {
                net: {"contractAddress": contract, "decimals": decimals}
                for net, (contract, decimals) in self.tokens.items()
            },
        }

    def precision(self, network: str) -> int:
        """How many decimals an amount of this coin may have on ``network``."""
        token = self.tokens.get(network)
        return token[1] if token is not None else self.decimals

    def places(self, network: str) -> int:
        """Decimals of an amount the fake computes: the coin's precision, at most 8."""
        return min(AMOUNT_PLACES, self.precision(network))

    def needs_network(self) -> bool:
        """True when quotes and shifts must name the network (tokens, multi-network coins)."""
        return bool(self.tokens) or len(self.networks) > 1


def default_coins() -> dict[str, FakeCoin]:
    """A fresh copy of the default catalog, keyed by upper-case ticker."""
    usdt = {
        "ethereum": ("0xdac17f958d2ee523a2206206994597c13d831ec7", 6),
        "tron": ("TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t", 6),
        "arbitrum": ("0xfd086bc7cd5c481dcc9c85ebe478a1c0b69fcbb9", 6),
    }
    usdc = {
        "ethereum": ("0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48", 6),
        "bsc": ("0x8ac76a51cc950d9822d68b83fe1ad97b32cd580d", 18),
    }
    coins = [
        FakeCoin("BTC", "Bitcoin", ("bitcoin", "liquid"), "bitcoin", Decimal("60000"), decimals=8),
        FakeCoin(
            "ETH",
            "Ethereum",
            ("ethereum", "arbitrum", "optimism", "base"),
            "ethereum",
            Decimal("3000"),
            decimals=18,
        ),
        FakeCoin("USDT", "Tether", ("ethereum", "tron", "arbitrum"), "ethereum", Decimal("1"), tokens=usdt),
        FakeCoin("USDC", "USD Coin", ("ethereum", "bsc"), "ethereum", Decimal("1"), tokens=usdc),
        FakeCoin("LTC", "Litecoin", ("litecoin",), "litecoin", Decimal("80"), decimals=8),
        FakeCoin(
            "XRP", "XRP", ("ripple",), "ripple", Decimal("0.5"), networks_with_memo=("ripple",), decimals=6
        ),
    ]
    return {coin.coin: coin for coin in coins}


_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_BECH32 = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_ADDRESS: Mapping[str, re.Pattern[str]] = {
    "bitcoin": re.compile(r"^(bc1[a-z0-9]{20,80}|[13][1-9A-HJ-NP-Za-km-z]{25,34})$"),
    "liquid": re.compile(r"^(lq1|ex1|VJL|VT|H|G|Q)[0-9A-Za-z]{20,100}$"),
    "litecoin": re.compile(r"^(ltc1[a-z0-9]{20,80}|[LM3][1-9A-HJ-NP-Za-km-z]{26,33})$"),
    "tron": re.compile(r"^T[1-9A-HJ-NP-Za-km-z]{33}$"),
    "ripple": re.compile(r"^r[1-9A-HJ-NP-Za-km-z]{24,34}$"),
}
_EVM = re.compile(r"^0x[0-9a-fA-F]{40}$")


def valid_address(network: str, address: str) -> bool:
    """True when ``address`` looks like an address of ``network`` (a format check only)."""
    pattern = _EVM if network in EVM_NETWORKS else _ADDRESS.get(network)
    return bool(pattern and pattern.fullmatch(address))


def new_address(network: str, rng: Random) -> str:
    """A fresh, well-formed deposit address on ``network``."""
    if network in EVM_NETWORKS:
        return "0x" + "".join(rng.choice("0123456789abcdef") for _ in range(40))
    if network == "bitcoin":
        return "bc1q" + "".join(rng.choice(_BECH32) for _ in range(38))
    if network == "litecoin":
        return "ltc1q" + "".join(rng.choice(_BECH32) for _ in range(38))
    if network == "liquid":
        return "lq1qq" + "".join(rng.choice(_BECH32) for _ in range(60))
    if network == "tron":
        return "T" + "".join(rng.choice(_B58) for _ in range(33))
    if network == "ripple":
        return "r" + "".join(rng.choice(_B58) for _ in range(30))
    raise ValueError(f"no address format for network {network!r}")


def fmt(value: Decimal) -> str:
    """A decimal as SideShift writes it: plain digits, no exponent, no trailing zeros."""
    text = format(value.normalize(), "f")
    return text if text not in ("-0", "") else "0"


def iso(moment: datetime) -> str:
    """An ISO-8601 UTC timestamp with milliseconds and ``Z``, as SideShift writes them."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def quantize_amount(value: Decimal, *, up: bool = False, places: int = AMOUNT_PLACES) -> Decimal:
    """An amount rounded to ``places`` decimals (down, or up for amounts the user must send)."""
    return value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_UP if up else ROUND_DOWN)


def decimals_of(value: Decimal) -> int:
    """How many decimals ``value`` has once trailing zeros are dropped (``"1.50"`` has 1)."""
    exponent = value.normalize().as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else 0


def default_range(deposit: FakeCoin, deposit_network: str, settle_network: str) -> tuple[Decimal, Decimal]:
    """The deposit range of a pair: max(3 USD, 5x network fee) to 100,000 USD, in the deposit coin."""
    fee = NETWORK_FEE_USD.get(settle_network, DEFAULT_FEE_USD)
    low = max(MIN_USD, fee * 5) / deposit.usd
    places = deposit.places(deposit_network)
    return quantize_amount(low, up=True, places=places), quantize_amount(MAX_USD / deposit.usd, places=places)


def pair_rate(deposit: FakeCoin, settle: FakeCoin, commission: Decimal = COMMISSION) -> Decimal:
    """Settle units per deposit unit, less the commission (a fraction; 0.5 % by default)."""
    return (deposit.usd / settle.usd * (1 - commission)).quantize(Decimal("1e-10"), rounding=ROUND_DOWN)
