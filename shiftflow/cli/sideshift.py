"""``shiftflow sideshift``: orders, reconciliation, polling, seed 000 import, local fakes.

shiftflow sideshift orders [--state NEEDS_RECONCILIATION] [--workspace W] [--json]
shiftflow sideshift reconcile ORDER --shift-id ID     # the shift the operator found
shiftflow sideshift reconcile ORDER --none            # no shift was created
shiftflow sideshift poll [ORDER ...] [--due]
shiftflow sideshift import-seed000 FILE [--workspace W] [--settle-address A] [--manual]
shiftflow sideshift fakes [--fast] [--reused-quote accept] [--unknown-shift-status 400] ...
                                                      # fake SideShift + price API (paper trading)
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from shiftflow.cli.interrupt import wait_for_stop_signal
from shiftflow.cli.main import bind, settings_from_args
from shiftflow.kernel.errors import SettingsError


def _setup(args: argparse.Namespace) -> Any:
    from shiftflow.kernel.broker import build_broker, install
    from shiftflow.kernel.redis_handle import configure_redis

    settings = settings_from_args(args)
    bind(settings)
    configure_redis(settings.redis_url)
    if not settings.dev:
        install(build_broker(settings, worker=False))
    return settings


def _publish(settings: Any, outgoing: list[Any]) -> None:
    from shiftflow.kernel.enqueue import send_all

    if outgoing and not settings.dev:
        send_all(outgoing)


def _row(order: Any) -> dict[str, Any]:
    from shiftflow.models.swaps.orders import summary
    from shiftflow.models.tables.base import fk

    out = summary(order)
    out.update(
        {
            "created_at": order.created_at.isoformat(),
            "execution_id": str(fk(order, "execution") or ""),
            "step_id": order.step_id,
            "creating": order.state == "PENDING_CREATE" and bool(order.create_sent_at),
            "error": order.error,
        }
    )
    return out


def _orders(args: argparse.Namespace) -> int:
    from shiftflow.models.swaps import order_ops

    _setup(args)
    rows = order_ops.list_orders(state=args.state, workspace=args.workspace, limit=args.limit)
    if args.json:
        print(json.dumps([_row(o) for o in rows], indent=2, default=str))
        return 0
    for order in rows:
        state = "CREATING" if order.state == "PENDING_CREATE" and order.create_sent_at else order.state
        print(
            f"{order.id}  {state:<20} {order.shift_type:<8} {order.deposit_amount or '-':>12} "
            f"{order.deposit_coin.upper():<5} -> {order.settle_coin.upper():<5} shift {order.shift_id or '-':<20} "
            f"{order.sideshift_status or '-':<10} {order.external_id}"
        )
        if order.state == "NEEDS_RECONCILIATION" and order.error:
            print(f"    {order.error}")
    print(f"{len(rows)} order(s)")
    return 0


def _reconcile(args: argparse.Namespace) -> int:
    from shiftflow.models.swaps import order_ops

    settings = _setup(args)
    order, outgoing = order_ops.reconcile(args.order, shift_id=args.shift_id, none=args.none, by=args.by)
    _publish(settings, outgoing)
    if args.none:
        print(
            f"order {order.id} FAILED: no shift was created; its step failed (re-run it to place a new order)"
        )
    else:
        print(
            f"order {order.id} {order.state}: shift {order.shift_id} ({order.sideshift_status}); polling continues"
        )
    return 0


def _poll(args: argparse.Namespace) -> int:
    from shiftflow.models.swaps import order_ops, order_status
    from shiftflow.models.swaps.orders import get_order

    settings = _setup(args)
    if not args.orders and not args.due:
        raise SettingsError("sideshift poll needs order ids or --due")
    results = [(o, order_status.poll_order(o)) for o in map(get_order, args.orders)]
    if args.due:
        results += order_ops.poll_due(args.limit)
    for order, outgoing in results:
        _publish(settings, outgoing)
        fresh = type(order).get_by_id(order.id)
        print(f"{fresh.id}  {fresh.state:<20} {fresh.sideshift_status or '-'}")
    print(f"{len(results)} order(s) polled")
    return 0


def _import_seed000(args: argparse.Namespace) -> int:
    from shiftflow.kernel import seed000
    from shiftflow.kernel.definition import parse_file

    seed = parse_file(args.file)
    definition = seed000.convert(
        seed,
        settle_address=args.settle_address,
        refund_address=args.refund_address,
        swap_type=args.type,
        cron=None if args.manual else args.cron,
    )
    if args.print:
        import yaml

        print(yaml.safe_dump(definition, sort_keys=False), end="")
        return 0
    from shiftflow.models.manage import catalog
    from shiftflow.models.tables.tenancy import User
    from shiftflow.models.tables.workflows import Workflow

    _setup(args)
    workspace = catalog.ensure_workspace(args.workspace)
    applied = catalog.apply_definition(workspace, definition, activate=seed000.active(seed))
    if args.user:
        key = "wallet_address" if args.user.startswith("0x") else "email"
        user, _ = User.get_or_create(**{key: args.user})
        Workflow.update(created_by=user.id).where(Workflow.id == applied.workflow.id).execute()
    print(
        f"workflow {applied.workflow.name!r} ({applied.workflow.id}) version {applied.version}"
        + ("" if applied.changed else " (unchanged)")
        + f": {len(definition['steps'])} steps, "
        f"max_executions {definition.get('max_executions', '-')}, trigger {definition['trigger']['type']}"
    )
    return 0


def _fakes(args: argparse.Namespace) -> int:
    from shiftflow.fakes.prices import FakePriceServer
    from shiftflow.fakes.sideshift import (
        FakeBehaviour,
        FakeSideShift,
        FakeSideShiftServer,
        SystemClock,
        Timings,
    )

    timings = Timings(confirm=5, process=2, settle=3, refund_start=2, refund_confirm=3) if args.fast else None
    behaviour = FakeBehaviour(
        reused_quote=args.reused_quote,
        unknown_shift_status=args.unknown_shift_status,
        malformed_shift_id_status=args.malformed_shift_id_status,
        retry_after_header=not args.no_retry_after,
        excess_decimals=args.excess_decimals,
        commission_format=args.commission_format,
    )
    state = FakeSideShift(
        clock=SystemClock(),
        auto_deposit=True,
        timings=timings,
        affiliate_id=args.affiliate_id,
        behaviour=behaviour,
    )
    with (
        FakeSideShiftServer(state, port=args.sideshift_port) as sideshift,
        FakePriceServer(port=args.price_port) as prices,
    ):
        print(
            "fake SideShift (paper trading: every order is funded at once and settles on its own) and a fake "
            "price API on 127.0.0.1. Point the workers at them:\n"
        )
        print(f"  export SHIFTFLOW_SIDESHIFT_BASE_URL={sideshift.base_url}")
        print(f"  export SHIFTFLOW_SIDESHIFT_AFFILIATE_ID={args.affiliate_id}")
        print(f"  export SHIFTFLOW_PRICE_API_URL={prices.url}\n")
        root = sideshift.base_url.rsplit("/api", 1)[0]
        print(f"where SideShift's documentation is silent the fake answers: {json.dumps(behaviour.to_json())}")
        print(f"counters: curl {root}/_fake/counters   behaviour: curl {root}/_fake/behaviour   Stop: Ctrl-C", flush=True)
        wait_for_stop_signal()
    return 0


def register(sub: Any) -> None:
    """Add ``shiftflow sideshift ...`` to the ``shiftflow`` parser."""
    from shiftflow.kernel.seed000 import DEFAULT_CRON
    from shiftflow.models.swaps.order_ops import LISTABLE_STATES

    group = sub.add_parser(
        "sideshift", help="SideShift orders: list, reconcile, poll; seed 000 import; fakes"
    )
    cmds = group.add_subparsers(dest="sideshift_command", required=True, metavar="ACTION")

    p = cmds.add_parser("orders", help="list orders, newest first")
    p.add_argument(
        "--state", choices=LISTABLE_STATES, help="only this state (CREATING: sent, answer not recorded)"
    )
    p.add_argument("--workspace", help="only this workspace (slug)")
    p.add_argument("--limit", type=int, default=50, help="how many (default 50)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_orders)

    p = cmds.add_parser(
        "reconcile", help="settle an order in NEEDS_RECONCILIATION with what you found on SideShift"
    )
    p.add_argument("order", help="order id (or a unique prefix)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--shift-id", help="the shift SideShift created for it (its externalId is the order's)"
    )
    which.add_argument(
        "--none", action="store_true", help="no shift was created: fail the order and its step"
    )
    p.add_argument("--by", default="operator", help="who decides (recorded)")
    p.set_defaults(func=_reconcile)

    p = cmds.add_parser("poll", help="poll orders now (ids, or --due: every open order whose poll is due)")
    p.add_argument("orders", nargs="*", help="order ids")
    p.add_argument(
        "--due",
        action="store_true",
        help="every open order whose next poll is due, after settling orders whose step ended before "
        "sending them (FAILED) or before recording the answer (NEEDS_RECONCILIATION)",
    )
    p.add_argument("--limit", type=int, default=100, help="most due orders to poll (default 100)")
    p.set_defaults(func=_poll)

    p = cmds.add_parser(
        "import-seed000", help="store a seed 000 workflow (conditions/actions JSON) as a definition"
    )
    p.add_argument("file", help="the seed workflow, JSON or YAML")
    p.add_argument("--workspace", default="default", help="workspace slug (created if missing)")
    p.add_argument("--settle-address", help="settle address for every swap (when the seed has none)")
    p.add_argument("--refund-address", help="refund address for every swap")
    p.add_argument(
        "--type", choices=("fixed", "variable"), help="shift type of swaps that do not say (default fixed)"
    )
    p.add_argument(
        "--cron", default=DEFAULT_CRON, help=f"when to check the conditions (default {DEFAULT_CRON!r})"
    )
    p.add_argument("--manual", action="store_true", help="manual trigger instead of a schedule")
    p.add_argument("--user", help="owner of the workflow (email or 0x wallet), told by notifications")
    p.add_argument("--print", action="store_true", help="print the definition (YAML) instead of storing it")
    p.set_defaults(func=_import_seed000)

    p = cmds.add_parser(
        "fakes", help="serve a fake SideShift and a fake price API on 127.0.0.1 (paper trading)"
    )
    p.add_argument(
        "--sideshift-port", type=int, default=0, help="port of the fake SideShift (default: free port)"
    )
    p.add_argument(
        "--price-port", type=int, default=0, help="port of the fake price API (default: free port)"
    )
    p.add_argument("--affiliate-id", default="PaperTrade1", help="the fake account id")
    p.add_argument("--fast", action="store_true", help="orders settle in about 10 s instead of 3.5 min")
    # Where SideShift's documentation is silent (docs/sideshift.md section 12): pick the answer.
    p.add_argument(
        "--reused-quote",
        choices=("refuse", "accept"),
        default="refuse",
        help="a second fixed shift from one quote: refused (400) or created (default refuse)",
    )
    p.add_argument(
        "--unknown-shift-status",
        type=int,
        choices=(404, 400),
        default=404,
        help="status for a shift id the fake does not know (default 404)",
    )
    p.add_argument(
        "--malformed-shift-id-status",
        type=int,
        choices=(404, 400),
        default=400,
        help="status for a shift id that is not 20 hex characters (default 400)",
    )
    p.add_argument("--no-retry-after", action="store_true", help="answer 429s without a Retry-After header")
    p.add_argument(
        "--excess-decimals",
        choices=("refuse", "round"),
        default="refuse",
        help="an amount with more decimals than its coin: refused (400) or rounded down (default refuse)",
    )
    p.add_argument(
        "--commission-format",
        choices=("fraction", "percent"),
        default="fraction",
        help="read commissionRate as a fraction (0.005) or a percentage (0.5) (default fraction)",
    )
    p.set_defaults(func=_fakes)
