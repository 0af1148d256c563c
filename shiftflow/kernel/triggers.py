"""Trigger specs of a definition, checked without I/O: schedules and polling sources.

The scheduler, the poller, ``shiftflow validate`` and every apply path read a trigger
through these functions, so a definition that validates is one they can run. Errors are
``ScheduleError`` whose message starts with the field (``trigger.cron: minute: 61 is out
of range 0-59``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from shiftflow.kernel.cron import (
    EPOCH,
    IntervalSpec,
    OnceSpec,
    ScheduleError,
    Spec,
    parse,
    parse_duration,
    parse_time,
    zone,
)

#: ``Schedule.catch_up`` and ``Schedule.overlap`` column values.
CATCH_UP = ("NONE", "LATEST", "ALL")
OVERLAP = ("ALLOW", "SKIP", "BUFFER_ONE")
DEFAULT_MAX_CATCH_UP = 100


@dataclass(frozen=True)
class ScheduleConfig:
    """A validated schedule: exactly one of ``cron``, ``interval_seconds``, ``run_at``."""

    kind: str
    cron: str | None = None
    interval_seconds: int | None = None
    run_at: dt.datetime | None = None
    timezone: str = "UTC"
    catch_up: str = "LATEST"
    max_catch_up: int = DEFAULT_MAX_CATCH_UP
    overlap: str = "ALLOW"
    start_at: dt.datetime | None = None
    end_at: dt.datetime | None = None
    jitter_seconds: int = 0

    def spec(self) -> Spec:
        """The spec this configuration fires on."""
        if self.kind == "CRON":
            return parse(self.cron or "")
        if self.kind == "INTERVAL":
            return IntervalSpec(self.interval_seconds or 0, self.start_at or EPOCH)
        assert self.run_at is not None
        return OnceSpec(self.run_at)


def parse_catch_up(text: str) -> tuple[str, int]:
    """``skip``, ``once``, ``all`` or a number N (catch up to N) -> (policy, max_catch_up).

    Raises:
        ScheduleError: ``catch-up: ...``.
    """
    raw = str(text).strip().lower().replace("_", "-")
    names = {
        "skip": "NONE",
        "none": "NONE",
        "once": "LATEST",
        "run-once": "LATEST",
        "latest": "LATEST",
        "all": "ALL",
    }
    if raw in names:
        return names[raw], DEFAULT_MAX_CATCH_UP
    if raw.isdigit():
        if not 1 <= int(raw) <= 100_000:
            raise ScheduleError(f"catch-up: {text!r} must be between 1 and 100000")
        return "ALL", int(raw)
    raise ScheduleError(f"catch-up: {text!r} is not skip, once, all or a number (catch up to N)")


def catch_up_text(policy: str, max_catch_up: int) -> str:
    """What a person types for a stored catch-up policy (``LATEST`` -> ``once``): the inverse of
    ``parse_catch_up``."""
    if policy == "ALL":
        return "all" if max_catch_up == DEFAULT_MAX_CATCH_UP else str(max_catch_up)
    return {"NONE": "skip", "LATEST": "once"}.get(policy, policy.lower())


def overlap_text(overlap: str) -> str:
    """What a person types for a stored overlap policy (``BUFFER_ONE`` -> ``buffer-one``)."""
    return overlap.lower().replace("_", "-")


def parse_overlap(text: str) -> str:
    """``skip``, ``buffer-one`` or ``allow`` -> the column value.

    Raises:
        ScheduleError: ``overlap: ...``.
    """
    raw = str(text).strip().upper().replace("-", "_")
    if raw not in OVERLAP:
        raise ScheduleError(f"overlap: {text!r} is not skip, buffer-one or allow")
    return raw


def build_config(
    *,
    cron: str | None = None,
    every: str | int | None = None,
    at: str | None = None,
    timezone: str = "UTC",
    catch_up: str = "once",
    overlap: str = "allow",
    start_at: str | None = None,
    end_at: str | None = None,
    jitter: str | int | None = None,
    now: dt.datetime | None = None,
) -> ScheduleConfig:
    """Validate a schedule's settings (strings as typed) into a ``ScheduleConfig``.

    Parameters:
        now: when given, a one-off time must lie after it.

    Raises:
        ScheduleError: the message starts with the field (``cron``, ``every``, ``at``,
            ``timezone``, ``catch-up``, ``overlap``, ``start-at``, ``end-at``, ``jitter``).
    """
    given = [
        name for name, value in (("cron", cron), ("every", every), ("at", at)) if value not in (None, "")
    ]
    if len(given) != 1:
        raise ScheduleError(
            "schedule: give exactly one of cron, every or at"
            + (f" (got {', '.join(given)})" if given else "")
        )
    tz = zone(timezone)
    policy, max_catch_up = parse_catch_up(catch_up)
    over = parse_overlap(overlap)
    start = parse_time(start_at, tz, "start-at") if start_at else None
    end = parse_time(end_at, tz, "end-at") if end_at else None
    if start and end and end <= start:
        raise ScheduleError("end-at: must be after start-at")
    jitter_seconds = parse_duration(str(jitter), "jitter") if jitter not in (None, "", 0, "0") else 0
    common: dict[str, Any] = {
        "timezone": timezone,
        "catch_up": policy,
        "max_catch_up": max_catch_up,
        "overlap": over,
        "start_at": start,
        "end_at": end,
        "jitter_seconds": jitter_seconds,
    }
    if cron:
        try:
            parse(cron)
        except ScheduleError as exc:
            raise ScheduleError(f"cron: {exc}") from None
        return ScheduleConfig("CRON", cron=" ".join(cron.split()), **common)
    if every not in (None, ""):
        return ScheduleConfig("INTERVAL", interval_seconds=parse_duration(str(every), "every"), **common)
    run_at = parse_time(str(at), tz, "at").replace(microsecond=0)
    if now is not None and run_at <= now:
        raise ScheduleError(f"at: {at!r} is in the past")
    return ScheduleConfig("ONCE", run_at=run_at, **common)


def definition_config(trigger: dict[str, Any]) -> ScheduleConfig:
    """The schedule a definition's ``trigger`` (type ``schedule``) declares.

    Raises:
        ScheduleError: the message names the field as ``trigger.<field>: ...``.
    """
    try:
        return build_config(
            cron=trigger.get("cron"),
            every=trigger.get("every"),
            at=trigger.get("at"),
            timezone=trigger.get("timezone", "UTC"),
            catch_up=str(trigger.get("catch_up", "once")),
            overlap=str(trigger.get("overlap", "allow")),
            start_at=trigger.get("start_at"),
            end_at=trigger.get("end_at"),
            jitter=trigger.get("jitter"),
        )
    except ScheduleError as exc:
        raise ScheduleError(f"trigger.{exc}") from None


@dataclass(frozen=True)
class PollConfig:
    """A validated polling trigger."""

    interval_seconds: int
    request: dict[str, Any]
    items: str = ""
    id: str = "id"
    cursor_param: str = ""
    cursor_field: str = ""
    headers: dict[str, str] = field(default_factory=dict)


def poll_config(trigger: dict[str, Any]) -> PollConfig:
    """Validate a definition's polling ``trigger``.

    Raises:
        ScheduleError: the message names the field (``trigger.request.url: ...``).
    """
    every = trigger.get("every", trigger.get("interval_seconds", 300))
    interval = parse_duration(str(every), "trigger.every")
    request = trigger.get("request")
    if not isinstance(request, dict) or not isinstance(request.get("url"), str) or not request["url"]:
        raise ScheduleError("trigger.request.url: a polling trigger needs request.url (a string)")
    items, ident = trigger.get("items", ""), trigger.get("id", "id")
    if not isinstance(items, str):
        raise ScheduleError("trigger.items: must be a path string like data.items")
    if not isinstance(ident, str) or not ident:
        raise ScheduleError("trigger.id: must be a path string like id")
    cursor = trigger.get("cursor") or {}
    if not isinstance(cursor, dict) or bool(cursor.get("param")) != bool(cursor.get("field")):
        raise ScheduleError("trigger.cursor: needs both param and field")
    return PollConfig(
        interval, dict(request), items, ident, str(cursor.get("param") or ""), str(cursor.get("field") or "")
    )


