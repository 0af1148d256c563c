"""The Mongo writer: execution logs and analytics events for every transition.

Documents follow the collections of docs/seed-mapping.md. They go through the kernel's
batching sink, after the Postgres transaction that decided the transition committed: the
execution's truth is Postgres, the logs tell its story.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from shiftflow.kernel.mongo import ANALYTICS_EVENTS, EXECUTION_LOGS, get_sink
from shiftflow.kernel.redis_handle import publish_updates
from shiftflow.models.tables.base import utcnow
from shiftflow.models.tables.executions import Execution

#: Keys never written to logs, whatever step produced them.
_SECRET_KEYS = frozenset({"authorization", "password", "secret", "token", "api_key", "x-sideshift-secret"})


def redact(value: Any) -> Any:
    """A copy of ``value`` with secret-looking keys replaced by ``"***"``."""
    if isinstance(value, dict):
        return {k: ("***" if str(k).lower() in _SECRET_KEYS else redact(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


_deferred = threading.local()


@contextmanager
def deferred() -> Iterator[None]:
    """Hold log documents written inside the block until it exits without an error.

    Wrap a transaction with it: documents describe committed transitions only, and a
    rolled-back transition leaves no log behind.
    """
    outer = getattr(_deferred, "items", None)
    _deferred.items = [] if outer is None else outer
    try:
        yield
    except BaseException:
        if outer is None:
            _deferred.items = None
        raise
    if outer is None:
        items, _deferred.items = _deferred.items, None
        # Live updates of the whole transition go to Redis together, in one round trip.
        _deferred.updates = []
        try:
            for fn, args, kwargs in items:
                fn(*args, **kwargs)
        finally:
            updates, _deferred.updates = _deferred.updates, None
            publish_updates(updates)


def _defer(fn: Any, *args: Any, **kwargs: Any) -> bool:
    items = getattr(_deferred, "items", None)
    if items is None:
        return False
    items.append((fn, args, kwargs))
    return True


def after_commit(fn: Any, *args: Any, **kwargs: Any) -> None:
    """Call ``fn(*args, **kwargs)`` once the enclosing ``deferred()`` block committed (at
    once outside one): for other documents that must describe committed transitions only."""
    if not _defer(fn, *args, **kwargs):
        fn(*args, **kwargs)


def execution_log(
    execution: Execution,
    message: str,
    *,
    level: str = "info",
    step_id: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> None:
    """Queue one ``execution_logs`` document for ``execution``, and
    publish the transition on the execution's Redis channel for live watchers."""
    if _defer(execution_log, execution, message, level=level, step_id=step_id, metadata=metadata):
        return
    update = (str(execution.id), {"message": message, "stepId": step_id, "level": level})
    pending = getattr(_deferred, "updates", None)
    if pending is not None:
        pending.append(update)
    else:
        publish_updates([update])
    sink = get_sink()
    if sink is None:
        return
    sink.write(
        EXECUTION_LOGS,
        {
            "executionId": str(execution.id),
            "workflowId": str(execution.workflow_id),
            "workspaceId": str(execution.workspace_id),
            "timestamp": utcnow(),
            "level": level,
            "message": message,
            "stepId": step_id,
            "metadata": redact(metadata or {}),
        },
    )


def analytics_event(event: str, execution: Execution, properties: dict[str, Any]) -> None:
    """Queue one ``analytics_events`` document."""
    if _defer(analytics_event, event, execution, properties):
        return
    sink = get_sink()
    if sink is None:
        return
    sink.write(
        ANALYTICS_EVENTS,
        {
            "timestamp": utcnow(),
            "event": event,
            "workspaceId": str(execution.workspace_id),
            "workflowId": str(execution.workflow_id),
            "properties": redact(properties),
        },
    )
