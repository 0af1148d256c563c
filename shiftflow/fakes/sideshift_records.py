"""The fake SideShift's records (quote, shift, deposit) and their JSON as the API shows it.

Field names and formats follow docs/sideshift.md sections 3 and 4: amounts as decimal
strings, timestamps with milliseconds and ``Z``, optional fields omitted when unknown.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from random import Random
from typing import Any

from shiftflow.fakes.sideshift_behaviour import DEFAULT_COMMISSION
from shiftflow.fakes.sideshift_catalog import fmt, iso

#: Deposit addresses are recycled after 60 days, 40 for EVM token addresses (docs/sideshift.md section 4).
ADDRESS_LIFETIME = timedelta(days=60)
EVM_TOKEN_ADDRESS_LIFETIME = timedelta(days=40)


@dataclass
class Timings:
    """Fake seconds each lifecycle step takes."""

    confirm: float = 120.0  # pending -> processing (one confirmation)
    process: float = 30.0  # processing -> settling
    settle: float = 60.0  # settling -> settled
    refund_start: float = 10.0  # refund -> refunding, once a refund address is known
    refund_confirm: float = 60.0  # refunding -> refunded


#: Where each status goes next (``pending`` depends on the deposit's problem).
_NEXT = {"processing": "settling", "settling": "settled", "refund": "refunding", "refunding": "refunded"}


@dataclass
class FakeQuote:
    """A quote; ``used_by`` is the first shift id that redeemed it; ``commission`` a fraction."""

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
    used_by: str | None = None
    commission: Decimal = DEFAULT_COMMISSION

    def to_json(self) -> dict[str, Any]:
        """The quote as ``POST /quotes`` answers it."""
        return {
            "id": self.id,
            "createdAt": iso(self.created_at),
            "depositCoin": self.deposit_coin,
            "settleCoin": self.settle_coin,
            "depositNetwork": self.deposit_network,
            "settleNetwork": self.settle_network,
            "expiresAt": iso(self.expires_at),
            "depositAmount": fmt(self.deposit_amount),
            "settleAmount": fmt(self.settle_amount),
            "rate": fmt(self.rate),
            "affiliateId": self.affiliate_id,
        }


@dataclass
class FakeDeposit:
    """One deposit to a shift; ``problem`` ("refund"/"review") decides where it goes after pending."""

    amount: Decimal
    received_at: datetime
    tx_hash: str
    status: str
    next_at: datetime | None
    updated_at: datetime
    problem: str | None = None
    issue: str | None = None
    rate: Decimal | None = None
    settle_amount: Decimal | None = None
    settle_hash: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The deposit as an item of ``deposits[]``."""
        data: dict[str, Any] = {
            "updatedAt": iso(self.updated_at),
            "depositHash": self.tx_hash,
            "depositReceivedAt": iso(self.received_at),
            "depositAmount": fmt(self.amount),
            "status": self.status,
        }
        _put(data, settleHash=self.settle_hash, issue=self.issue)
        if self.problem is None and self.rate is not None:
            data["rate"] = fmt(self.rate)
        if self.problem is None and self.settle_amount is not None:
            data["settleAmount"] = fmt(self.settle_amount)
        return data


