"""Typed SideShift results: frozen dataclasses built from the API's JSON.

Amounts, rates and fees are ``Decimal`` parsed from the decimal strings SideShift sends
(``"0.14364577"``), never through ``float``; the client also decodes any JSON number as
``Decimal``. Timestamps are aware UTC ``datetime``. Statuses stay plain strings so that a
status SideShift adds later does not break parsing; ``ShiftStatus`` names the known ones.

Each ``from_json`` raises ``KeyError``/``ValueError``/``TypeError`` on a missing or
malformed field; the client turns that into ``UnexpectedResponse`` (or ``UnknownOutcome``
for a create call).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from types import MappingProxyType
from typing import Any


class ShiftStatus(StrEnum):
    """The statuses SideShift documents (docs/sideshift.md section 5)."""

    WAITING = "waiting"
    PENDING = "pending"
    PROCESSING = "processing"
    REVIEW = "review"
    SETTLING = "settling"
    SETTLED = "settled"
    REFUND = "refund"
    REFUNDING = "refunding"
    REFUNDED = "refunded"
    EXPIRED = "expired"
    MULTIPLE = "multiple"


#: Statuses after which a shift (or one deposit) never changes again.
FINAL_STATUSES = frozenset({ShiftStatus.SETTLED, ShiftStatus.REFUNDED, ShiftStatus.EXPIRED})


def to_decimal(value: Any, name: str = "amount") -> Decimal:
    """A ``Decimal`` from a decimal string, ``int`` or ``Decimal``; floats are refused.

    Parameters:
        value: the value to convert.
        name: the field name, for the error message.

    Returns:
        The exact decimal value.

    Raises:
        TypeError: a float (it would already have lost precision) or another type.
        ValueError: a string that is not a finite decimal number.
    """
    if isinstance(value, bool) or isinstance(value, float):
        raise TypeError(f"{name}: expected a decimal string or Decimal, got {type(value).__name__}")
    if not isinstance(value, str | int | Decimal):
        raise TypeError(f"{name}: expected a decimal string or Decimal, got {type(value).__name__}")
    try:
        result = Decimal(value) if not isinstance(value, str) else Decimal(value.strip())
    except InvalidOperation:
        raise ValueError(f"{name}: {value!r} is not a decimal number") from None
    if not result.is_finite():
        raise ValueError(f"{name}: {value!r} is not finite")
    return result


def decimal_text(value: Decimal | str | int) -> str:
    """The plain decimal string SideShift expects (``"0.00012"``, never ``"1.2E-4"``)."""
    return format(to_decimal(value), "f")


def _dec(data: Mapping[str, Any], key: str) -> Decimal:
    return to_decimal(data[key], key)


def _opt_dec(data: Mapping[str, Any], key: str) -> Decimal | None:
    value = data.get(key)
    return None if value is None else to_decimal(value, key)


def _time(data: Mapping[str, Any], key: str) -> datetime:
    # Python 3.11 reads "...Z" and the 9-digit fractions of checkout objects.
    value = data[key]
    if not isinstance(value, str):
        raise TypeError(f"{key}: expected an ISO-8601 string")
    return datetime.fromisoformat(value)


def _opt_time(data: Mapping[str, Any], key: str) -> datetime | None:
    return None if data.get(key) is None else _time(data, key)


def _opt_str(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    return None if value is None else str(value)


def _flag(value: Any) -> bool | tuple[str, ...]:
    # fixedOnly & co: false, true (single-network coin) or the list of affected networks.
    if isinstance(value, list):
        return tuple(str(item) for item in value)
    return bool(value)


def _frozen(data: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(data))


@dataclass(frozen=True)
class TokenDetails:
    """A token's contract on one network."""

    contract_address: str
    decimals: int


@dataclass(frozen=True)
class Coin:
    """One entry of ``GET /coins``. Flags are False, True, or a tuple of affected networks."""

    coin: str
    name: str
    networks: tuple[str, ...]
    networks_with_memo: tuple[str, ...]
    fixed_only: bool | tuple[str, ...]
    variable_only: bool | tuple[str, ...]
    deposit_offline: bool | tuple[str, ...]
    settle_offline: bool | tuple[str, ...]
    token_details: Mapping[str, TokenDetails] = field(default_factory=dict, hash=False)
    mainnet: str | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Coin:
        """Build from one coin object of ``GET /coins``."""
        details = data.get("tokenDetails") or {}
        return cls(
            coin=str(data["coin"]),
            name=str(data["name"]),
            networks=tuple(str(n) for n in data["networks"]),
            networks_with_memo=tuple(str(n) for n in data.get("networksWithMemo") or ()),
            fixed_only=_flag(data.get("fixedOnly", False)),
            variable_only=_flag(data.get("variableOnly", False)),
            deposit_offline=_flag(data.get("depositOffline", False)),
            settle_offline=_flag(data.get("settleOffline", False)),
            token_details=MappingProxyType(
                {
                    str(net): TokenDetails(str(d["contractAddress"]), int(d["decimals"]))
                    for net, d in details.items()
                }
            ),
            mainnet=_opt_str(data, "mainnet"),
        )

    def has_memo(self, network: str) -> bool:
        """True when deposits/settlements on ``network`` use a memo."""
        return network in self.networks_with_memo


