"""``kernel.swap_spec``: a swap step's inputs parse to exact decimals, and bad inputs name the field."""

from __future__ import annotations

from decimal import Decimal

import pytest

from shiftflow.kernel.swap_spec import SwapInputError, SwapSpec, request_hash

BTC = "bc1q" + "q" * 38

GOOD = {"deposit_coin": "ETH", "settle_coin": "btc", "amount": "0.1", "settle_address": BTC}


def test_swap_inputs_parse_to_exact_decimals():
    spec = SwapSpec.parse({**GOOD, "amount": 0.1, "deposit_network": "ethereum"})
    assert spec.deposit_coin == "eth" and spec.deposit_amount == Decimal("0.1") and spec.shift_type == "fixed"
    assert spec.canonical()["deposit_amount"] == "0.1"
    assert SwapSpec.parse({**GOOD, "amount": None, "settle_amount": "0.005"}).settle_amount == Decimal(
        "0.005"
    )
    variable = SwapSpec.parse({**GOOD, "type": "variable", "amount": None})
    assert variable.deposit_amount is None and variable.shift_type == "variable"
    assert request_hash(spec) == request_hash(SwapSpec.parse({**GOOD, "deposit_network": "ethereum"}))
    assert request_hash(spec) != request_hash(SwapSpec.parse({**GOOD, "amount": "0.2"}))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"settle_address": None}, "'settle_address' is required"),
        ({"amount": "-1"}, "'amount' must be greater than zero"),
        ({"amount": "lots"}, "'amount' must be a decimal amount"),
        ({"amount": None}, "exactly one of 'amount'"),
        ({"settle_amount": "1"}, "exactly one of 'amount'"),
        ({"deposit_amount": "1"}, "not both"),
        ({"type": "variable", "settle_amount": "1", "amount": None}, "takes no 'settle_amount'"),
        ({"type": "limit"}, "'type' must be fixed or variable"),
        ({"deposit_coin": "e t h"}, "'deposit_coin' must be a coin ticker"),
        ({"settle_network": "Bit Coin"}, "'settle_network' must be a network id"),
        ({"settle_address": "bc1q with space"}, "'settle_address' must be a string"),
        ({"settle_adress": BTC}, "unknown input 'settle_adress'"),
    ],
)
def test_bad_swap_inputs_name_the_field(change, message):
    with pytest.raises(SwapInputError) as info:
        SwapSpec.parse({**GOOD, **change})
    assert message in str(info.value)
