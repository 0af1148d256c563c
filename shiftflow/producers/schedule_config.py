"""Schedule configuration: turn what a person typed (CLI) or wrote (a definition) into rows.

Validation errors are ``ScheduleError`` whose message starts with the field, e.g.
``cron: minute: 61 is out of range 0-59`` or ``catch-up: 'sometimes' is not skip, once,
all or a number``. A definition's trigger may carry a schedule:

.. code-block:: yaml

    trigger: {type: schedule, cron: "0 9 * * MON-FRI", timezone: Europe/Berlin,
              catch_up: once, overlap: skip}

``sync_definition_schedules`` keeps one ``Schedule`` row (key ``definition``) per
active workflow whose current definition says so; ``add_schedule`` adds more by hand.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import asdict, dataclass
from typing import Any

import peewee

from shiftflow.kernel.cron import (
    EPOCH,
    IntervalSpec,
    OnceSpec,
    ScheduleError,
    Spec,
    next_fire,
    parse,
    parse_duration,
    parse_time,
    zone,
)
from shiftflow.kernel.db import database
from shiftflow.models.schedules import Schedule
from shiftflow.models.workflows import Workflow, WorkflowVersion
from shiftflow.producers.firing import CATCH_UP, OVERLAP

log = logging.getLogger(__name__)
UTC = dt.UTC
#: The key of the schedule a workflow's definition declares.
DEFINITION_KEY = "definition"
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


def first_slot(config: ScheduleConfig, now: dt.datetime) -> dt.datetime | None:
    """The first slot after ``now`` (and at or after ``start_at``), None if there is none."""
    after = now if config.start_at is None else max(now, config.start_at - dt.timedelta(microseconds=1))
    slot = next_fire(config.spec(), after, zone(config.timezone))
    if slot is not None and config.end_at is not None and slot > config.end_at:
        return None
    return slot


def _naive(value: dt.datetime | None) -> dt.datetime | None:
    return None if value is None else value.astimezone(UTC).replace(tzinfo=None)


def row_fields(config: ScheduleConfig, now: dt.datetime) -> dict[str, Any]:
    """The ``Schedule`` columns for ``config``, with the first ``next_fire_at`` after ``now``."""
    return {
        "kind": config.kind,
        "cron_expression": config.cron,
        "interval_seconds": config.interval_seconds,
        "run_at": _naive(config.run_at),
        "timezone": config.timezone,
        "catch_up": config.catch_up,
        "max_catch_up": config.max_catch_up,
        "overlap": config.overlap,
        "start_at": _naive(config.start_at),
        "end_at": _naive(config.end_at),
        "jitter_seconds": config.jitter_seconds,
        "next_fire_at": _naive(first_slot(config, now)),
        "pending_fire_at": None,
    }


def add_schedule(
    workflow: Workflow, config: ScheduleConfig, *, key: str = "default", now: dt.datetime
) -> Schedule:
    """Create a schedule of ``workflow`` named ``key``.

    Raises:
        ScheduleError: ``key: ...`` when the workflow already has a schedule with that key.
    """
    try:
        with database.atomic():
            return Schedule.create(
                workspace=workflow.workspace_id, workflow=workflow.id, key=key, **row_fields(config, now)
            )
    except peewee.IntegrityError:
        raise ScheduleError(f"key: workflow {workflow.name!r} already has a schedule named {key!r}") from None


def set_active(schedule: Schedule, active: bool, *, now: dt.datetime) -> Schedule:
    """Pause or resume a schedule. Resuming starts from the next slot after ``now``:
    slots that passed while paused do not fire (pausing is not downtime)."""
    schedule.is_active = active
    schedule.pending_fire_at = None
    if active:
        config = config_of(schedule)
        schedule.next_fire_at = _naive(first_slot(config, now))
    schedule.save()
    return schedule


def config_of(row: Schedule) -> ScheduleConfig:
    """The configuration a row holds."""

    def aware(value: dt.datetime | None) -> dt.datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)

    return ScheduleConfig(
        row.kind,
        row.cron_expression,
        row.interval_seconds,
        aware(row.run_at),
        row.timezone,
        row.catch_up,
        row.max_catch_up,
        row.overlap,
        aware(row.start_at),
        aware(row.end_at),
        row.jitter_seconds,
    )


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


def sync_definition_schedules(now: dt.datetime) -> int:
    """Keep the ``definition`` schedule of every workflow in step with its current definition.

    A new or changed schedule gets its first slot after ``now``; an unchanged one is
    left alone (its ``next_fire_at`` keeps counting). A workflow whose trigger is no
    longer a schedule has its ``definition`` schedule deactivated. Invalid triggers are
    logged and skipped (the definition itself is already stored).

    Returns:
        The number of rows created, changed or deactivated.
    """
    changed = 0
    rows = (
        Workflow.select(Workflow, WorkflowVersion.definition)
        .join(
            WorkflowVersion,
            on=(
                (WorkflowVersion.workflow == Workflow.id)
                & (WorkflowVersion.version == Workflow.current_version)
            ),
        )
        .where(Workflow.trigger_type == "SCHEDULE")
        .objects()
    )
    declared = set()
    for workflow in rows:
        trigger = (getattr(workflow, "definition", None) or {}).get("trigger") or {}
        try:
            config = definition_config(trigger)
        except ScheduleError as exc:
            log.error("workflow %s (%s): %s", workflow.name, workflow.id, exc)
            continue
        declared.add(workflow.id)
        existing = Schedule.get_or_none(workflow=workflow.id, key=DEFINITION_KEY)
        if existing is None:
            add_schedule(workflow, config, key=DEFINITION_KEY, now=now)
            changed += 1
        elif asdict(config_of(existing)) != asdict(config) or not existing.is_active:
            Schedule.update(is_active=True, updated_at=_naive(now), **row_fields(config, now)).where(
                Schedule.id == existing.id
            ).execute()
            changed += 1
    condition = (Schedule.key == DEFINITION_KEY) & Schedule.is_active
    if declared:
        condition &= Schedule.workflow.not_in(declared)
    return changed + Schedule.update(is_active=False, updated_at=_naive(now)).where(condition).execute()


__all__ = [
    "CATCH_UP",
    "DEFINITION_KEY",
    "ScheduleConfig",
    "add_schedule",
    "build_config",
    "config_of",
    "definition_config",
    "first_slot",
    "parse_catch_up",
    "parse_overlap",
    "row_fields",
    "set_active",
    "sync_definition_schedules",
]