@dataclass(frozen=True)
class Permissions:
    """``GET /permissions``: may this user (IP) create shifts?"""

    create_shift: bool


@dataclass(frozen=True)
class Pair:
    """``GET /pair`` or one item of ``GET /pairs``: deposit range and rate."""

    min: Decimal
    max: Decimal
    rate: Decimal
    deposit_coin: str
    settle_coin: str
    deposit_network: str
    settle_network: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Pair:
        """Build from a pair object."""
        return cls(
            min=_dec(data, "min"),
            max=_dec(data, "max"),
            rate=_dec(data, "rate"),
            deposit_coin=str(data["depositCoin"]),
            settle_coin=str(data["settleCoin"]),
            deposit_network=str(data["depositNetwork"]),
            settle_network=str(data["settleNetwork"]),
        )


@dataclass(frozen=True)
class Quote:
    """``POST /quotes``: a fixed rate valid until ``expires_at`` (15 minutes)."""

    id: str
    created_at: datetime
    expires_at: datetime
    deposit_coin: str
    deposit_network: str
    settle_coin: str
    settle_network: str
    deposit_amount: Decimal
    settle_amount: Decimal
    rate: Decimal
    affiliate_id: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Quote:
        """Build from a quote object."""
        return cls(
            id=str(data["id"]),
            created_at=_time(data, "createdAt"),
            expires_at=_time(data, "expiresAt"),
            deposit_coin=str(data["depositCoin"]),
            deposit_network=str(data["depositNetwork"]),
            settle_coin=str(data["settleCoin"]),
            settle_network=str(data["settleNetwork"]),
            deposit_amount=_dec(data, "depositAmount"),
            settle_amount=_dec(data, "settleAmount"),
            rate=_dec(data, "rate"),
            affiliate_id=str(data["affiliateId"]),
        )


@dataclass(frozen=True)
class Deposit:
    """One item of ``deposits[]`` (shifts with status ``multiple``)."""

    status: str
    deposit_hash: str | None
    deposit_amount: Decimal | None
    deposit_received_at: datetime | None
    updated_at: datetime | None
    settle_hash: str | None = None
    settle_amount: Decimal | None = None
    rate: Decimal | None = None
    issue: str | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Deposit:
        """Build from one deposit object."""
        return cls(
            status=str(data["status"]),
            deposit_hash=_opt_str(data, "depositHash"),
            deposit_amount=_opt_dec(data, "depositAmount"),
            deposit_received_at=_opt_time(data, "depositReceivedAt"),
            updated_at=_opt_time(data, "updatedAt"),
            settle_hash=_opt_str(data, "settleHash"),
            settle_amount=_opt_dec(data, "settleAmount"),
            rate=_opt_dec(data, "rate"),
            issue=_opt_str(data, "issue"),
        )


