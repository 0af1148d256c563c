"""``kernel.bson_guard``: log documents BSON cannot encode do not stop the MongoDB writer (``kernel.mongo``)."""

from __future__ import annotations

from shiftflow.kernel.bson_guard import ints_as_text


def test_integers_beyond_64_bits_become_text_for_bson() -> None:
    document = {"a": [2**63, -(2**63) - 1, 2**63 - 1, True], "b": {"c": 10**40}, "d": 1.5}
    assert ints_as_text(document) == {"a": [str(2**63), str(-(2**63) - 1), 2**63 - 1, True],
                                    "b": {"c": str(10**40)}, "d": 1.5}
