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
from dataclasses import asdict
from typing import Any

import peewee

from shiftflow.kernel.cron import ScheduleError, next_fire, zone
from shiftflow.kernel.db import database
from shiftflow.kernel.triggers import (
    DEFAULT_MAX_CATCH_UP,
    ScheduleConfig,
    build_config,
    definition_config,
    parse_catch_up,
    parse_overlap,
)
from shiftflow.models.tables.schedules import Schedule
from shiftflow.models.tables.workflows import Workflow, WorkflowVersion

log = logging.getLogger(__name__)
UTC = dt.UTC
#: The key of the schedule a workflow's definition declares.
DEFINITION_KEY = "definition"


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
    "DEFAULT_MAX_CATCH_UP",
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
