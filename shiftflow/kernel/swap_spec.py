"""The inputs of a ``sideshift_swap`` step, validated, and their canonical form.

Pure (no I/O): the handler parses the rendered ``with:`` block before any order exists, so
a bad input fails the step with a message naming the field and never reaches SideShift.
The canonical form is hashed into the side-effect ledger: a redelivery whose request
differs from the recorded intent is refused rather than sent.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from shiftflow.kernel.errors import PermanentError
from shiftflow.kernel.sideshift import decimal_text

_COIN = re.compile(r"^[A-Za-z0-9]{1,20}$")
_NETWORK = re.compile(r"^[a-z0-9-]{1,40}$")
_INPUTS = frozenset(
    {
        "type",
        "deposit_coin",
        "deposit_network",
        "settle_coin",
        "settle_network",
        "amount",
        "deposit_amount",
        "settle_amount",
        "settle_address",
        "settle_memo",
        "refund_address",
        "refund_memo",
    }
)


class SwapInputError(PermanentError):
    """Raised when a swap step's inputs are missing or malformed (the message names the field)."""


# -- inputs ---------------------------------------------------------------------------


def _amount(value: Any, name: str) -> Decimal | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float | Decimal):
        raise SwapInputError(f'swap step: {name!r} must be a decimal amount such as "0.1", got {value!r}')
    try:
        # A float comes from a JSON number; its shortest repr is the number that was written.
        number = Decimal(repr(value)) if isinstance(value, float) else Decimal(str(value).strip())
    except InvalidOperation:
        raise SwapInputError(f"swap step: {name!r} must be a decimal amount, got {value!r}") from None
    if not number.is_finite() or number <= 0:
        raise SwapInputError(f"swap step: {name!r} must be greater than zero, got {value!r}")
    return number


def _text(inputs: dict[str, Any], name: str, *, required: bool = False, limit: int = 200) -> str | None:
    value = inputs.get(name)
    if value is None or value == "":
        if required:
            raise SwapInputError(f"swap step: {name!r} is required")
        return None
    if not isinstance(value, str) or len(value) > limit or any(c.isspace() for c in value):
        raise SwapInputError(
            f"swap step: {name!r} must be a string of at most {limit} characters without spaces"
        )
    return value


@dataclass(frozen=True)
class SwapSpec:
    """A validated ``sideshift_swap`` step input.

    ``type`` is ``fixed`` (quote, then a fixed shift: send exactly the quoted deposit) or
    ``variable`` (a variable shift; any amount within the pair's range, rate at deposit).
    A fixed swap needs exactly one of ``amount``/``deposit_amount`` (the deposit) and
    ``settle_amount``; a variable swap may give the deposit it intends, for the record.
    """

    shift_type: str
    deposit_coin: str
    settle_coin: str
    settle_address: str
    deposit_network: str | None = None
    settle_network: str | None = None
    deposit_amount: Decimal | None = None
    settle_amount: Decimal | None = None
    settle_memo: str | None = None
    refund_address: str | None = None
    refund_memo: str | None = None

    @classmethod
    def parse(cls, inputs: Any) -> SwapSpec:
        """Validate a rendered ``with:`` block.

        Raises:
            SwapInputError: the first problem, naming the field.
        """
        if not isinstance(inputs, dict):
            raise SwapInputError("swap step: 'with' must be an object")
        unknown = sorted(set(inputs) - _INPUTS)
        if unknown:
            raise SwapInputError(
                f"swap step: unknown input {unknown[0]!r} (expected {', '.join(sorted(_INPUTS))})"
            )
        kind = inputs.get("type", "fixed")
        if kind not in ("fixed", "variable"):
            raise SwapInputError(f"swap step: 'type' must be fixed or variable, got {kind!r}")
        coins = {}
        for name in ("deposit_coin", "settle_coin"):
            value = inputs.get(name)
            if not isinstance(value, str) or not _COIN.match(value):
                raise SwapInputError(
                    f"swap step: {name!r} must be a coin ticker such as 'eth', got {value!r}"
                )
            coins[name] = value.lower()
        networks = {}
        for name in ("deposit_network", "settle_network"):
            value = inputs.get(name)
            if value not in (None, "") and (not isinstance(value, str) or not _NETWORK.match(value)):
                raise SwapInputError(
                    f"swap step: {name!r} must be a network id such as 'ethereum', got {value!r}"
                )
            networks[name] = value or None
        if inputs.get("amount") not in (None, "") and inputs.get("deposit_amount") not in (None, ""):
            raise SwapInputError("swap step: give 'amount' or 'deposit_amount', not both")
        deposit = _amount(inputs.get("amount", inputs.get("deposit_amount")), "amount")
        settle = _amount(inputs.get("settle_amount"), "settle_amount")
        if kind == "fixed" and (deposit is None) == (settle is None):
            raise SwapInputError(
                "swap step: a fixed swap needs exactly one of 'amount' (deposit) and 'settle_amount'"
            )
        if kind == "variable" and settle is not None:
            raise SwapInputError(
                "swap step: a variable swap takes no 'settle_amount' (its rate is set at deposit)"
            )
        address = _text(inputs, "settle_address", required=True)
        assert address is not None
        return cls(
            kind,
            coins["deposit_coin"],
            coins["settle_coin"],
            address,
            networks["deposit_network"],
            networks["settle_network"],
            deposit,
            settle,
            _text(inputs, "settle_memo", limit=100),
            _text(inputs, "refund_address"),
            _text(inputs, "refund_memo", limit=100),
        )

    def canonical(self) -> dict[str, Any]:
        """The request as plain data (amounts as decimal strings), hashed into the ledger."""
        return {k: (decimal_text(v) if isinstance(v, Decimal) else v) for k, v in asdict(self).items()}


def request_hash(spec: SwapSpec) -> str:
    """SHA-256 of the canonical request (``SideEffect.request_hash``)."""
    text = repr(sorted(spec.canonical().items()))
    return hashlib.sha256(text.encode()).hexdigest()


__all__ = ["SwapInputError", "SwapSpec", "request_hash"]
