"""The price cache: last known prices for price-threshold conditions."""

from __future__ import annotations

import peewee

from shiftflow.models.tables.base import BaseModel, utcnow


class PriceCache(BaseModel):
    """The latest price of one coin in one currency, shared by every workspace.

    Market data, not tenant data. Conditions read it instead of calling the price API
    per execution; ``fetched_at`` (when the source quoted it) tells them how stale it
    is. A double is precise enough for a threshold signal; amounts of money are never
    derived from it without a fresh SideShift quote.
    """

    coin_id = peewee.CharField(max_length=100)
    vs_currency = peewee.CharField(max_length=10, default="usd")
    symbol = peewee.CharField(max_length=20, index=True)
    price = peewee.DoubleField()
    change_24h = peewee.DoubleField(null=True)
    source = peewee.CharField(max_length=30, default="coingecko")
    fetched_at = peewee.DateTimeField(default=utcnow)
    updated_at = peewee.DateTimeField(default=utcnow, index=True)

    class Meta:
        indexes = ((("coin_id", "vs_currency"), True),)
        constraints = [peewee.Check("price >= 0", name="chk_price_cache_price")]
