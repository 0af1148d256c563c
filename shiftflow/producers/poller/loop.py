"""Polling triggers: call an HTTP source on an interval and trigger once per new item.

A workflow whose definition says ``trigger: {type: polling, ...}`` is polled:

.. code-block:: yaml

    trigger:
      type: polling
      every: 5m                       # seconds or a duration (90, 30s, 5m, 1h)
      request: {url: "https://api.example.com/orders", headers: {...}, params: {...}}
      items: data.orders              # where the list is in the JSON answer ("" = the answer)
      id: id                          # where each item's identity is, inside the item
      cursor: {param: since_id, field: id}   # optional: send the newest seen value back

Each new item (an id not among the cursor's recently seen ids) becomes a
``triggers.start`` message with dedup key ``poll:{cursor key}:{item id}`` and data
``{"item": <the item>}``. The key uses the cursor's key, not its row id, so a cursor row
re-created by the sync cannot start an item twice.

Exactly once across replicas, without holding a transaction open during the HTTP call:

1. claim: ``SELECT ... FOR UPDATE SKIP LOCKED`` due cursors, set ``next_poll_at`` to a
   lease (now + HTTP timeout + margin), commit. Other replicas now see it as not due;
2. call the source, publish the new items and wait for RabbitMQ's confirms;
3. move the cursor on (``seen_keys``, ``cursor``, next poll) with a compare-and-set on
   the lease value. A replica that lost its lease (it was too slow and another one took
   over) changes nothing; what it published dedups by key.

A crash after the publishes and before step 3 re-polls when the lease ends: the same
items get the same keys, so the trigger actor starts each once. The cursor moves only
after the confirms: a crash re-reads, never skips.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import peewee
from prometheus_client import Counter

from shiftflow.kernel.batch_publisher import Publisher
from shiftflow.kernel.contracts import Priority, TriggerPayload
from shiftflow.kernel.cron import ScheduleError
from shiftflow.kernel.db import database, is_postgres
from shiftflow.kernel.enqueue import Outgoing
from shiftflow.kernel.errors import BrokerUnavailable, ToolError, ToolUnavailable
from shiftflow.kernel.expressions import ExpressionError, resolve
from shiftflow.kernel.tools import http
from shiftflow.kernel.triggers import PollConfig, poll_config
from shiftflow.models.tables.polling_cursors import PollingCursor
from shiftflow.models.tables.workflows import Workflow, WorkflowVersion

log = logging.getLogger(__name__)
UTC = dt.UTC
DEFAULT_KEY = "default"
#: Ids remembered per cursor: sources that page by a coarse timestamp return boundary
#: items again; the dedup key catches anything older.
SEEN_LIMIT = 1000
#: The longest wait after repeated failures.
MAX_BACKOFF = dt.timedelta(hours=1)

POLLS = Counter("shiftflow_polls_total", "Polls by outcome (ok, error, lost_lease).", ["outcome"])
POLL_ITEMS = Counter("shiftflow_poll_items_total", "Polled items by outcome (new, seen).", ["outcome"])
for _outcome in ("ok", "error", "lost_lease"):
    POLLS.labels(_outcome)
for _outcome in ("new", "seen"):
    POLL_ITEMS.labels(_outcome)


def _path(path: str) -> str:
    """JSONPath-lite: ``$.data.items[0].id`` -> ``data.items.0.id``."""
    text = path.strip()
    if text.startswith("$"):
        text = text[1:]
    return text.replace("[", ".").replace("]", "").strip(".")


def extract(body: Any, items_path: str, id_path: str) -> list[tuple[str, Any]]:
    """The (item id, item) pairs of a source's answer.

    Raises:
        ToolError: the items path names no list, or an item has no id there.
    """
    path = _path(items_path)
    try:
        found = resolve(f"root.{path}", {"root": body}) if path else body
    except ExpressionError as exc:
        raise ToolError(f"items path {items_path!r}: {exc}") from None
    if not isinstance(found, list):
        raise ToolError(f"items path {items_path!r} is a {type(found).__name__}, not a list")
    out = []
    for index, item in enumerate(found):
        try:
            ident = resolve(f"root.{_path(id_path)}", {"root": item})
        except ExpressionError:
            ident = None
        if ident is None or isinstance(ident, dict | list):
            raise ToolError(f"item {index} has no id at {id_path!r}")
        out.append((str(ident), item))
    return out


def item_key(cursor_key: str, item_id: str) -> str:
    """``poll:{cursor key}:{item id}`` (long ids hashed, dedup keys hold 255 characters)."""
    if len(item_id) > 180:
        item_id = "sha256:" + hashlib.sha256(item_id.encode()).hexdigest()
    return f"poll:{cursor_key}:{item_id}"


def _workflow_id(row: PollingCursor) -> Any:
    """The cursor's workflow id without loading the workflow row."""
    return row.__data__["workflow"]


