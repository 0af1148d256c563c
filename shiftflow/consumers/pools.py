"""Worker pools: which queues a pool consumes, with how many processes and threads.

Pools are configuration (deploy/pools.yaml), not code; ``shiftflow workers --pool NAME``
runs one under its supervisor (``consumers.supervisor``), which replaces a process that
dies without stopping the others.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import yaml

from shiftflow.kernel.contracts import Queue
from shiftflow.kernel.errors import SettingsError

DEFAULT_POOLS: dict[str, dict[str, Any]] = {
    "default": {"queues": list(Queue.ALL), "processes": 2, "threads": 8},
}


@dataclass(frozen=True)
class Pool:
    """One worker pool."""

    name: str
    queues: tuple[str, ...]
    processes: int
    threads: int
    #: The port of the pool's metrics exporter (``metrics_port`` in the pools file); None:
    #: ``SHIFTFLOW_METRICS_PORT``. Two pools on one machine need two ports.
    metrics_port: int | None = None
    #: Ready messages per replica above which KEDA adds a replica (``queue_length_per_replica``,
    #: as ``shiftflow pools plan`` prints it); None: processes x threads
    #: (``scripts/render_k8s_pools.py``).
    queue_length_per_replica: int | None = None


def load_pools(path: str | None) -> dict[str, Pool]:
    """Read pools from a YAML file (``pools: {name: {queues, processes, threads, metrics_port,
    queue_length_per_replica}}``).

    Raises:
        SettingsError: the file is unreadable or a pool names an unknown queue.
    """
    raw: dict[str, Any] = DEFAULT_POOLS
    if path:
        if not os.path.exists(path):
            raise SettingsError(f"pool file {path} does not exist")
        with open(path, encoding="utf-8") as handle:
            raw = (yaml.safe_load(handle) or {}).get("pools") or {}
    pools: dict[str, Pool] = {}
    for name, spec in raw.items():
        queues = tuple(spec.get("queues") or ())
        unknown = [q for q in queues if q not in Queue.ALL]
        if not queues or unknown:
            raise SettingsError(f"pool {name!r}: queues must be a non-empty subset of {', '.join(Queue.ALL)}"
                                + (f" (unknown: {', '.join(unknown)})" if unknown else ""))
        port = spec.get("metrics_port")
        if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535):
            raise SettingsError(f"pool {name!r}: metrics_port must be a port number (0 = off), got {port!r}")
        per_replica = spec.get("queue_length_per_replica")
        if per_replica is not None and (isinstance(per_replica, bool) or not isinstance(per_replica, int)
                                        or per_replica < 1):
            raise SettingsError(f"pool {name!r}: queue_length_per_replica must be a whole number of at least 1, "
                                f"got {per_replica!r}")
        pools[name] = Pool(name, queues, int(spec.get("processes", 1)), int(spec.get("threads", 8)), port,
                           per_replica)
    return pools
