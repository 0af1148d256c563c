"""``shiftflow effects``: outside calls marked ``effect: once``, and settling an unknown outcome.

shiftflow effects list [--state UNKNOWN] [--workspace W] [--execution ID] [--json]
shiftflow effects show ID [--json]
shiftflow effects settle ID --done --result JSON       # the call happened: this is its result
shiftflow effects settle ID --failed --reason TEXT     # it did not happen (or failed): fail the step
shiftflow effects settle ID --retry                    # make the call once more, deliberately

The same functions as the management API (``models.manage.effects``), as the operator, with
the same audit entries. Exit codes: 0 done, 1 the effect does not allow it (already
settled, its step still running...), 2 bad usage (the message names the flag).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from shiftflow.cli.operator import connect, guarded, operator, print_json
from shiftflow.cli.publish import publish_after_commit
from shiftflow.models.manage.problems import InvalidInput


def _line(item: dict[str, Any]) -> str:
    step = item["step_id"] + (f"#{item['iteration']}" if item["iteration"] else "")
    return (f"{item['id']}  {item['state']:<8} {item['kind']:<16} step {step:<20} ({item['step_status'] or 'gone'})  "
            f"execution {item['execution_id']}  sent {item['attempts']}x  {item['updated_at']}")


def _list(args: argparse.Namespace) -> int:
    from shiftflow.models.manage import effects

    connect(args)
    page = effects.list_effects(operator(args), state=args.state, execution_id=args.execution, limit=args.limit)
    if args.json:
        print_json(page.as_dict())
        return 0
    for item in page.items:
        print(_line(item))
    print(f"{len(page.items)} effect(s)" + (" (more: narrow the filter or raise --limit)" if page.next_cursor else ""))
    if any(i["state"] == "UNKNOWN" for i in page.items):
        print("settle an UNKNOWN one: shiftflow effects settle ID --done --result JSON | --failed --reason TEXT "
              "| --retry")
    return 0


def _show(args: argparse.Namespace) -> int:
    from shiftflow.models.manage import effects

    connect(args)
    detail = effects.effect_detail(operator(args), args.effect)
    if args.json:
        print_json(detail)
        return 0
    print(_line(detail))
    if detail["result"] is not None:
        print(f"  result: {json.dumps(detail['result'])[:500]}")
    if detail["error"]:
        print(f"  error: {detail['error']}")
    return 0


def _settle(args: argparse.Namespace) -> int:
    from shiftflow.models.manage import effects

    extra: dict[str, Any] = {}
    if args.result is not None:
        try:
            extra["result"] = json.loads(args.result)
        except json.JSONDecodeError as exc:
            raise InvalidInput("result", f"not valid JSON: {exc}") from None
    outcome = "done" if args.done else "failed" if args.failed else "retry"
    settings = connect(args)
    effect, outgoing = effects.settle(operator(args), args.effect, outcome, reason=args.reason, by=args.by,
                                         **extra)
    publish_after_commit(settings, outgoing)
    then = {
        "done": "its step succeeded with that result; the execution goes on",
        "failed": "its step failed",
        "retry": "its step runs again and makes the call once more",
    }[outcome]
    print(f"effect {effect['id']} settled as {outcome} ({effect['state']}): {then}")
    return 0


def register(sub: Any) -> None:
    """Add ``shiftflow effects`` to the ``shiftflow`` parser."""
    from shiftflow.models.tables.side_effects import EFFECT_STATES

    group = sub.add_parser("effects", help="outside calls marked `effect: once`: list them, settle an unknown outcome")
    cmds = group.add_subparsers(dest="effects_command", required=True, metavar="ACTION")

    p = cmds.add_parser("list", help="list effects, newest first")
    p.add_argument("--state", type=str.upper, choices=EFFECT_STATES, help="only this state (UNKNOWN: needs you)")
    p.add_argument("--workspace", help="only this workspace (slug)")
    p.add_argument("--execution", metavar="ID", help="only this execution's effects")
    p.add_argument("--limit", type=int, default=50, help="how many (1-200, default 50)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=guarded(_list))

    p = cmds.add_parser("show", help="show one effect with its result or error")
    p.add_argument("effect", metavar="ID", help="effect id")
    p.add_argument("--workspace", help="refuse unless the effect belongs to this workspace")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=guarded(_show))

    p = cmds.add_parser("settle", help="settle a call whose outcome is unknown (audited)")
    p.add_argument("effect", metavar="ID", help="effect id")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--done", action="store_true",
                       help="the call happened: its step succeeds with --result and the execution goes on")
    which.add_argument("--failed", action="store_true", help="the call did not happen or failed: fail its step")
    which.add_argument("--retry", action="store_true", help="make the call once more (the step runs again)")
    p.add_argument("--result", metavar="JSON", help="with --done: the call's result as you found it (JSON)")
    p.add_argument("--reason", help="with --failed: why")
    p.add_argument("--by", help="who decides (recorded; default: the CLI operator)")
    p.add_argument("--workspace", help="refuse unless the effect belongs to this workspace")
    p.set_defaults(func=guarded(_settle))
