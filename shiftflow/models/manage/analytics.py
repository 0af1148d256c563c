"""Analytics readers: success rates, durations, usage and cost over a time range.

They read the MongoDB collections the engine writes (docs/seed-mapping.md):

* ``analytics_events``: ``workflow_executed`` per finished execution (``models.engine.runs``) and
  ``step_executed`` per step outcome (``models.engine.step_events``), each with its status and
  duration in milliseconds;
* ``integration_usage``: one document per outside call (``kernel.usage``), with the
  model, tokens and cost in USD when the call was a model's.

Every reader is scoped to the caller's workspace (the CLI operator without
``--workspace`` reads all of them), needs ``analytics:read``, and takes a window
``since <= timestamp < until`` of at most ``MAX_WINDOW_DAYS``, with a UTC offset on each
bound (a naive time is refused: its meaning depends on where it was typed).

Percentiles (p50, p95) are the nearest-rank kind (the smallest value with at least p of
the values at or below it), computed by the server with ``$percentile`` (MongoDB 7.0+,
and the MongoDB-wire store of the tests and dev mode). A server without it (older
MongoDB) gets them computed here over a projection of the durations, bounded to
``MAX_SAMPLES`` documents per query (then ``sampled`` says so).
"""

from __future__ import annotations

import datetime as dt
import math
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pymongo.errors import OperationFailure

from shiftflow.kernel.mongo import ANALYTICS_EVENTS, INTEGRATION_USAGE
from shiftflow.models.manage.access import Principal
from shiftflow.models.manage.plain import stamp
from shiftflow.models.manage.problems import InvalidInput
from shiftflow.models.tables.base import utcnow
from shiftflow.models.tables.workflows import Workflow

PERMISSION = "analytics:read"
#: The longest window one request reads (the events are kept a year by default).
MAX_WINDOW_DAYS = 366
#: The window when none is given: the last seven days.
DEFAULT_WINDOW = dt.timedelta(days=7)
#: Groups returned at most (workflows, steps, integration actions, models).
MAX_GROUPS = 1000
#: Durations read per query when percentiles are computed here, not by the server.
MAX_SAMPLES = 200_000
#: The percentiles reported, as fractions.
PERCENTILES = (0.5, 0.95)

_OFFSET = re.compile(r"([Zz]|[+-]\d{2}:?\d{2})$")


@dataclass(frozen=True)
class Window:
    """``since <= timestamp < until``, naive UTC (as the documents store it)."""

    since: dt.datetime
    until: dt.datetime

    def as_dict(self) -> dict[str, Any]:
        """The window as RFC 3339 text."""
        return {"since": stamp(self.since), "until": stamp(self.until)}


def _bound(value: Any, field: str) -> dt.datetime:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise InvalidInput(field, "a naive datetime is ambiguous: give it a UTC offset (Z or +HH:MM)")
        return value.astimezone(dt.UTC).replace(tzinfo=None)
    text = str(value).strip()
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(field, f"{text[:60]!r} is not an RFC 3339 date-time, e.g. 2026-01-31T12:00:00Z") from None
    if parsed.tzinfo is None or not _OFFSET.search(text):
        raise InvalidInput(field, f"{text[:60]!r} has no UTC offset: add Z or +HH:MM")
    try:
        return parsed.astimezone(dt.UTC).replace(tzinfo=None)
    except OverflowError:
        raise InvalidInput(field, f"{text[:60]!r} is out of range") from None


def window(since: Any = None, until: Any = None, *, now: dt.datetime | None = None) -> Window:
    """The window of a request: ``until`` defaults to now, ``since`` to seven days before it.

    Raises:
        InvalidInput: a bound is not a date-time with a UTC offset (naming ``since`` or
            ``until``), ``since`` is not before ``until``, or the window is longer than
            ``MAX_WINDOW_DAYS``.
    """
    end = _bound(until, "until") if until not in (None, "") else (now or utcnow())
    start = _bound(since, "since") if since not in (None, "") else end - DEFAULT_WINDOW
    if start >= end:
        raise InvalidInput("since", f"must be before until ({stamp(end)}), got {stamp(start)}")
    if end - start > dt.timedelta(days=MAX_WINDOW_DAYS):
        raise InvalidInput("since", f"the window is longer than {MAX_WINDOW_DAYS} days: narrow since/until")
    return Window(start, end)


def _workflow_names(actor: Principal, ids: Sequence[str]) -> dict[str, str]:
    if not ids:
        return {}
    query = Workflow.select(Workflow.id, Workflow.name).where(Workflow.id.in_(list(ids)))
    if actor.workspace_id is not None:
        query = query.where(Workflow.workspace == actor.workspace_id)
    return {str(row.id): row.name for row in query}


def _match(actor: Principal, span: Window, workflow_id: Any, **extra: Any) -> dict[str, Any]:
    match: dict[str, Any] = {"timestamp": {"$gte": span.since, "$lt": span.until}, **extra}
    if actor.workspace_id is not None:
        match["workspaceId"] = str(actor.workspace_id)
    if workflow_id not in (None, ""):
        try:
            wanted = workflow_id if isinstance(workflow_id, uuid.UUID) else uuid.UUID(str(workflow_id))
        except ValueError:
            raise InvalidInput("workflow_id", f"{str(workflow_id)[:60]!r} is not a workflow id") from None
        if not _workflow_names(actor, [str(wanted)]):
            raise InvalidInput("workflow_id", f"no workflow {wanted} in this workspace")
        match["workflowId"] = str(wanted)
    return match


