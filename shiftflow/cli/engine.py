"""Engine commands: the definition schema, validation, events, approvals, the timer loop."""

from __future__ import annotations

import argparse
import json
import threading
from typing import Any

from shiftflow.cli.main import bind, settings_from_args
from shiftflow.kernel.errors import SettingsError


def _schema(args: argparse.Namespace) -> int:
    from shiftflow.kernel.definition import SCHEMA

    print(json.dumps(SCHEMA, indent=2))
    return 0


def _validate(args: argparse.Namespace) -> int:
    from shiftflow.kernel.definition import parse_file, validate
    from shiftflow.kernel.errors import DefinitionError
    from shiftflow.kernel.runnable import check_runnable

    data = parse_file(args.file)
    try:
        definition = validate(data)
        check_runnable(definition)
    except DefinitionError as exc:
        raise DefinitionError(f"{args.file}: {exc}") from None
    print(f"{args.file}: valid ({len(definition.steps)} steps, trigger {definition.trigger_type})")
    return 0


def _broker(args: argparse.Namespace) -> Any:
    from shiftflow.kernel.broker import build_broker, install

    settings = settings_from_args(args)
    bind(settings)
    if not settings.dev:
        install(build_broker(settings, worker=False))
    return settings


def _event(args: argparse.Namespace) -> int:
    from shiftflow.kernel.enqueue import send_all
    from shiftflow.models.manage import signals
    from shiftflow.models.manage.access import Principal
    from shiftflow.models.tables.tenancy import Workspace

    _broker(args)
    try:
        data = json.loads(args.data)
    except json.JSONDecodeError as exc:
        raise SettingsError(f"--data is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise SettingsError("--data must be a JSON object")
    workspace = Workspace.get_or_none(Workspace.slug == args.workspace)
    if workspace is None:
        raise SettingsError(f"--workspace {args.workspace!r} does not exist")
    delivered, outgoing = signals.send_event(Principal.operator(workspace.id), args.key, data)
    send_all(outgoing)
    print(f"event {args.key!r} resumed {delivered['resumed']} waiting step(s)")
    return 0 if delivered["resumed"] else 1


def _approve(args: argparse.Namespace) -> int:
    from shiftflow.kernel.enqueue import send_all
    from shiftflow.models.manage import signals
    from shiftflow.models.manage.access import Principal

    _broker(args)
    _, outgoing = signals.decide_approval(Principal.operator(), args.execution, args.step,
                                          approved=not args.reject, comment=args.comment, by=args.by)
    send_all(outgoing)
    print(f"step {args.step} of {args.execution} {'rejected' if args.reject else 'approved'}")
    return 0


def _timers(args: argparse.Namespace) -> int:
    from shiftflow.consumers import timers

    _broker(args)
    print("timer loop running (waits, retry backoffs, timeouts); Ctrl-C to stop", flush=True)
    try:
        timers.run_loop(threading.Event())
    except KeyboardInterrupt:
        pass
    return 0


def register(sub: Any) -> None:
    """Add the engine commands to the ``shiftflow`` parser."""
    p = sub.add_parser(
        "schema",
        help="print the JSON Schema of workflow definitions",
        description="Print the JSON Schema every definition is checked against (the same as "
        "docs/workflow.schema.json), for editors and CI.",
    )
    p.set_defaults(func=_schema)

    p = sub.add_parser(
        "validate",
        help="validate a workflow definition file without storing it",
        description="Check a definition (YAML or JSON) as `apply` would, without a database: its shape "
        "against the schema, and that it can run (a schedule or polling trigger the scheduler accepts, "
        "references that name existing steps, variables and roots). Exit 0 when valid, 2 with the "
        "file and the field named otherwise.",
    )
    p.add_argument("file", help="the definition file (YAML or JSON)")
    p.set_defaults(func=_validate)

    p = sub.add_parser("event", help="deliver an event to the steps waiting for its key (wait_event)")
    p.add_argument("key", help="the event key the wait_event steps wait for")
    p.add_argument("--workspace", required=True, help="workspace slug (events never cross workspaces)")
    p.add_argument("--data", default="{}", help="JSON object given to the waiting steps as their output")
    p.set_defaults(func=_event)

    p = sub.add_parser("approve", help="approve (or --reject) a waiting approval step")
    p.add_argument("execution", help="execution id")
    p.add_argument("step", help="the approval step's id")
    p.add_argument("--reject", action="store_true", help="reject instead of approving (fails the step)")
    p.add_argument("--by", required=True, help="who decides (recorded in the step output)")
    p.add_argument("--comment", default="", help="why")
    p.set_defaults(func=_approve)

    p = sub.add_parser(
        "timers",
        help="run the timer loop alone (worker pools run one already)",
        description="Run only the timer loop: it wakes durable waits, retry backoffs and step timeouts "
        "(rows with a due resume_at) and publishes their steps. Every worker pool runs one already "
        "(SHIFTFLOW_TIMERS=on); run this when your pools set SHIFTFLOW_TIMERS=off.",
    )
    p.set_defaults(func=_timers)
