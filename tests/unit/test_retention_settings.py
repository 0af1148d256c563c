"""The retention settings (kernel.settings): defaults, per-workspace days, malformed values."""

from __future__ import annotations

import datetime as dt

import pytest

from shiftflow.kernel.errors import SettingsError
from shiftflow.kernel.settings import Settings
from shiftflow.models.manage.retention import cutoff_for

DEV = {"SHIFTFLOW_MODE": "dev"}


def test_defaults():
    s = Settings.from_env(DEV)
    assert (s.retention_days, s.dedup_window_hours, s.retention_batch_size) == (90, 168, 500)
    assert (s.log_retention_days, s.analytics_retention_days, s.usage_retention_days) == (30, 365, 365)
    assert s.retention_workspace_days == ()


def test_per_workspace_days():
    s = Settings.from_env({**DEV, "SHIFTFLOW_RETENTION_WORKSPACE_DAYS": "acme=30, big-co=0",
                           "SHIFTFLOW_RETENTION_DAYS": "10"})
    assert s.retention_workspace_days == (("acme", 30), ("big-co", 0))
    now = dt.datetime(2026, 6, 1)
    assert cutoff_for(s, "acme", now) == now - dt.timedelta(days=30)
    assert cutoff_for(s, "big-co", now) is None
    assert cutoff_for(s, "other", now) == now - dt.timedelta(days=10)


@pytest.mark.parametrize("name, value", [
    ("RETENTION_WORKSPACE_DAYS", "acme"),
    ("RETENTION_WORKSPACE_DAYS", "acme=-1"),
    ("RETENTION_WORKSPACE_DAYS", "Acme=3"),
    ("RETENTION_DAYS", "-1"),
    ("DEDUP_WINDOW_HOURS", "0"),
    ("LOG_RETENTION_DAYS", "a month"),
])
def test_malformed_values_name_their_variable(name, value):
    with pytest.raises(SettingsError, match=f"SHIFTFLOW_{name}"):
        Settings.from_env({**DEV, f"SHIFTFLOW_{name}": value})