def nearest_rank(values: Sequence[float], p: float) -> float | None:
    """The nearest-rank percentile ``p`` (0 < p <= 1) of ``values``; None when empty."""
    ordered = sorted(values)
    if not ordered:
        return None
    return float(ordered[max(0, math.ceil(p * len(ordered)) - 1)])


def _grouped(collection: Any, match: Mapping[str, Any], key: Mapping[str, str], sums: Mapping[str, Any],
             duration: str) -> tuple[list[dict[str, Any]], bool]:
    """``$group`` of the matching documents by ``key`` with ``sums`` and the duration
    percentiles (``p``: a list matching ``PERCENTILES``, None entries when no duration).

    Returns:
        The groups, and whether the percentiles came from a bounded sample (older servers).
    """
    group = {"_id": dict(key), "count": {"$sum": 1}, **sums}
    percentile = {"$percentile": {"input": f"${duration}", "p": list(PERCENTILES), "method": "approximate"}}
    pipeline: list[dict[str, Any]] = [{"$match": dict(match)}, {"$group": {**group, "p": percentile}},
                                      {"$limit": MAX_GROUPS}]
    try:
        return list(collection.aggregate(pipeline)), False
    except OperationFailure as exc:
        if "percentile" not in str(exc).lower() and exc.code not in (15952, 168, 40234):
            raise
    # No $percentile (MongoDB before 7.0): the counts from the server, the percentiles here.
    rows = list(collection.aggregate([{"$match": dict(match)}, {"$group": group}, {"$limit": MAX_GROUPS}]))
    projection = {**{path.lstrip("$"): 1 for path in key.values()}, duration: 1, "_id": 0}
    samples: dict[tuple[Any, ...], list[float]] = {}
    seen = 0
    for doc in collection.find(dict(match), projection).limit(MAX_SAMPLES):
        seen += 1
        value = _path(doc, duration)
        if isinstance(value, int | float) and not isinstance(value, bool):
            group_key = tuple(_path(doc, path.lstrip("$")) for path in key.values())
            samples.setdefault(group_key, []).append(float(value))
    for row in rows:
        values = samples.get(tuple(row["_id"].get(name) for name in key), [])
        row["p"] = [nearest_rank(values, p) for p in PERCENTILES]
    return rows, seen >= MAX_SAMPLES


def _path(doc: Mapping[str, Any], dotted: str) -> Any:
    value: Any = doc
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def _durations(row: Mapping[str, Any]) -> dict[str, float | None]:
    p = row.get("p") or [None] * len(PERCENTILES)
    return {"p50": _number(p[0]), "p95": _number(p[1])}


def _number(value: Any) -> float | None:
    return round(float(value), 3) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _rate(ok: int, total: int) -> float | None:
    return round(ok / total, 6) if total else None


def workflow_stats(actor: Principal, mongo_db: Any, *, since: Any = None, until: Any = None,
                   workflow_id: Any = None) -> dict[str, Any]:
    """Per workflow: executions finished in the window, how many succeeded, the success
    rate, and the p50/p95 duration (ms) from trigger to outcome.

    Raises:
        Forbidden: the caller lacks ``analytics:read``.
        InvalidInput: a bad window or an unknown ``workflow_id`` (named).
        pymongo.errors.PyMongoError: MongoDB could not be read.
    """
    actor.require(PERMISSION)
    span = window(since, until)
    match = _match(actor, span, workflow_id, event="workflow_executed")
    if mongo_db is None:
        return {**span.as_dict(), "items": [], "sampled": False}
    rows, sampled = _grouped(mongo_db[ANALYTICS_EVENTS], match, {"workflow_id": "$workflowId"},
                             {"succeeded": {"$sum": {"$cond": [{"$eq": ["$properties.status", "succeeded"]}, 1, 0]}}},
                             "properties.duration")
    names = _workflow_names(actor, [str(r["_id"]["workflow_id"]) for r in rows])
    items = [
        {"workflow_id": r["_id"]["workflow_id"], "workflow_name": names.get(str(r["_id"]["workflow_id"])),
         "executions": r["count"], "succeeded": r["succeeded"], "failed": r["count"] - r["succeeded"],
         "success_rate": _rate(r["succeeded"], r["count"]), "duration_ms": _durations(r)}
        for r in rows if str(r["_id"]["workflow_id"]) in names
    ]
    items.sort(key=lambda i: (i["workflow_name"] or "", i["workflow_id"]))
    return {**span.as_dict(), "items": items, "sampled": sampled}


