"""The module the ``dramatiq`` CLI loads for a worker pool.

    dramatiq shiftflow.consumers.worker --processes 2 --threads 8 --queues steps tools

or ``shiftflow workers --pool default`` which reads the pool from deploy/pools.yaml.
Settings come from ``SHIFTFLOW_*``; a bad one stops the process with a message naming it.
"""

from __future__ import annotations

import os
import sys

from shiftflow.kernel import memprofile
from shiftflow.kernel.errors import SettingsError
from shiftflow.kernel.settings import Settings, configure

# Opt-in (SHIFTFLOW_TRACEMALLOC_DIR): on before the actors are imported, so their
# allocations carry a traceback.
memprofile.start_from_env()

try:
    settings = configure(Settings.from_env())
except SettingsError as exc:
    print(f"shiftflow worker: {exc}", file=sys.stderr)
    raise SystemExit(2) from None

if settings.metrics_dir:
    # prometheus_client picks its multiprocess mode when first imported: this must run
    # before anything below imports it.
    os.makedirs(settings.metrics_dir, exist_ok=True)
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", settings.metrics_dir)

from shiftflow.consumers.boot import boot  # noqa: E402 - after the profiling hook and the metrics directory

broker = boot(settings)
