"""``models.swaps.pricing``: a price step's inputs, and prices as decimal text."""

from __future__ import annotations

from decimal import Decimal

import pytest

from shiftflow.models.swaps.pricing import PriceInputError, PriceRequest, price_text


def test_price_inputs_and_decimal_text():
    assert PriceRequest.parse({"coin": " Ethereum ", "vs_currency": "USD"}) == PriceRequest("ethereum", "usd")
    with pytest.raises(PriceInputError, match="unknown input 'coinId'"):
        PriceRequest.parse({"coinId": "ethereum"})
    with pytest.raises(PriceInputError, match="'max_age_seconds'"):
        PriceRequest.parse({"coin": "ethereum", "max_age_seconds": -1})
    assert price_text(Decimal("2999.50")) == "2999.5" and price_text(3e-05) == "0.00003"
    assert price_text(Decimal("3000")) == "3000" and price_text(61234.5) == "61234.5"
