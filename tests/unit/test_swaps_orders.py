"""``models.swaps.orders.external_id``: stable, short, and distinct per re-run."""

from __future__ import annotations

from shiftflow.models.swaps.orders import external_id


def test_external_ids_are_stable_short_and_distinct_per_rerun():
    assert external_id("e1", "swap", 0) == "e1:swap:0"
    assert external_id("e1", "swap", 2, generation=2) == "e1:swap:2/r2"
    long_step = "s" * 100
    ident = external_id("0" * 36, long_step, 7)
    assert len(ident) <= 100 and ident == external_id("0" * 36, long_step, 7) and ident.endswith(":7")
