"""Seed 000's crypto workflows as definitions, and the pure parts of price and swap steps."""

from __future__ import annotations

from decimal import Decimal
from importlib import resources

import pytest
import yaml

from shiftflow.kernel.definition import validate
from shiftflow.kernel.errors import DefinitionError
from shiftflow.kernel.seed000 import DEFAULT_CRON, active, convert
from shiftflow.kernel.steps import StepState, plan
from shiftflow.kernel.swap_spec import SwapInputError, SwapSpec, request_hash
from shiftflow.models.swaps.orders import external_id
from shiftflow.models.swaps.pricing import PriceInputError, PriceRequest, price_text

BTC = "bc1q" + "q" * 38
SEED = {
    "name": "ETH dip buyer",
    "description": "Dollar cost averaging",
    "status": "ACTIVE",
    "maxExecutions": 3,
    "conditions": [{"type": "price_threshold", "coinId": "ethereum", "operator": "below", "value": 3000}],
    "actions": [
        {
            "type": "sideshift_swap",
            "depositCoin": "eth",
            "settleCoin": "btc",
            "amount": "0.1",
            "settleAddress": BTC,
            "settleNetwork": "bitcoin",
        }
    ],
}


def test_the_seed_example_becomes_price_condition_swap():
    definition = convert(SEED)
    assert definition["max_executions"] == 3
    assert definition["trigger"] == {"type": "schedule", "cron": DEFAULT_CRON, "overlap": "skip"}
    steps = {s["id"]: s for s in definition["steps"]}
    assert [s["type"] for s in definition["steps"]] == ["price", "condition", "sideshift_swap"]
    assert steps["price_ethereum"]["with"] == {"coin": "ethereum", "vs_currency": "usd"}
    assert steps["conditions"]["with"] == {
        "left": "{{ steps.price_ethereum.output.price }}",
        "op": "below",
        "right": 3000,
    }
    assert steps["swap"]["with"] == {
        "deposit_coin": "eth",
        "settle_coin": "btc",
        "amount": "0.1",
        "settle_address": BTC,
        "settle_network": "bitcoin",
        "type": "fixed",
    }
    spec = SwapSpec.parse(steps["swap"]["with"])
    assert (spec.shift_type, spec.deposit_amount, spec.settle_coin) == ("fixed", Decimal("0.1"), "btc")
    assert active(SEED) and not active({**SEED, "status": "DRAFT"})


def test_the_converted_dag_swaps_only_when_the_condition_passes():
    definition = validate(convert(SEED))
    done = {"price_ethereum": StepState("SUCCEEDED", {"price": "2500"})}
    assert plan(definition, done).ready == ["conditions"]
    passed = plan(definition, {**done, "conditions": StepState("SUCCEEDED", {"passed": True})})
    failed = plan(definition, {**done, "conditions": StepState("SUCCEEDED", {"passed": False})})
    assert passed.ready == ["swap"]
    assert failed.skipped == ["swap"] and failed.finished


def test_several_conditions_share_price_steps_and_must_all_hold():
    seed = {
        **SEED,
        "conditions": [
            {"type": "price_threshold", "coinId": "ethereum", "operator": "below", "value": 3000},
            {"type": "price_threshold", "coinId": "ethereum", "operator": "above", "value": "1000.5"},
            {
                "type": "price_threshold",
                "coinId": "bitcoin",
                "operator": "gte",
                "value": 50000,
                "vsCurrency": "EUR",
            },
        ],
    }
    definition = convert(seed, cron=None, name="two coins")
    assert definition["trigger"] == {"type": "manual"} and definition["name"] == "two coins"
    prices = [s for s in definition["steps"] if s["type"] == "price"]
    assert [p["id"] for p in prices] == ["price_ethereum", "price_bitcoin_eur"]
    checks = definition["steps"][2]["with"]["all"]
    assert [c["op"] for c in checks] == ["below", "above", ">="]
    assert definition["steps"][2]["needs"] == ["price_ethereum", "price_bitcoin_eur"]


