"""The lease heartbeat thread outlives an unexpected error: a dead heartbeat would let every
lease of its process run out, and other workers would take steps that are still running."""

from __future__ import annotations

import threading

import pytest

from shiftflow.models.engine import leases


def test_an_unexpected_error_in_a_beat_does_not_end_the_heartbeat(monkeypatch: pytest.MonkeyPatch) -> None:
    beats: list[int] = []
    second = threading.Event()

    def beat(self: leases.Heartbeat) -> bool:
        beats.append(1)
        if len(beats) == 1:
            raise IndexError("pop from empty list")  # what a database rebound mid-beat raised
        second.set()
        return True

    monkeypatch.setattr(leases.Heartbeat, "beat", beat)
    monkeypatch.setattr(leases, "lease_seconds", lambda: 0.3)
    heartbeat = leases.Heartbeat()
    heartbeat.ensure_running()
    try:
        assert second.wait(10), "the heartbeat stopped after an unexpected error"
    finally:
        heartbeat.stop()
