"""Keyset pages for every list of the management API and CLI.

Pages are newest first, ordered by ``(created_at, id)``; the cursor is the opaque
base64 of the last row's pair and the next page is "older than that". Rows inserted
while a client pages through are newer than its cursor, so they neither shift nor
repeat rows of later pages (OFFSET paging would do both); the id breaks ties between
rows created in the same microsecond.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from shiftflow.models.manage.access import Principal
from shiftflow.models.manage.plain import parse_time
from shiftflow.models.manage.problems import InvalidInput

DEFAULT_LIMIT, MAX_LIMIT = 50, 200


@dataclass(frozen=True)
class Page:
    """One page of a list: the items (plain data) and the cursor of the next page, if any."""

    items: list[dict[str, Any]]
    next_cursor: str | None

    def as_dict(self) -> dict[str, Any]:
        """``{"items": [...], "next_cursor": ...}``."""
        return {"items": self.items, "next_cursor": self.next_cursor}


def encode_cursor(created_at: dt.datetime, row_id: Any) -> str:
    """The opaque cursor of a row: base64url of ``[created_at, id]``."""
    raw = json.dumps([created_at.isoformat(timespec="microseconds"), str(row_id)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[dt.datetime, uuid.UUID]:
    """The ``(created_at, id)`` a cursor stands for.

    Raises:
        InvalidInput: not a cursor this API issued.
    """
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        stamp_text, row_id = json.loads(raw)
        return dt.datetime.fromisoformat(stamp_text).replace(tzinfo=None), uuid.UUID(row_id)
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise InvalidInput("cursor", "malformed cursor: pass the next_cursor of a previous page") from None


def parse_limit(value: Any) -> int:
    """A page size from a query parameter (default 50, 1-200).

    Raises:
        InvalidInput: not an integer in range.
    """
    if value is None or value == "":
        return DEFAULT_LIMIT
    try:
        limit = int(str(value).strip())
    except ValueError:
        raise InvalidInput("limit", f"{value!r} is not an integer") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput("limit", f"must be between 1 and {MAX_LIMIT}")
    return limit


def keyset(query: Any, model: Any, limit: int, cursor: str | None) -> tuple[list[Any], str | None]:
    """Apply keyset paging (newest first) on ``model.created_at, model.id``.

    Returns:
        The rows of this page and the next page's cursor (None on the last page).
    """
    if cursor:
        at, row_id = decode_cursor(cursor)
        query = query.where((model.created_at < at) | ((model.created_at == at) & (model.id < row_id)))
    rows = list(query.order_by(model.created_at.desc(), model.id.desc()).limit(limit + 1))
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (encode_cursor(rows[-1].created_at, rows[-1].id) if more else None)


def choice(value: Any, field: str, choices: Iterable[str]) -> str:
    """``value`` if it is one of ``choices`` (exactly, as the API documents them).

    Raises:
        InvalidInput: it is not.
    """
    allowed = tuple(choices)
    if value not in allowed:
        raise InvalidInput(field, f"{value!r} is not one of {', '.join(allowed)}")
    return str(value)


def scoped(query: Any, field: Any, actor: Principal) -> Any:
    """``query`` limited to the caller's workspace (``field`` holds the workspace id);
    unchanged for the CLI operator, who acts on every workspace."""
    return query if actor.workspace_id is None else query.where(field == actor.workspace_id)


def window(query: Any, field: Any, since: Any, until: Any) -> Any:
    """``query`` limited to ``since <= field < until`` (either may be None).

    Raises:
        InvalidInput: a bound is not a timestamp.
    """
    if since not in (None, ""):
        query = query.where(field >= parse_time(since, "since"))
    if until not in (None, ""):
        query = query.where(field < parse_time(until, "until"))
    return query
