"""Model prices (Decimal, six places, half up), the override file, and daily budgets."""

from __future__ import annotations

from decimal import Decimal

import pytest

from shiftflow.kernel.errors import PermanentError, SettingsError
from shiftflow.kernel.llm import (
    BudgetExceeded,
    LlmRequest,
    Message,
    ModelPrice,
    PriceTable,
    ResponseFormat,
    Tool,
    UnknownModelPrice,
    budget_allows,
    check_budget,
    cost,
    estimate_cost,
    estimate_input_tokens,
    load_prices,
    price_table,
    shipped_prices,
)
from shiftflow.kernel.settings import Settings


def test_cost_is_decimal_with_six_places():
    price = ModelPrice(Decimal("2.50"), Decimal("10.00"))
    out = price.cost(1_000, 500)
    assert out == Decimal("0.007500") and isinstance(out, Decimal)
    assert out.as_tuple().exponent == -6
    assert price.cost(0, 0) == Decimal("0.000000")
    # 123,457 input tokens of a model at 3 USD/M and 9,876 output at 15 USD/M:
    assert ModelPrice(Decimal(3), Decimal(15)).cost(123_457, 9_876) == Decimal("0.518511")


def test_rounding_is_half_up_at_the_sixth_place():
    price = ModelPrice(Decimal("0.5"), Decimal("0"))
    assert price.cost(1, 0) == Decimal("0.000001")  # 0.0000005 -> up
    assert ModelPrice(Decimal("0.49"), Decimal(0)).cost(1, 0) == Decimal("0.000000")  # 0.00000049 -> down
    assert ModelPrice(Decimal("0.15"), Decimal("0.60")).cost(3, 1) == Decimal("0.000001")  # 0.00000105
    # No float anywhere: a sum that float gets wrong (0.1 + 0.2) is exact.
    assert ModelPrice(Decimal("0.1"), Decimal("0.2")).cost(1_000_000, 1_000_000) == Decimal("0.300000")


@pytest.mark.parametrize("count", [-1, 1.5, True, "3"])
def test_token_counts_must_be_whole_numbers(count):
    with pytest.raises(ValueError, match="tokens_in"):
        ModelPrice(Decimal(1), Decimal(1)).cost(count, 0)


def test_shipped_table_finds_dated_snapshots_and_refuses_unknown_models():
    table = shipped_prices()
    assert table.price("gpt-4o") == ModelPrice(Decimal("2.50"), Decimal("10.00"))
    assert table.price("gpt-4o-2024-08-06") == table.price("gpt-4o")
    assert table.price("claude-3-5-haiku-20241022") == table.price("claude-3-5-haiku")
    assert table.price("GPT-4o-mini") == ModelPrice(Decimal("0.15"), Decimal("0.60"))
    assert table.lookup("gpt-4o-audio-preview") is None  # a suffix that is no date is another model
    with pytest.raises(UnknownModelPrice, match="'mystery-model' has no price.*SHIFTFLOW_LLM_PRICES_FILE") as caught:
        table.cost("mystery-model", 1, 1)
    assert isinstance(caught.value, PermanentError)
    # The model answered first, the model asked second:
    assert table.cost("some-alias-snapshot", 1_000_000, 0, asked="gpt-4o-mini") == Decimal("0.150000")
    assert cost("fake-echo", 1_000_000, 1_000_000, table=table) == Decimal("3.000000")


def test_an_override_file_replaces_adds_and_sets_a_default(tmp_path):
    path = tmp_path / "prices.yaml"
    path.write_text(
        "models:\n"
        "  gpt-4o: {input: '2.000000', output: 8}\n"
        "  my-finetune: {input: 0.3, output: '1.2'}\n"
        "default: {input: '5', output: '15'}\n"
    )
    table = PriceTable.from_file(path, shipped_prices())
    assert table.price("gpt-4o") == ModelPrice(Decimal("2.000000"), Decimal("8"))
    assert table.price("my-finetune") == ModelPrice(Decimal("0.3"), Decimal("1.2"))
    assert table.price("claude-haiku-4-5") == shipped_prices().price("claude-haiku-4-5")  # inherited
    assert table.cost("unheard-of", 1_000_000, 0) == Decimal("5.000000")  # the default
    assert table.sources == (str(shipped_prices().sources[0]), str(path))