def _naive(value: dt.datetime) -> dt.datetime:
    return value.astimezone(UTC).replace(tzinfo=None)


@dataclass
class _Claim:
    row: PollingCursor
    lease: dt.datetime


class Poller:
    """Polls due polling cursors (one replica; run as many as you like).

    Parameters:
        publisher: publishes a batch and returns once RabbitMQ confirmed it.
        http_timeout: connect/read timeout of one poll request.
        allow_private: let sources be loopback/private addresses (dev, tests).
        clock: returns now (aware UTC).
    """

    def __init__(
        self,
        publisher: Publisher,
        *,
        http_timeout: float = 10.0,
        allow_private: bool = False,
        batch_size: int = 20,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(UTC),
    ) -> None:
        self.publisher = publisher
        self.http_timeout = http_timeout
        self.allow_private = allow_private
        self.batch_size = batch_size
        self.clock = clock
        self.lease = dt.timedelta(seconds=http_timeout * 2 + 30)

    def sync(self) -> None:
        """Create a cursor for every active workflow with a polling trigger; deactivate the rest."""
        now = _naive(self.clock())
        wanted = {}
        rows = (
            Workflow.select(Workflow, WorkflowVersion.definition)
            .join(
                WorkflowVersion,
                on=(
                    (WorkflowVersion.workflow == Workflow.id)
                    & (WorkflowVersion.version == Workflow.current_version)
                ),
            )
            .where((Workflow.trigger_type == "POLLING") & (Workflow.status == "ACTIVE"))
            .objects()
        )
        for workflow in rows:
            try:
                config = poll_config((getattr(workflow, "definition", None) or {}).get("trigger") or {})
            except ScheduleError as exc:
                log.error("workflow %s (%s): %s", workflow.name, workflow.id, exc)
                continue
            wanted[workflow.id] = (workflow, config)
        for workflow, config in wanted.values():
            inserted = (
                PollingCursor.insert(
                    workspace=workflow.workspace_id,
                    workflow=workflow.id,
                    key=DEFAULT_KEY,
                    interval_seconds=config.interval_seconds,
                    next_poll_at=now,
                    created_at=now,
                    updated_at=now,
                )
                .on_conflict_ignore()
                .execute()
            )
            del inserted
            PollingCursor.update(interval_seconds=config.interval_seconds, is_active=True).where(
                (PollingCursor.workflow == workflow.id)
                & (PollingCursor.key == DEFAULT_KEY)
                & ((PollingCursor.interval_seconds != config.interval_seconds) | ~PollingCursor.is_active)
            ).execute()
        stale = PollingCursor.update(is_active=False).where(PollingCursor.is_active)
        if wanted:
            stale = stale.where(PollingCursor.workflow.not_in(list(wanted)))
        stale.execute()

    def _claim(self, now: dt.datetime) -> list[_Claim]:
        lease = _naive(now + self.lease)
        with database.atomic():
            query = (
                PollingCursor.select()
                .where(PollingCursor.is_active & (PollingCursor.next_poll_at <= _naive(now)))
                .order_by(PollingCursor.next_poll_at)
                .limit(self.batch_size)
            )
            if is_postgres():
                query = query.for_update(skip_locked=True)
            rows = list(query)
            if rows:
                PollingCursor.update(next_poll_at=lease, last_polled_at=_naive(now)).where(
                    PollingCursor.id.in_([r.id for r in rows])
                ).execute()
        return [_Claim(row, lease) for row in rows]

    def _config(self, row: PollingCursor) -> PollConfig:
        version = (
            WorkflowVersion.select(WorkflowVersion.definition)
            .join(Workflow, on=(Workflow.id == WorkflowVersion.workflow))
            .where((Workflow.id == _workflow_id(row)) & (WorkflowVersion.version == Workflow.current_version))
            .first()
        )
        if version is None:
            raise ScheduleError(f"workflow {_workflow_id(row)} has no current definition")
        return poll_config((version.definition or {}).get("trigger") or {})

    def poll_one(self, claim: _Claim) -> int:
        """Poll one claimed cursor: call, publish new items (confirmed), move the cursor on.

        Returns:
            The number of new items published.
        """
        row, now = claim.row, self.clock()
        try:
            config = self._config(row)
            inputs = {**config.request, "params": dict(config.request.get("params") or {})}
            if config.cursor_param and row.cursor is not None:
                inputs["params"][config.cursor_param] = row.cursor
            answer = http.call(inputs, timeout=self.http_timeout, allow_private=self.allow_private)
            items = extract(answer.get("json"), config.items, config.id)
            seen = list(row.seen_keys or [])
            known = set(seen)
            fresh = [(ident, item) for ident, item in items if ident not in known]
            POLL_ITEMS.labels("seen").inc(len(items) - len(fresh))
            self.publisher.publish_all(
                [
                    Outgoing(
                        "triggers.start",
                        TriggerPayload(
                            workflow_id=str(_workflow_id(row)),
                            dedup_key=item_key(row.key, ident),
                            source="polling",
                            data={"item": item},
                            received_at=time.time(),
                        ),
                        priority=int(Priority.NORMAL),
                    )
                    for ident, item in fresh
                ]
            )
        except (ToolError, ToolUnavailable, ScheduleError, BrokerUnavailable) as exc:
            self._failed(claim, now, str(exc))
            return 0
        cursor = row.cursor
        if config.cursor_field:
            values = [item.get(config.cursor_field) for _, item in items if isinstance(item, dict)]
            values = [v for v in values if v is not None]
            if values:
                cursor = max([*values, *([] if cursor is None else [cursor])], key=_sortable)
        seen = (seen + [ident for ident, _ in fresh])[-SEEN_LIMIT:]
        moved = (
            PollingCursor.update(
                seen_keys=seen,
                cursor=cursor,
                next_poll_at=_naive(now + dt.timedelta(seconds=config.interval_seconds)),
                last_success_at=_naive(now),
                consecutive_failures=0,
                last_error=None,
                updated_at=_naive(now),
            )
            .where((PollingCursor.id == row.id) & (PollingCursor.next_poll_at == claim.lease))
            .execute()
        )
        POLLS.labels("ok" if moved else "lost_lease").inc()
        POLL_ITEMS.labels("new").inc(len(fresh))
        return len(fresh)

    def _failed(self, claim: _Claim, now: dt.datetime, error: str) -> None:
        row = claim.row
        failures = row.consecutive_failures + 1
        delay = min(MAX_BACKOFF, dt.timedelta(seconds=row.interval_seconds * 2 ** min(failures - 1, 16)))
        log.warning(
            "poll of workflow %s failed (%d in a row, next in %s): %s",
            _workflow_id(row),
            failures,
            delay,
            error,
        )
        POLLS.labels("error").inc()
        PollingCursor.update(
            consecutive_failures=failures,
            last_error=error[:2000],
            next_poll_at=_naive(now + delay),
            updated_at=_naive(now),
        ).where((PollingCursor.id == row.id) & (PollingCursor.next_poll_at == claim.lease)).execute()

    def tick(self) -> int:
        """Claim due cursors and poll each; returns the number of new items published."""
        return sum(self.poll_one(claim) for claim in self._claim(self.clock()))

    def run(self, stop: threading.Event, *, tick_seconds: float = 1.0) -> None:
        """Poll due cursors about every ``tick_seconds`` until ``stop`` is set (``sync`` runs elsewhere)."""
        while not stop.is_set():
            try:
                self.tick()
            except (peewee.DatabaseError, peewee.InterfaceError) as exc:
                log.warning("poller tick failed: %s", exc)
                with contextlib.suppress(peewee.DatabaseError, peewee.InterfaceError):
                    database.close()
            self.publisher.keepalive()
            stop.wait(tick_seconds)


def _sortable(value: Any) -> tuple[int, Any]:
    """Order cursor values: numbers by value, everything else as text (ISO times sort)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (0, value)
    return (1, str(value))
