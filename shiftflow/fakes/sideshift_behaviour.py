"""The fake SideShift's answers where SideShift's documentation is silent.

Where the documentation is strict the fake is strict, always (``docs/sideshift.md``).
Where it says nothing, the fake must not quietly pick the answer that suits our client:
each open point is a field of ``FakeBehaviour`` and the tests run the client against
both answers (``docs/sideshift.md`` section 12 lists them).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from decimal import Decimal, InvalidOperation
from typing import Any

#: SideShift's default affiliate commission (0.5 %), as a fraction.
DEFAULT_COMMISSION = Decimal("0.005")
#: The documented maximum commission (2 %), as a fraction.
MAX_COMMISSION = Decimal("0.02")

_CHOICES: Mapping[str, tuple[Any, ...]] = {
    "reused_quote": ("refuse", "accept"),
    "unknown_shift_status": (404, 400),
    "malformed_shift_id_status": (404, 400),
    "retry_after_header": (True, False),
    "excess_decimals": ("refuse", "round"),
    "commission_format": ("fraction", "percent"),
}


@dataclass(frozen=True)
class FakeBehaviour:
    """The fake's choice on each point SideShift leaves open.

    Parameters:
        reused_quote: a second fixed shift from a quote that already backs one:
            ``refuse`` (400 ``Quote has already been used``) or ``accept`` (a second shift).
        unknown_shift_status: the status for a well-formed shift id the fake does not
            know (404 ``Shift not found``, or 400 ``Bad request: Invalid parameters: shiftId``).
        malformed_shift_id_status: the same for an id that is not 20 lower-case hex.
        retry_after_header: a 429 carries ``Retry-After`` (seconds until a slot frees).
        excess_decimals: an amount with more decimals than the coin has on that network:
            ``refuse`` (400 naming the field) or ``round`` (down to the coin's decimals).
        commission_format: how ``commissionRate`` is read: ``fraction`` (``"0.005"`` is
            0.5 %) or ``percent`` (``"0.5"`` is 0.5 %).

    Raises:
        ValueError: a value that is not one of the choices above.
    """

    reused_quote: str = "refuse"
    unknown_shift_status: int = 404
    malformed_shift_id_status: int = 400
    retry_after_header: bool = True
    excess_decimals: str = "refuse"
    commission_format: str = "fraction"

    def __post_init__(self) -> None:
        for name, choices in _CHOICES.items():
            value = getattr(self, name)
            if value not in choices or type(value) is not type(choices[0]):
                raise ValueError(
                    f"FakeBehaviour.{name} must be one of {', '.join(map(repr, choices))}, got {value!r}"
                )

    def to_json(self) -> dict[str, Any]:
        """The choices as plain data (``GET /_fake/behaviour``)."""
        return asdict(self)

    def updated(self, changes: Mapping[str, Any]) -> FakeBehaviour:
        """A copy with ``changes`` applied (``POST /_fake/behaviour``).

        Raises:
            ValueError: an unknown field or a value outside its choices.
        """
        names = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise ValueError(f"unknown FakeBehaviour field {unknown[0]!r} (known: {', '.join(sorted(names))})")
        return replace(self, **changes)

    def commission(self, value: Any) -> Decimal | None:
        """A ``commissionRate`` as a fraction, or None when it is malformed or out of range.

        Parameters:
            value: the body field (string, or a number decoded as Decimal) or query value;
                None means absent, which is SideShift's default.
        """
        if value is None:
            return DEFAULT_COMMISSION
        if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
            return None
        try:
            number = Decimal(value.strip() if isinstance(value, str) else value)
        except InvalidOperation:
            return None
        if not number.is_finite():
            return None
        fraction = number / 100 if self.commission_format == "percent" else number
        return fraction if Decimal(0) <= fraction <= MAX_COMMISSION else None


__all__ = ["DEFAULT_COMMISSION", "MAX_COMMISSION", "FakeBehaviour"]
