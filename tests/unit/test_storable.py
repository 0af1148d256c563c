"""``kernel.storable.unstorable``: the one check of what PostgreSQL ``jsonb`` and ``text``
columns can hold, used by the ingress, the management API and the models."""

from __future__ import annotations

import math
import sys
import uuid

import pytest

from shiftflow.kernel.storable import MAX_JSON_DEPTH, unstorable


class Text:
    """An object JSONField stores as its ``str``."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return self.text


def nested(depth: int) -> object:
    """``depth`` containers, one inside the other, around a number."""
    value: object = 1
    for n in range(depth):
        value = [value] if n % 2 else {"k": value}
    return value


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ({"x": math.inf}, "contains a number PostgreSQL cannot store (inf)"),
        ({"x": [-math.inf]}, "contains a number PostgreSQL cannot store (-inf)"),
        ({"x": math.nan}, "contains a number PostgreSQL cannot store (nan)"),
        ({"a": ["ok", "x\x00"]}, "contains \\u0000"),
        ({"x\x00": 1}, "contains \\u0000"),
        ("\ud800", "contains an unpaired UTF-16 surrogate"),
        ({"\udfff": 1}, "contains an unpaired UTF-16 surrogate"),
        ({1: "a"}, "contains a key that is not text"),
        ({"n": 10 ** (sys.get_int_max_str_digits() + 1)}, "contains an integer of more than"),
        ({"o": Text("a\x00")}, "contains \\u0000"),  # other objects are stored as their text
        (nested(MAX_JSON_DEPTH + 1), f"nests deeper than {MAX_JSON_DEPTH} levels"),
    ],
)
def test_what_cannot_be_stored_is_named(value: object, reason: str) -> None:
    problem = unstorable(value)
    assert problem is not None and problem.startswith(reason), problem


@pytest.mark.parametrize(
    "value",
    [
        {"k": 1},
        {"n": 10**4000, "m": -(2**200), "f": 1.7976931348623157e308, "tiny": 5e-324, "z": -0.0},
        {"s": "caf\u00e9 \U0001f600 \ufffe \uffff", "t": True, "u": None, "l": [1, "a", {"b": []}]},
        ("tuple", "is", "a", "list"),
        {"id": uuid.UUID(int=7), "t": Text("fine")},
        nested(MAX_JSON_DEPTH),
        "",
    ],
)
def test_storable_values_pass(value: object) -> None:
    assert unstorable(value) is None


def test_depth_is_a_parameter() -> None:
    assert unstorable(nested(5), max_depth=5) is None
    assert unstorable(nested(6), max_depth=5) == "nests deeper than 5 levels"