@dataclass(frozen=True)
class Shift:
    """A fixed or variable shift (docs/sideshift.md section 4). ``raw`` keeps the object as received.

    ``deposit_address`` is None once SideShift recycled it (60 days; 40 for EVM tokens).
    """

    id: str
    type: str
    status: str
    created_at: datetime
    expires_at: datetime
    deposit_coin: str
    deposit_network: str
    settle_coin: str
    settle_network: str
    deposit_address: str | None
    settle_address: str
    deposit_min: Decimal | None
    deposit_max: Decimal | None
    average_shift_seconds: Decimal | None = None
    updated_at: datetime | None = None
    quote_id: str | None = None
    deposit_amount: Decimal | None = None
    settle_amount: Decimal | None = None
    rate: Decimal | None = None
    deposit_memo: str | None = None
    settle_memo: str | None = None
    refund_address: str | None = None
    refund_memo: str | None = None
    external_id: str | None = None
    deposit_hash: str | None = None
    settle_hash: str | None = None
    deposit_received_at: datetime | None = None
    settle_coin_network_fee: Decimal | None = None
    network_fee_usd: Decimal | None = None
    issue: str | None = None
    deposits: tuple[Deposit, ...] = ()
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False, hash=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Shift:
        """Build from a shift object."""
        return cls(
            id=str(data["id"]),
            type=str(data["type"]),
            status=str(data["status"]),
            created_at=_time(data, "createdAt"),
            expires_at=_time(data, "expiresAt"),
            deposit_coin=str(data["depositCoin"]),
            deposit_network=str(data["depositNetwork"]),
            settle_coin=str(data["settleCoin"]),
            settle_network=str(data["settleNetwork"]),
            deposit_address=_opt_str(data, "depositAddress"),
            settle_address=str(data["settleAddress"]),
            deposit_min=_opt_dec(data, "depositMin"),
            deposit_max=_opt_dec(data, "depositMax"),
            average_shift_seconds=_opt_dec(data, "averageShiftSeconds"),
            updated_at=_opt_time(data, "updatedAt"),
            quote_id=_opt_str(data, "quoteId"),
            deposit_amount=_opt_dec(data, "depositAmount"),
            settle_amount=_opt_dec(data, "settleAmount"),
            rate=_opt_dec(data, "rate"),
            deposit_memo=_opt_str(data, "depositMemo"),
            settle_memo=_opt_str(data, "settleMemo"),
            refund_address=_opt_str(data, "refundAddress"),
            refund_memo=_opt_str(data, "refundMemo"),
            external_id=_opt_str(data, "externalId"),
            deposit_hash=_opt_str(data, "depositHash"),
            settle_hash=_opt_str(data, "settleHash"),
            deposit_received_at=_opt_time(data, "depositReceivedAt"),
            settle_coin_network_fee=_opt_dec(data, "settleCoinNetworkFee"),
            network_fee_usd=_opt_dec(data, "networkFeeUsd"),
            issue=_opt_str(data, "issue"),
            deposits=tuple(Deposit.from_json(d) for d in data.get("deposits") or ()),
            raw=_frozen(data),
        )

    @property
    def is_final(self) -> bool:
        """True when nothing will change any more (every deposit final, for ``multiple``)."""
        if self.status == ShiftStatus.MULTIPLE:
            return bool(self.deposits) and all(d.status in FINAL_STATUSES for d in self.deposits)
        return self.status in FINAL_STATUSES


@dataclass(frozen=True)
class CheckoutOrder:
    """One shift behind a checkout (``orders[0]`` is the latest)."""

    id: str
    deposits: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True)
class Checkout:
    """A SideShift Pay checkout; the customer pays at ``https://pay.sideshift.ai/checkout/{id}``."""

    id: str
    settle_coin: str
    settle_network: str
    settle_amount: Decimal
    settle_address: str
    affiliate_id: str
    success_url: str
    cancel_url: str
    created_at: datetime
    updated_at: datetime
    settle_memo: str | None = None
    orders: tuple[CheckoutOrder, ...] = ()

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Checkout:
        """Build from a checkout object (``orders`` only on ``GET /checkout/{id}``)."""
        return cls(
            id=str(data["id"]),
            settle_coin=str(data["settleCoin"]),
            settle_network=str(data["settleNetwork"]),
            settle_amount=_dec(data, "settleAmount"),
            settle_address=str(data["settleAddress"]),
            affiliate_id=str(data["affiliateId"]),
            success_url=str(data["successUrl"]),
            cancel_url=str(data["cancelUrl"]),
            created_at=_time(data, "createdAt"),
            updated_at=_time(data, "updatedAt"),
            settle_memo=_opt_str(data, "settleMemo"),
            orders=tuple(
                CheckoutOrder(str(o["id"]), tuple(_frozen(d) for d in o.get("deposits") or ()))
                for o in data.get("orders") or ()
            ),
        )


@dataclass(frozen=True)
class Account:
    """``POST /create-account``: ``secret`` (legacy scheme) or ``pub_key`` (Ed25519 scheme)."""

    id: str
    secret: str | None = None
    pub_key: str | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Account:
        """Build from the create-account answer."""
        return cls(id=str(data["id"]), secret=_opt_str(data, "secret"), pub_key=_opt_str(data, "pubKey"))


def coin_spec(coin: str, network: str | None = None) -> str:
    """The ``coin`` or ``coin-network`` form used in pair paths (``usdt-arbitrum``, ``eth-mainnet``)."""
    return coin.lower() if not network else f"{coin.lower()}-{network.lower()}"


def parse_list(items: Any, parse: Any) -> list[Any]:
    """Parse a JSON array with ``parse`` per item; a non-array is a ``TypeError``."""
    if not isinstance(items, Sequence) or isinstance(items, str | bytes):
        raise TypeError("expected a JSON array")
    return [parse(item) for item in items]
