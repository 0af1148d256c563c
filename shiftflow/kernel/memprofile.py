"""Opt-in memory profiling of a long-lived process: tracemalloc snapshots on a timer.

    SHIFTFLOW_TRACEMALLOC_DIR=/tmp/snaps dramatiq shiftflow.consumers.worker ...
    python bench/memdiff.py /tmp/snaps        # what grew between the early and late snapshots

With ``SHIFTFLOW_TRACEMALLOC_DIR`` set, ``start_from_env`` starts ``tracemalloc`` (keeping
``SHIFTFLOW_TRACEMALLOC_FRAMES`` frames, default 12) and a daemon thread that every
``SHIFTFLOW_TRACEMALLOC_SECONDS`` (default 30) writes ``{pid}-{n:04d}.snap`` (a tracemalloc
snapshot) and ``{pid}-{n:04d}.json`` (resident memory, the documents waiting in the MongoDB
sink, and live objects counted by type through ``gc.get_objects``) to that directory. With
``SHIFTFLOW_TRACEMALLOC_FRAMES=0`` only the ``.json`` is written and nothing is traced (the
process runs at nearly full speed, so a backlog that builds only at full speed shows). Unset, it does nothing: tracing costs
several times the allocation time, so it is never on in production unless asked for.

Read from the environment directly, not through ``Settings``: it is a diagnostic switch,
and it must be on before the worker's modules are imported for their allocations to
carry a useful traceback.
"""

from __future__ import annotations

import collections
import gc
import json
import logging
import os
import threading
import time
import tracemalloc
from pathlib import Path

log = logging.getLogger(__name__)

ENV_DIR = "SHIFTFLOW_TRACEMALLOC_DIR"
ENV_SECONDS = "SHIFTFLOW_TRACEMALLOC_SECONDS"
ENV_FRAMES = "SHIFTFLOW_TRACEMALLOC_FRAMES"
#: Object types kept in each ``.json`` (the most numerous).
TOP_TYPES = 60

_started_pid = 0


def _resident_kb() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def type_counts(limit: int = TOP_TYPES) -> dict[str, int]:
    """Live objects tracked by the garbage collector, counted by type name, most numerous first."""
    counts = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
    return dict(counts.most_common(limit))


def _mongo_buffered() -> int:
    from shiftflow.kernel.mongo import get_sink

    sink = get_sink()
    return sink.buffered() if sink is not None else 0


def write_snapshot(directory: Path, n: int) -> Path:
    """Write snapshot ``n`` of this process (the ``.snap`` while tracing, then the ``.json``:
    a reader takes a ``.snap`` as complete once its ``.json`` exists); returns the ``.json`` path."""
    pid = os.getpid()
    if tracemalloc.is_tracing():
        tracemalloc.take_snapshot().dump(str(directory / f"{pid}-{n:04d}.snap"))
    traced, peak = tracemalloc.get_traced_memory()
    info = {"pid": pid, "n": n, "at": time.time(), "rss_kb": _resident_kb(), "traced_kb": traced // 1024,
            "traced_peak_kb": peak // 1024, "tracer_kb": tracemalloc.get_tracemalloc_memory() // 1024,
            "mongo_buffered": _mongo_buffered(), "types": type_counts()}
    path = directory / f"{pid}-{n:04d}.json"
    path.write_text(json.dumps(info))
    return path


def start_from_env(environ: dict[str, str] | None = None) -> bool:
    """Start tracing and the snapshot thread when ``SHIFTFLOW_TRACEMALLOC_DIR`` is set.

    Returns:
        Whether profiling is on in this process (once per process: a forked child that
        calls it again starts its own thread).
    """
    global _started_pid
    env = os.environ if environ is None else environ
    target = env.get(ENV_DIR, "")
    if not target or _started_pid == os.getpid():
        return bool(target)
    directory = Path(target)
    directory.mkdir(parents=True, exist_ok=True)
    seconds = float(env.get(ENV_SECONDS, "30") or 30)
    frames = int(env.get(ENV_FRAMES, "12") or 0)
    if frames > 0 and not tracemalloc.is_tracing():
        tracemalloc.start(frames)
    _started_pid = os.getpid()

    def loop() -> None:
        n = 0
        while True:
            time.sleep(seconds)
            try:
                write_snapshot(directory, n)
            except Exception:  # a full disk must not take the worker down
                log.exception("tracemalloc snapshot failed")
            n += 1

    threading.Thread(target=loop, name="tracemalloc-snapshots", daemon=True).start()
    return True
