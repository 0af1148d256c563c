"""``models.manage.paging``: cursors and page limits."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from shiftflow.models.manage import paging
from shiftflow.models.manage.problems import InvalidInput


def test_cursor_round_trip_and_rejection():
    at, row_id = dt.datetime(2025, 3, 1, 12, 30, 0, 123456), uuid.uuid4()
    assert paging.decode_cursor(paging.encode_cursor(at, row_id)) == (at, row_id)
    for bad in ("", "%%%", "bm90IGpzb24", paging.encode_cursor(at, row_id)[:-3]):
        with pytest.raises(InvalidInput, match="cursor"):
            paging.decode_cursor(bad)
    assert paging.parse_limit(None) == 50
    for bad_limit in ("0", "201", "ten"):
        with pytest.raises(InvalidInput, match="limit"):
            paging.parse_limit(bad_limit)