def step_stats(actor: Principal, mongo_db: Any, *, since: Any = None, until: Any = None,
               workflow_id: Any = None) -> dict[str, Any]:
    """Per workflow and step: outcomes in the window (each fan-out item counts), how many
    succeeded, the success rate and the p50/p95 duration (ms) of the step's run.

    Raises:
        Forbidden, InvalidInput, PyMongoError: as ``workflow_stats``.
    """
    actor.require(PERMISSION)
    span = window(since, until)
    match = _match(actor, span, workflow_id, event="step_executed")
    if mongo_db is None:
        return {**span.as_dict(), "items": [], "sampled": False}
    rows, sampled = _grouped(
        mongo_db[ANALYTICS_EVENTS], match,
        {"workflow_id": "$workflowId", "step_id": "$properties.stepId", "step_type": "$properties.type"},
        {"succeeded": {"$sum": {"$cond": [{"$eq": ["$properties.status", "succeeded"]}, 1, 0]}}},
        "properties.duration")
    names = _workflow_names(actor, sorted({str(r["_id"]["workflow_id"]) for r in rows}))
    items = [
        {"workflow_id": r["_id"]["workflow_id"], "workflow_name": names.get(str(r["_id"]["workflow_id"])),
         "step_id": str(r["_id"].get("step_id")), "step_type": str(r["_id"].get("step_type")),
         "runs": r["count"], "succeeded": r["succeeded"], "failed": r["count"] - r["succeeded"],
         "success_rate": _rate(r["succeeded"], r["count"]), "duration_ms": _durations(r)}
        for r in rows if str(r["_id"]["workflow_id"]) in names
    ]
    items.sort(key=lambda i: (i["workflow_name"] or "", i["workflow_id"], i["step_id"]))
    return {**span.as_dict(), "items": items, "sampled": sampled}


def integration_usage(actor: Principal, mongo_db: Any, *, since: Any = None, until: Any = None,
                      workflow_id: Any = None) -> dict[str, Any]:
    """Per integration and action: calls in the window, successes, rate-limited calls and
    the p50/p95 duration (ms) of a call.

    Raises:
        Forbidden, InvalidInput, PyMongoError: as ``workflow_stats``.
    """
    actor.require(PERMISSION)
    span = window(since, until)
    match = _match(actor, span, workflow_id)
    if mongo_db is None:
        return {**span.as_dict(), "items": [], "sampled": False}
    rows, sampled = _grouped(
        mongo_db[INTEGRATION_USAGE], match, {"integration": "$integrationId", "action": "$action"},
        {"succeeded": {"$sum": {"$cond": [{"$eq": ["$success", True]}, 1, 0]}},
         "rate_limited": {"$sum": {"$cond": [{"$eq": ["$rateLimit", True]}, 1, 0]}}},
        "duration")
    items = [
        {"integration": str(r["_id"].get("integration")), "action": str(r["_id"].get("action")),
         "calls": r["count"], "succeeded": r["succeeded"], "failed": r["count"] - r["succeeded"],
         "rate_limited": r["rate_limited"], "success_rate": _rate(r["succeeded"], r["count"]),
         "duration_ms": _durations(r)}
        for r in rows
    ]
    items.sort(key=lambda i: (i["integration"], i["action"]))
    return {**span.as_dict(), "items": items, "sampled": sampled}


def costs(actor: Principal, mongo_db: Any, *, since: Any = None, until: Any = None,
          workflow_id: Any = None) -> dict[str, Any]:
    """Per workspace and model: model calls in the window, tokens in and out, and their
    cost in USD (calls whose cost is unknown are counted in ``unpriced_calls``).

    Raises:
        Forbidden, InvalidInput, PyMongoError: as ``workflow_stats``.
    """
    actor.require(PERMISSION)
    span = window(since, until)
    match = _match(actor, span, workflow_id, model={"$type": "string"})
    if mongo_db is None:
        return {**span.as_dict(), "items": [], "total_cost_usd": 0.0}
    pipeline = [
        {"$match": match},
        {"$group": {"_id": {"workspace_id": "$workspaceId", "model": "$model"}, "calls": {"$sum": 1},
                    "tokens_in": {"$sum": "$tokensIn"}, "tokens_out": {"$sum": "$tokensOut"},
                    "cost_usd": {"$sum": "$costUsd"},
                    "unpriced": {"$sum": {"$cond": [{"$eq": [{"$type": "$costUsd"}, "double"]}, 0, 1]}}}},
        {"$limit": MAX_GROUPS},
    ]
    items = [
        {"workspace_id": str(r["_id"]["workspace_id"]), "model": str(r["_id"]["model"]), "calls": r["calls"],
         "tokens_in": int(r["tokens_in"] or 0), "tokens_out": int(r["tokens_out"] or 0),
         "cost_usd": round(float(r["cost_usd"] or 0), 6), "unpriced_calls": r["unpriced"]}
        for r in mongo_db[INTEGRATION_USAGE].aggregate(pipeline)
    ]
    items.sort(key=lambda i: (i["workspace_id"], i["model"]))
    return {**span.as_dict(), "items": items, "total_cost_usd": round(sum(i["cost_usd"] for i in items), 6)}


#: The readers by report name (the CLI's subcommands, the API's paths).
READERS = {"workflows": workflow_stats, "steps": step_stats, "integrations": integration_usage, "costs": costs}
