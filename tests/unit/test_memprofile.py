"""The opt-in memory profiling hook of worker processes (``kernel.memprofile``)."""

from __future__ import annotations

import json
import tracemalloc

from shiftflow.kernel import memprofile


def test_off_without_the_variable():
    assert memprofile.start_from_env({}) is False


def test_a_snapshot_without_tracing_writes_counts_only(tmp_path):
    assert not tracemalloc.is_tracing()
    path = memprofile.write_snapshot(tmp_path, 3)
    info = json.loads(path.read_text())
    assert path.name.endswith("-0003.json")
    assert info["rss_kb"] > 0 and info["traced_kb"] == 0
    assert info["types"]["dict"] > 0 and "mongo_buffered" in info
    assert not list(tmp_path.glob("*.snap"))


def test_a_snapshot_while_tracing_writes_the_snap_too(tmp_path):
    tracemalloc.start(2)
    try:
        memprofile.write_snapshot(tmp_path, 0)
    finally:
        tracemalloc.stop()
    snaps = list(tmp_path.glob("*.snap"))
    assert len(snaps) == 1
    assert tracemalloc.Snapshot.load(str(snaps[0])).traces
