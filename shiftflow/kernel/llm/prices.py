"""What an LLM call costs: a per-model price table, in USD per million tokens.

The table ships with ShiftFlow (``prices.yaml`` beside this module) and is overridden or
extended by ``SHIFTFLOW_LLM_PRICES_FILE``: a YAML file of the same shape, whose models
replace or add to the shipped ones (``inherit: false`` drops the shipped ones), and
which may set a ``default`` price for models in no table::

    models:
      my-finetune: {input: "0.30", output: "1.20"}
    default: {input: "5.00", output: "15.00"}   # optional; without it, unknown models are refused

An unknown model is an error by default (``UnknownModelPrice``), not a zero cost: a call
whose cost cannot be counted cannot be held to a budget either.

Money is ``Decimal`` throughout, never float: prices have at most six decimal places and
a cost is quantized to six places, half up (``0.0000005`` -> ``0.000001``), which is what
``llm_call.cost_usd`` (NUMERIC(10,6)) holds.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml

from shiftflow.kernel.errors import SettingsError
from shiftflow.kernel.llm.errors import UnknownModelPrice
from shiftflow.kernel.settings import Settings, get_settings

#: The table that ships with ShiftFlow.
SHIPPED_PRICES = Path(__file__).with_name("prices.yaml")
#: Six decimal places: the unit of every cost.
MICRO = Decimal("0.000001")
_MILLION = Decimal(1_000_000)
_MAX_PRICE = Decimal(1_000_000)
_SUFFIX = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{8}|latest)$")


@dataclass(frozen=True)
class ModelPrice:
    """USD per million input tokens and per million output tokens."""

    input: Decimal
    output: Decimal

    def cost(self, tokens_in: int, tokens_out: int) -> Decimal:
        """The cost of a call, quantized to six places (half up).

        Raises:
            ValueError: a token count that is not a whole number of at least 0.
        """
        for name, count in (("tokens_in", tokens_in), ("tokens_out", tokens_out)):
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise ValueError(f"{name}: {count!r} is not a whole number of at least 0")
        exact = (self.input * tokens_in + self.output * tokens_out) / _MILLION
        return exact.quantize(MICRO, rounding=ROUND_HALF_UP)


def _price(value: Any, where: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise SettingsError(f"{where}: expected a decimal number such as \"2.50\"")
    try:
        price = Decimal(str(value).strip())
    except InvalidOperation:
        raise SettingsError(f"{where}: {value!r} is not a decimal number") from None
    if not price.is_finite() or price < 0 or price > _MAX_PRICE:
        raise SettingsError(f"{where}: {value!r} is not a price from 0 to {_MAX_PRICE}")
    exponent = price.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -6:
        raise SettingsError(f"{where}: {value!r} has more than six decimal places")
    return price


def _model_price(value: Any, where: str) -> ModelPrice:
    if not isinstance(value, Mapping) or set(value) != {"input", "output"}:
        raise SettingsError(f"{where}: expected {{input: \"...\", output: \"...\"}} (USD per million tokens)")
    return ModelPrice(_price(value["input"], f"{where}.input"), _price(value["output"], f"{where}.output"))


class PriceTable:
    """Prices by model name, with an optional default for models in no table.

    Parameters:
        models: model name -> price (names are matched lower-case).
        default: the price of a model in no table; None refuses such models.
        sources: where the prices came from (named in errors).
    """

    def __init__(
        self, models: Mapping[str, ModelPrice], *, default: ModelPrice | None = None, sources: tuple[str, ...] = ()
    ) -> None:
        self.models = {name.lower(): price for name, price in models.items()}
        self.default = default
        self.sources = sources

    @classmethod
    def parse(cls, data: Any, source: str, base: PriceTable | None = None) -> PriceTable:
        """A table from a prices document (see the module docstring), laid over ``base``.

        Raises:
            SettingsError: a malformed document, naming ``source`` and the entry.
        """
        if not isinstance(data, Mapping):
            raise SettingsError(f"{source}: expected a mapping with `models`")
        unknown = sorted(set(data) - {"models", "default", "inherit"})
        if unknown:
            raise SettingsError(f"{source}: unknown key {unknown[0]!r}; expected models, default, inherit")
        inherit = data.get("inherit", True)
        if not isinstance(inherit, bool):
            raise SettingsError(f"{source}: inherit must be true or false")
        raw_models = data.get("models") or {}
        if not isinstance(raw_models, Mapping):
            raise SettingsError(f"{source}: models must map model names to prices")
        models: dict[str, ModelPrice] = dict(base.models) if base is not None and inherit else {}
        for name, value in raw_models.items():
            if not isinstance(name, str) or not name.strip():
                raise SettingsError(f"{source}: models: {name!r} is not a model name")
            models[name.strip().lower()] = _model_price(value, f"{source}: models.{name}")
        default = base.default if base is not None and inherit else None
        if data.get("default") is not None:
            default = _model_price(data["default"], f"{source}: default")
        sources = ((base.sources if base is not None and inherit else ()) + (source,))
        return cls(models, default=default, sources=sources)

    @classmethod
    def from_file(cls, path: str | Path, base: PriceTable | None = None) -> PriceTable:
        """A table read from a YAML file, laid over ``base``.

        Raises:
            SettingsError: the file is missing, not YAML, or malformed (named).
        """
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise SettingsError(f"prices file {path}: {exc.strerror or exc}") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise SettingsError(f"prices file {path}: not YAML ({exc})") from None
        return cls.parse(data, str(path), base)

    def lookup(self, model: str) -> ModelPrice | None:
        """The price of ``model`` (exact name, then without a date or ``-latest`` suffix), or None."""
        name = model.strip().lower()
        found = self.models.get(name)
        if found is None:
            stripped = _SUFFIX.sub("", name)
            found = self.models.get(stripped) if stripped != name else None
        return found

    def price(self, *models: str) -> ModelPrice:
        """The price of the first of ``models`` that has one, else the default.

        Pass the model that answered first and the model asked for second: the answer
        often names a dated snapshot.

        Raises:
            UnknownModelPrice: none of them has a price and there is no default.
        """
        for model in models:
            if model:
                found = self.lookup(model)
                if found is not None:
                    return found
        if self.default is not None:
            return self.default
        names = " / ".join(repr(m) for m in models if m) or "(no model)"
        raise UnknownModelPrice(
            f"model {names} has no price in {', '.join(self.sources) or 'the price table'}: add it to the "
            "file named by SHIFTFLOW_LLM_PRICES_FILE (or set a default price there); docs/llm.md"
        )

    def knows(self, model: str) -> bool:
        """Whether a call to ``model`` can be priced (by its name or the default)."""
        return self.default is not None or self.lookup(model) is not None

    def cost(self, model: str, tokens_in: int, tokens_out: int, *, asked: str = "") -> Decimal:
        """The cost of a call to ``model`` (or to ``asked`` when ``model`` has no price), six places.

        Raises:
            UnknownModelPrice: neither has a price and there is no default.
        """
        return self.price(model, asked).cost(tokens_in, tokens_out)


@functools.cache
def shipped_prices() -> PriceTable:
    """The table that ships with ShiftFlow (read once)."""
    return PriceTable.from_file(SHIPPED_PRICES)


@functools.cache
def load_prices(path: str = "") -> PriceTable:
    """The shipped table with the file at ``path`` laid over it ("" = the shipped table); read once per path."""
    return PriceTable.from_file(path, shipped_prices()) if path else shipped_prices()


def price_table(settings: Settings | None = None) -> PriceTable:
    """The table of these settings (``SHIFTFLOW_LLM_PRICES_FILE``); the process-wide settings by default."""
    return load_prices((settings or get_settings()).llm_prices_file)


def cost(model: str, tokens_in: int, tokens_out: int, *, table: PriceTable | None = None) -> Decimal:
    """What a call to ``model`` with these token counts cost, USD, six places (half up).

    Parameters:
        table: the prices; the process-wide table (``price_table()``) when None.

    Raises:
        UnknownModelPrice: the model has no price and the table no default.
    """
    return (table or price_table()).cost(model, tokens_in, tokens_out)
