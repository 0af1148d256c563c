"""The step path's CPU with tracing off: what the tracing and analytics hooks add per message/step.

Times, in-process and without servers, the functions every step goes through that the
tracing hooks touch: building a step message (``enqueue.build_message``, every publish),
encoding a trigger message (``enqueue.encode_message``, every webhook), and announcing a
step's outcome (``runs.announce_step``: metrics, the log document, and on this tree the
``step_executed`` event and the step span), with the MongoDB sink a list (so the figure is
ShiftFlow's CPU, not the store's); plus an outside call wrapped in ``usage.observed_call``
against the bare call.

Run it on two trees with the same interpreter to compare (the import root is taken from
PYTHONPATH)::

    PYTHONPATH=/path/to/baseline .venv/bin/python bench/bench_step_path.py
    .venv/bin/python bench/bench_step_path.py

Prints one line per operation: the fastest of ``ROUNDS`` rounds, in ns per call (the
fastest, not the median: on a shared machine the other rounds measure the neighbours).
On this tree it also prints, in the same process and interleaved, the step path with the
hooks replaced by nothing: what tracing-off and the ``step_executed`` event each cost.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

ROUNDS = 7
N = 20_000


class _ListSink:
    """A sink that keeps documents in a list: measures the writer's caller, not MongoDB."""

    def __init__(self) -> None:
        self.docs: list[Any] = []

    def write(self, collection: str, document: dict[str, Any]) -> None:
        self.docs.append((collection, document))


def _fastest_ns(fn: Callable[[], Any], n: int = N) -> float:
    results = []
    for _ in range(ROUNDS):
        started = time.perf_counter_ns()
        for _ in range(n):
            fn()
        results.append((time.perf_counter_ns() - started) / n)
    return min(results)


def _interleaved(variants: dict[str, Callable[[], Any]], setups: dict[str, Callable[[], None]]) -> dict[str, float]:
    """Each variant's fastest round, rounds interleaved (A B C A B C ...) so load hits all alike."""
    best = {name: float("inf") for name in variants}
    for _ in range(ROUNDS):
        for name, fn in variants.items():
            setups[name]()
            started = time.perf_counter_ns()
            for _ in range(N):
                fn()
            best[name] = min(best[name], (time.perf_counter_ns() - started) / N)
    return best


def main() -> None:
    import shiftflow
    from shiftflow.kernel import enqueue, mongo
    from shiftflow.kernel.contracts import StepPayload, TriggerPayload
    from shiftflow.models.engine import runs
    from shiftflow.models.tables.executions import Execution

    sink = _ListSink()
    mongo.configure_sink(sink)  # type: ignore[arg-type]
    step = StepPayload(execution_id=str(uuid.uuid4()), step_id="call", iteration=0)
    trigger = TriggerPayload(workflow_id=str(uuid.uuid4()), dedup_key="k-1", source="webhook", data={"a": 1})
    execution = Execution(id=uuid.uuid4(), workflow=uuid.uuid4(), workspace=uuid.uuid4(), status="RUNNING")
    metadata = {"iteration": 0, "output": {"ok": True}, "error": None, "durationMs": 12}
    print(f"tree: {shiftflow.__file__.rsplit('/shiftflow/', 1)[0]}")
    rows = {
        "build_message (step)": lambda: enqueue.build_message("steps.run", step),
        "encode_message (trigger)": lambda: enqueue.encode_message("triggers.start", trigger),
        "announce_step (SUCCEEDED)": lambda: runs.announce_step(execution, "call", "http", "SUCCEEDED", metadata),
    }
    try:
        from shiftflow.kernel import tracing, usage

        assert not tracing.enabled()
        rows["observed_call (vs a bare call)"] = lambda: usage.observed_call(
            "http", "call", {"method": "POST"}, execution, lambda: None)
    except ImportError:
        pass
    rows["bare call"] = lambda: (lambda: None)()
    for name, fn in rows.items():
        value = _fastest_ns(fn)
        sink.docs.clear()
        print(f"{name:<34} {value:>9.0f} ns")
    try:
        from shiftflow.models.engine import step_events
    except ImportError:
        return
    _ab(runs, step_events, execution, metadata, sink)


def _ab(runs: Any, step_events: Any, execution: Any, metadata: dict[str, Any], sink: _ListSink) -> None:
    """announce_step: without the new hook (the base tree's behaviour), with tracing off
    only (no analytics event), and as shipped (tracing off + the step_executed event)."""
    from shiftflow.kernel import tracing

    real, analytics_event = step_events.step_finished, step_events.logs.analytics_event

    def nothing(*args: Any, **kwargs: Any) -> None:
        return None

    def use(hook: Any, event: Any) -> Callable[[], None]:
        def setup() -> None:
            runs.step_finished, step_events.logs.analytics_event = hook, event
            sink.docs.clear()
        return setup

    def announce() -> None:
        runs.announce_step(execution, "call", "http", "SUCCEEDED", metadata)

    best = _interleaved({"no hook (base)": announce, "tracing off, no event": announce, "as shipped": announce},
                        {"no hook (base)": use(nothing, analytics_event),
                         "tracing off, no event": use(real, nothing),
                         "as shipped": use(real, analytics_event)})
    runs.step_finished, step_events.logs.analytics_event = real, analytics_event
    print("announce_step, same process, interleaved:")
    for name, value in best.items():
        print(f"  {name:<32} {value:>9.0f} ns")
    hooks = {"stamp (off)": lambda: tracing.stamp({"broker_priority": 3}, "steps.run", None),
             "step_span (off)": lambda: tracing.step_span("x", "y", "s", "http", "SUCCEEDED"),
             "tool_span (off)": lambda: tracing.tool_span("http", "s", "x")}
    for name, fn in hooks.items():
        print(f"  {name:<32} {_fastest_ns(fn, 200_000):>9.0f} ns")


if __name__ == "__main__":
    main()
