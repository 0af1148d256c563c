"""``parse_budget``: USD as a decimal string, a number or None; six places; refusals name the field."""

from __future__ import annotations

from decimal import Decimal

import pytest

from shiftflow.models.manage.llm_budget import parse_budget
from shiftflow.models.manage.problems import InvalidInput


@pytest.mark.parametrize(("value", "expected"), [
    ("5", Decimal("5.000000")), (" 0.25 ", Decimal("0.250000")), (0, Decimal("0.000000")),
    (1.5, Decimal("1.500000")), ("0.000001", Decimal("0.000001")), (Decimal("2"), Decimal("2.000000")),
    (None, None),
])
def test_an_amount_is_kept_to_six_places(value, expected):
    assert parse_budget(value) == expected


@pytest.mark.parametrize(("value", "why"), [
    ("-0.01", "negative"), ("abc", "not a number"), ("NaN", "not a number"), ("Infinity", "not a number"),
    ("0.0000001", "six decimal places"), (1e-7, "six decimal places"), (True, "decimal string"),
    ([1], "decimal string"), ("1000000", "at most"),
])
def test_a_bad_amount_is_refused_naming_the_field(value, why):
    with pytest.raises(InvalidInput) as refused:
        parse_budget(value)
    assert refused.value.field == "llm_daily_budget_usd" and why in str(refused.value)