@dataclass
class FakeShift:
    """A fixed or variable shift; its status derives from ``expired`` and ``deposits``."""

    id: str
    type: str
    created_at: datetime
    expires_at: datetime
    deposit_coin: str
    deposit_network: str
    settle_coin: str
    settle_network: str
    deposit_address: str
    settle_address: str
    deposit_min: Decimal | None
    deposit_max: Decimal | None
    ip_key: str
    evm_token: bool = False
    quote_id: str | None = None
    deposit_amount: Decimal | None = None
    settle_amount: Decimal | None = None
    rate: Decimal | None = None
    deposit_memo: str | None = None
    settle_memo: str | None = None
    refund_address: str | None = None
    refund_memo: str | None = None
    external_id: str | None = None
    settle_coin_network_fee: Decimal | None = None
    network_fee_usd: Decimal | None = None
    updated_at: datetime | None = None
    expired: bool = False
    deposits: list[FakeDeposit] = field(default_factory=list)
    commission: Decimal = DEFAULT_COMMISSION  # variable shifts: applied to the rate at deposit

    @property
    def status(self) -> str:
        """waiting/expired without deposits, the deposit's status with one, else ``multiple``."""
        if not self.deposits:
            return "expired" if self.expired else "waiting"
        return self.deposits[0].status if len(self.deposits) == 1 else "multiple"

    def classify(self, amount: Decimal) -> tuple[str | None, str | None]:
        """Where a new deposit of ``amount`` goes after ``pending``: ``(problem, issue)``.

        Fixed: exactly ``deposit_amount``, once, before expiry, else refund. Variable:
        below the minimum is refunded, above the maximum goes to review.
        """
        if self.expired:
            return "refund", "deposit after expiry"
        if self.type == "fixed":
            if self.deposits:
                return "refund", "multiple deposits"
            if amount != self.deposit_amount:
                return "refund", "incorrect amount"
            return None, None
        if self.deposit_min is not None and amount < self.deposit_min:
            return "refund", "amount too low"
        if self.deposit_max is not None and amount > self.deposit_max:
            return "review", "amount too high"
        return None, None

    def advance_to(self, now: datetime, timings: Timings, rng: Random) -> None:
        """Apply the status changes due by ``now``, each at the moment it fell due."""
        if not self.deposits and not self.expired and now >= self.expires_at:
            self.expired, self.updated_at = True, self.expires_at
        for dep in self.deposits:
            while dep.next_at is not None and dep.next_at <= now:
                if dep.status == "pending":
                    status = {"refund": "refund", "review": "review"}.get(dep.problem or "", "processing")
                else:
                    status = _NEXT.get(dep.status, "")
                if not status:
                    dep.next_at = None
                    break
                self.move(dep, status, dep.next_at, timings, rng)

    def move(self, dep: FakeDeposit, status: str, at: datetime, timings: Timings, rng: Random) -> None:
        """Put ``dep`` in ``status`` at ``at`` and schedule its next step."""
        dep.status, dep.updated_at, self.updated_at = status, at, at
        delay: float | None = {
            "processing": timings.process,
            "settling": timings.settle,
            "refunding": timings.refund_confirm,
        }.get(status)
        if status == "settling":
            dep.settle_hash = rng.getrandbits(256).to_bytes(32, "big").hex()
        if status == "refund":
            # A refund only starts once SideShift knows where to send it.
            delay = timings.refund_start if self.refund_address else None
        dep.next_at = None if delay is None else at + timedelta(seconds=delay)

    def start_refunds(self, now: datetime, timings: Timings) -> None:
        """Start the refunds that were waiting for a refund address."""
        for dep in self.deposits:
            if dep.status == "refund" and dep.next_at is None:
                dep.next_at = now + timedelta(seconds=timings.refund_start)

    def to_json(self, now: datetime) -> dict[str, Any]:
        """The shift as ``GET /shifts/{id}`` shows it at ``now``."""
        lifetime = EVM_TOKEN_ADDRESS_LIFETIME if self.evm_token else ADDRESS_LIFETIME
        data: dict[str, Any] = {
            "id": self.id,
            "createdAt": iso(self.created_at),
            "depositCoin": self.deposit_coin,
            "settleCoin": self.settle_coin,
            "depositNetwork": self.deposit_network,
            "settleNetwork": self.settle_network,
            "depositAddress": None if now - self.created_at >= lifetime else self.deposit_address,
            "settleAddress": self.settle_address,
            "depositMin": None if self.deposit_min is None else fmt(self.deposit_min),
            "depositMax": None if self.deposit_max is None else fmt(self.deposit_max),
            "type": self.type,
            "expiresAt": iso(self.expires_at),
            "status": self.status,
            "averageShiftSeconds": "44.5",
        }
        _put(
            data,
            quoteId=self.quote_id,
            depositMemo=self.deposit_memo,
            settleMemo=self.settle_memo,
            refundAddress=self.refund_address,
            refundMemo=self.refund_memo,
            externalId=self.external_id,
            updatedAt=None if self.updated_at is None else iso(self.updated_at),
        )
        if self.type == "fixed":
            _put(data, depositAmount=_text(self.deposit_amount), settleAmount=_text(self.settle_amount))
            _put(data, rate=_text(self.rate))
        else:
            _put(
                data,
                settleCoinNetworkFee=_text(self.settle_coin_network_fee),
                networkFeeUsd=_text(self.network_fee_usd),
            )
        if self.deposits:
            first = self.deposits[0]
            first_json = first.to_json()
            data["depositHash"] = first.tx_hash
            data["depositReceivedAt"] = iso(first.received_at)
            if self.type == "variable":
                data["depositAmount"] = fmt(first.amount)
                _put(data, settleAmount=first_json.get("settleAmount"), rate=first_json.get("rate"))
            _put(data, settleHash=first.settle_hash, issue=first.issue)
        if len(self.deposits) > 1:
            data["deposits"] = [dep.to_json() for dep in self.deposits]
        return data


def _text(value: Decimal | None) -> str | None:
    return None if value is None else fmt(value)


def _put(data: dict[str, Any], **optional: Any) -> None:
    data.update({key: value for key, value in optional.items() if value is not None})