def test_inherit_false_drops_the_shipped_models(tmp_path):
    path = tmp_path / "prices.yaml"
    path.write_text("inherit: false\nmodels:\n  only-this: {input: '1', output: '1'}\n")
    table = PriceTable.from_file(path, shipped_prices())
    assert table.knows("only-this") and not table.knows("gpt-4o")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("models:\n  m: {input: '1.0000001', output: '1'}\n", "models.m.input: '1.0000001' has more than six decimal places"),
        ("models:\n  m: {input: '-1', output: '1'}\n", "models.m.input"),
        ("models:\n  m: {input: 'abc', output: '1'}\n", "models.m.input: 'abc' is not a decimal number"),
        ("models:\n  m: {input: '1'}\n", "models.m: expected"),
        ("models:\n  m: {input: .nan, output: '1'}\n", "models.m.input"),
        ("models: [1, 2]\n", "models must map"),
        ("pricing: {}\n", "unknown key 'pricing'"),
        ("inherit: maybe\n", "inherit must be true or false"),
        ("default: {input: '1', output: true}\n", "default.output"),
        ("models: {m: [\n", "not YAML"),
    ],
)
def test_a_malformed_prices_file_names_the_entry(tmp_path, text, message):
    path = tmp_path / "prices.yaml"
    path.write_text(text)
    with pytest.raises(SettingsError, match="prices") as caught:
        PriceTable.from_file(path, shipped_prices())
    assert message in str(caught.value) and str(path) in str(caught.value)


def test_settings_name_the_prices_file(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("models:\n  house-model: {input: '1', output: '2'}\n")
    settings = Settings.from_env({"SHIFTFLOW_MODE": "dev", "SHIFTFLOW_LLM_PRICES_FILE": str(path)})
    assert settings.llm_prices_file == str(path)
    assert price_table(settings).cost("house-model", 1_000_000, 1_000_000) == Decimal("3.000000")
    assert price_table(Settings.from_env({"SHIFTFLOW_MODE": "dev"})) is shipped_prices()
    load_prices.cache_clear()
    with pytest.raises(SettingsError, match="missing.yaml"):
        load_prices(str(tmp_path / "missing.yaml"))


def test_settings_llm_timeout():
    assert Settings.from_env({"SHIFTFLOW_MODE": "dev"}).llm_timeout_seconds == 120.0
    assert Settings.from_env({"SHIFTFLOW_MODE": "dev", "SHIFTFLOW_LLM_TIMEOUT_SECONDS": "30"}).llm_timeout_seconds == 30
    with pytest.raises(SettingsError, match="SHIFTFLOW_LLM_TIMEOUT_SECONDS"):
        Settings.from_env({"SHIFTFLOW_MODE": "dev", "SHIFTFLOW_LLM_TIMEOUT_SECONDS": "0"})


# ---------------------------------------------------------------------- budgets


def test_budget_allows_up_to_the_limit_inclusive():
    assert budget_allows(Decimal("4.000000"), Decimal("1.000000"), Decimal("5"))
    assert not budget_allows(Decimal("4.000000"), Decimal("1.000001"), Decimal("5"))
    assert budget_allows(Decimal("1000"), Decimal("1000"), None)  # no budget, no limit
    assert not budget_allows(Decimal(0), Decimal("0.000001"), Decimal(0))
    assert budget_allows(Decimal(0), Decimal(0), Decimal(0))


@pytest.mark.parametrize(
    ("spent", "estimate", "budget", "error"),
    [(0.5, Decimal(1), Decimal(1), TypeError), (Decimal(1), Decimal(-1), Decimal(1), ValueError),
     (Decimal(1), Decimal(1), Decimal("NaN"), ValueError), (Decimal(1), Decimal(1), 2.0, TypeError)],
)
def test_money_is_decimal_and_never_negative(spent, estimate, budget, error):
    with pytest.raises(error):
        budget_allows(spent, estimate, budget)


def test_check_budget_names_the_limit_what_was_spent_and_the_estimate():
    check_budget(Decimal("1"), Decimal("1"), Decimal("2"), workspace="acme")  # fits: nothing raised
    with pytest.raises(BudgetExceeded) as caught:
        check_budget(Decimal("4.99"), Decimal("0.02"), Decimal("5"), workspace="acme")
    exc = caught.value
    assert isinstance(exc, PermanentError)
    assert str(exc) == (
        "daily LLM budget of workspace 'acme' is 5.000000 USD: 4.990000 USD spent today (UTC) and this call "
        "may cost up to 0.020000 USD; the budget resets at 00:00 UTC"
    )
    assert (exc.budget, exc.spent, exc.estimate, exc.workspace) == (Decimal(5), Decimal("4.99"), Decimal("0.02"), "acme")


def test_the_estimate_counts_the_input_and_all_of_max_tokens():
    request = LlmRequest(
        model="gpt-4o",
        system="x" * 40,
        messages=(Message.user("y" * 400),),
        max_tokens=1000,
        tools=(Tool("t", "d" * 19, {"type": "object"}),),
        response_format=ResponseFormat.json_schema({"type": "object"}),
    )
    # 40 + 400 + 1 + 19 + 18 + 18 ('{"type": "object"}' twice) = 496 chars / 4 = 124, plus 4 per
    # message and 4 for the system: 132.
    assert estimate_input_tokens(request) == 132
    assert estimate_cost(request, shipped_prices()) == Decimal("0.010330")  # 132*2.5/M + 1000*10/M
    with pytest.raises(UnknownModelPrice):
        estimate_cost(LlmRequest(model="mystery", messages=(Message.user("x"),)), shipped_prices())
