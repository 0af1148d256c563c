"""Plain-data helpers for the management API and CLI: timestamps and ids in and out."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from typing import Any

from shiftflow.kernel.errors import NotFound
from shiftflow.models.manage.problems import InvalidInput


def stamp(value: dt.datetime | None) -> str | None:
    """A stored timestamp (naive, UTC) as RFC 3339 text with a ``Z``, or None."""
    if value is None:
        return None
    return value.isoformat(timespec="microseconds") + "Z"


def parse_time(value: Any, field: str) -> dt.datetime:
    """Parse an ISO 8601 / RFC 3339 timestamp into naive UTC (a zoneless one is taken as UTC).

    Raises:
        InvalidInput: not a timestamp (the message names ``field``).
    """
    if isinstance(value, dt.datetime):
        parsed = value
    else:
        try:
            parsed = dt.datetime.fromisoformat(str(value).strip())
        except ValueError:
            raise InvalidInput(
                field, f"{value!r} is not an ISO 8601 timestamp (e.g. 2025-01-31T12:00:00Z)"
            ) from None
    if parsed.tzinfo is not None:
        try:
            parsed = parsed.astimezone(dt.UTC).replace(tzinfo=None)
        except OverflowError:
            raise InvalidInput(field, f"{value!r} is out of range") from None
    return parsed


def parse_id(value: Any, what: str) -> uuid.UUID:
    """``value`` as a UUID; anything else cannot name a stored object.

    Raises:
        NotFound: not a UUID (``what`` names the kind of object, e.g. ``execution``).
    """
    try:
        return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
    except ValueError:
        raise NotFound(f"{what} {str(value)[:100]!r} does not exist") from None


_HEX_PREFIX = re.compile(r"^[0-9a-f-]{4,36}$")


def id_condition(field: Any, value: Any, what: str, *, postgres: bool) -> Any:
    """A condition on ``field`` (a UUID column) for an id or a unique-looking prefix of one.

    A full UUID matches that id; 4 or more hex digits (dashes allowed) match ids that
    start with them, for people who type the first characters the CLI printed.

    Raises:
        InvalidInput: neither (``what`` names the field: ``execution``, ``order``...).
    """
    if isinstance(value, uuid.UUID):
        return field == value
    text = str(value).strip().lower()
    try:
        return field == uuid.UUID(text)
    except ValueError:
        pass
    if not _HEX_PREFIX.match(text):
        raise InvalidInput(what, f"{str(value)[:60]!r} is not an id: give a UUID or its first 4+ hex digits")
    # PostgreSQL prints a uuid with dashes; SQLite (dev mode) stores its 32 hex digits.
    prefix = text if postgres else text.replace("-", "")
    return field.cast("text").startswith(prefix)
