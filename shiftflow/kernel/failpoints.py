"""Failpoints: env-gated hooks that crash a process at an exact point (docs/architecture.md#testing).

Random kills rarely hit the narrow windows that matter (after an outside call, before
the commit; after the commit, before the publish). Tests set ``SHIFTFLOW_FAILPOINTS`` in
a worker's environment to hit them on purpose::

    SHIFTFLOW_FAILPOINTS="step.after_work:call=exit-once,step.before_work:boom=exit"

Each entry is ``point[:key]=action``. Actions:

* ``exit``: ``os._exit(137)`` every time (as if SIGKILLed: no cleanup, no ack).
* ``exit-once``: exit the first time only; a marker file in ``SHIFTFLOW_FAILPOINT_DIR``
  (shared by the worker processes) records that it fired, so the redelivery goes on.
* ``raise``: raise ``TransientError`` (a retryable failure).
* ``sleep=SECONDS``: pause (to widen a race window).

Unset in production: ``hit`` is then one dictionary lookup.
"""

from __future__ import annotations

import os
import time

from shiftflow.kernel.errors import TransientError

_ENV = "SHIFTFLOW_FAILPOINTS"
_parsed: dict[str, str] | None = None
_source: str | None = None


def _table() -> dict[str, str]:
    global _parsed, _source
    raw = os.environ.get(_ENV, "")
    if _parsed is None or raw != _source:
        table: dict[str, str] = {}
        for entry in filter(None, (e.strip() for e in raw.split(","))):
            name, _, action = entry.partition("=")
            table[name.strip()] = action.strip() or "exit"
        _parsed, _source = table, raw
    return _parsed


def hit(point: str, key: str = "") -> None:
    """Run the action configured for ``point`` (or ``point:key``), if any."""
    table = _table()
    if not table:
        return
    action = table.get(f"{point}:{key}") if key else None
    name = f"{point}:{key}" if action else point
    action = action or table.get(point)
    if action is None:
        return
    if action == "exit":
        os._exit(137)
    if action == "exit-once":
        directory = os.environ.get("SHIFTFLOW_FAILPOINT_DIR", "/tmp")
        marker = os.path.join(directory, "failpoint-" + name.replace("/", "_").replace(":", "_"))
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.close(fd)
        os._exit(137)
    if action == "raise":
        raise TransientError(f"failpoint {name}")
    if action.startswith("sleep="):
        time.sleep(float(action.split("=", 1)[1]))