def test_no_conditions_swaps_unconditionally_and_actions_chain():
    seed = {
        "name": "always",
        "actions": [SEED["actions"][0], {**SEED["actions"][0], "shiftType": "variable", "amount": None}],
    }
    definition = convert(seed)
    assert [s["id"] for s in definition["steps"]] == ["swap", "swap_2"]
    assert (
        definition["steps"][1]["needs"] == ["swap"] and definition["steps"][1]["with"]["type"] == "variable"
    )
    assert "max_executions" not in definition


@pytest.mark.parametrize(
    ("seed", "message"),
    [
        (
            {**SEED, "actions": [{k: v for k, v in SEED["actions"][0].items() if k != "settleAddress"}]},
            "actions[0].settleAddress: required (or give a settle address",
        ),
        (
            {**SEED, "conditions": [{"type": "gas_price", "value": 3}]},
            "conditions[0].type: unsupported condition type",
        ),
        (
            {**SEED, "conditions": [{**SEED["conditions"][0], "operator": "roughly"}]},
            "conditions[0].operator",
        ),
        (
            {**SEED, "conditions": [{**SEED["conditions"][0], "value": True}]},
            "conditions[0].value: must be a number",
        ),
        (
            {**SEED, "actions": [{**SEED["actions"][0], "depositcoin": "eth"}]},
            "actions[0].depositcoin: unknown field",
        ),
        ({**SEED, "actions": [{"type": "send_email"}]}, "actions[0].type: unsupported action type"),
        ({**SEED, "actions": []}, "actions: must be a non-empty list"),
        ({**SEED, "maxExecutions": 0}, "maxExecutions: must be a whole number >= 1"),
        ({**SEED, "name": ""}, "name: required"),
    ],
)
def test_bad_seeds_name_the_field(seed, message):
    with pytest.raises(DefinitionError) as info:
        convert(seed)
    assert message in str(info.value)


def test_address_overrides_fill_the_actions():
    seed = {**SEED, "actions": [{k: v for k, v in SEED["actions"][0].items() if k != "settleAddress"}]}
    swap = convert(seed, settle_address=BTC, refund_address="0x" + "12" * 20, swap_type="variable")["steps"][
        -1
    ]
    assert swap["with"]["settle_address"] == BTC and swap["with"]["refund_address"] == "0x" + "12" * 20
    assert swap["with"]["type"] == "variable"


def test_the_dca_example_is_a_valid_definition():
    data = yaml.safe_load(resources.files("shiftflow.examples").joinpath("dca.yaml").read_text())
    definition = validate(data)
    assert [s.type for s in definition.steps] == ["price", "condition", "sideshift_swap"]
    assert (
        definition.step("swap").actor == "sideshift.order" and definition.step("price").actor == "tools.call"
    )
    assert data["max_executions"] == 10


# -- swap inputs ----------------------------------------------------------------------------------------


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


def test_external_ids_are_stable_short_and_distinct_per_rerun():
    assert external_id("e1", "swap", 0) == "e1:swap:0"
    assert external_id("e1", "swap", 2, generation=2) == "e1:swap:2/r2"
    long_step = "s" * 100
    ident = external_id("0" * 36, long_step, 7)
    assert len(ident) <= 100 and ident == external_id("0" * 36, long_step, 7) and ident.endswith(":7")


def test_price_inputs_and_decimal_text():
    assert PriceRequest.parse({"coin": " Ethereum ", "vs_currency": "USD"}) == PriceRequest("ethereum", "usd")
    with pytest.raises(PriceInputError, match="unknown input 'coinId'"):
        PriceRequest.parse({"coinId": "ethereum"})
    with pytest.raises(PriceInputError, match="'max_age_seconds'"):
        PriceRequest.parse({"coin": "ethereum", "max_age_seconds": -1})
    assert price_text(Decimal("2999.50")) == "2999.5" and price_text(3e-05) == "0.00003"
    assert price_text(Decimal("3000")) == "3000" and price_text(61234.5) == "61234.5"
