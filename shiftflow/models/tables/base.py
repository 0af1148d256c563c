"""The model base class, id and time helpers shared by every table."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import peewee

from shiftflow.kernel.db import database


def utcnow() -> dt.datetime:
    """Now in UTC, naive: every timestamp column stores UTC without a zone."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def new_id() -> uuid.UUID:
    """A new random primary key."""
    return uuid.uuid4()


def fk(row: Any, name: str) -> Any:
    """The id held by foreign key ``name`` of a model row, without loading the referenced row
    (what Peewee's ``<name>_id`` accessor returns, for models that do not declare it)."""
    return row.__data__.get(name)


class BaseModel(peewee.Model):
    """Every table: a UUID primary key, bound to the kernel's database proxy."""

    id = peewee.UUIDField(primary_key=True, default=new_id)

    class Meta:
        database = database
        legacy_table_names = False


class TimestampedModel(BaseModel):
    """A table with ``created_at`` and ``updated_at`` (set on every ``save``)."""

    created_at = peewee.DateTimeField(default=utcnow)
    updated_at = peewee.DateTimeField(default=utcnow)

    def save(self, *args: Any, **kwargs: Any) -> Any:
        """Save the row, stamping ``updated_at``."""
        self.updated_at = utcnow()
        return super().save(*args, **kwargs)
