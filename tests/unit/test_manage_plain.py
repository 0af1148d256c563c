"""``models.manage.plain``: timestamps in and out (and ``kernel.storable.unstorable``, which it uses)."""

from __future__ import annotations

import datetime as dt

import pytest

from shiftflow.kernel.storable import unstorable
from shiftflow.models.manage.plain import parse_time, stamp
from shiftflow.models.manage.problems import InvalidInput


def test_timestamps_in_and_out():
    assert parse_time("2025-01-31T12:00:00+02:00", "since") == dt.datetime(2025, 1, 31, 10, 0)
    assert parse_time("2025-01-31T12:00:00Z", "since") == dt.datetime(2025, 1, 31, 12, 0)
    with pytest.raises(InvalidInput, match="^until: "):
        parse_time("yesterday", "until")
    assert stamp(dt.datetime(2025, 1, 31, 12, 0)) == "2025-01-31T12:00:00.000000Z"
    assert stamp(None) is None
    assert unstorable({"a": ["ok", "x\x00"]}) and unstorable("\ud800") and unstorable({"k": 1}) is None
