"""``shiftflow tools``, ``shiftflow integrations`` and ``shiftflow connections``.

The same functions as the management API (``models.manage.tools``, ``.connections``), as
the operator, writing the same audit entries (``via: cli``). Credentials are given as a
JSON file (``--credentials-file``, ``-`` for stdin), as ``--set field=value`` pairs, or
asked for: ``--ask`` prompts for each secret field of the integration without echo, so a
password never lands in the shell's history. Nothing prints a credential: connections are
shown masked, as the API shows them.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from typing import Any

from shiftflow.cli import tool_runs
from shiftflow.cli.operator import connect, guarded, json_object, operator, print_json
from shiftflow.models.manage.problems import InvalidInput


def _tools_list(args: argparse.Namespace) -> int:
    from shiftflow.models.manage import tools

    connect(args)
    rows = tools.list_tools(operator(args), category=args.category)
    if args.json:
        print_json(rows)
        return 0
    for t in rows:
        state = "enabled" if t["enabled"] else "DISABLED"
        print(f"{t['name']:<22} {t['queue']:<14} {t['effect']:<10} {state:<8} {t['usage_count']:>6}  {t['description']}")
    return 0


def _tools_show(args: argparse.Namespace) -> int:
    from shiftflow.models.manage import tools

    connect(args)
    print_json(tools.get_tool(operator(args), args.name))
    return 0


def _tools_switch(enabled: bool) -> Any:
    def run(args: argparse.Namespace) -> int:
        from shiftflow.models.manage import tools

        connect(args)
        tool = tools.set_enabled(operator(args), args.name, enabled)
        print(f"{tool['name']}: {'enabled' if tool['enabled'] else 'disabled'} in {args.workspace}")
        return 0

    return run


def _integrations_list(args: argparse.Namespace) -> int:
    from shiftflow.models.manage import tools

    connect(args)
    rows = tools.list_integrations(operator(args), category=args.category)
    if args.json:
        print_json(rows)
        return 0
    for i in rows:
        fields = ", ".join(f["name"] + ("*" if f["secret"] else "") for f in i["fields"])
        print(f"{i['key']:<12} {i['auth_type']:<8} {i['category']:<10} {fields}")
    return 0


def _integrations_show(args: argparse.Namespace) -> int:
    from shiftflow.models.manage import tools

    connect(args)
    print_json(tools.get_integration(operator(args), args.key))
    return 0


def _value(text: str) -> Any:
    """A ``--set`` value: JSON when it parses as a number, boolean or null, else the text."""
    try:
        parsed = json.loads(text)
    except ValueError:
        return text
    return parsed if isinstance(parsed, int | float | bool) or parsed is None else text


def _credentials(args: argparse.Namespace, integration_key: str | None) -> dict[str, Any] | None:
    """The credentials given on the command line (None: none given)."""
    out: dict[str, Any] | None = None
    if args.credentials_file:
        text = sys.stdin.read() if args.credentials_file == "-" else open(args.credentials_file, encoding="utf-8").read()
        out = json_object(text, "--credentials-file")
    for pair in args.set or ():
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise InvalidInput("--set", f"{pair!r}: expected field=value")
        out = {**(out or {}), name: _value(value)}
    if args.ask and integration_key:
        from shiftflow.kernel.integrations.catalogue import default_catalogue

        for field in default_catalogue().get(integration_key).fields():
            if field["secret"] and not (out or {}).get(field["name"]):
                out = {**(out or {}), field["name"]: getpass.getpass(f"{field['name']}: ")}
    return out


def _limits(args: argparse.Namespace) -> Any:
    """The connection's own rate limits from ``--limit FIELD=VALUE`` (``...``: none given;
    None: ``--no-limits``, back to the integration's)."""
    if getattr(args, "no_limits", False):
        return None
    if not args.limit:
        return ...
    out: dict[str, Any] = {}
    for item in args.limit:
        field, sep, text = item.partition("=")
        if not sep:
            raise SystemExit(f"--limit {item!r}: expected FIELD=VALUE (per_second, per_minute, burst)")
        out[field.strip()] = _value(text)
    return out


def _describe_limits(limits: dict[str, Any] | None) -> str:
    if not limits:
        return "none"
    return ", ".join(f"{k} {limits[k]:g}" for k in ("per_second", "per_minute", "burst") if k in limits)


def _show_connection(row: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(row)
        return
    print(f"{row['name']} ({row['integration']}, {row['id']}): test {row['test_status']}"
          + ("" if row["is_active"] else ", inactive"))
    for name, value in row["credentials"].items():
        print(f"  {name}: {value}")
    own = row.get("rate_limits")
    print(f"  rate limits: {_describe_limits(row.get('effective_limits'))}"
          + (f" (own: {_describe_limits(own)})" if own else " (the integration's)"))
    if row["last_error"]:
        print(f"  last error: {row['last_error']}")


def _connections_create(args: argparse.Namespace) -> int:
    from shiftflow.models.manage import connections

    settings = connect(args)
    creds = _credentials(args, args.integration) or {}
    limits = _limits(args)
    row = connections.create_connection(operator(args), args.integration, args.name, creds,
                                        rate_limits=None if limits is ... else limits, settings=settings)
    _show_connection(row, args.json)
    return 0


def _connections_list(args: argparse.Namespace) -> int:
    from shiftflow.models.manage import connections

    settings = connect(args)
    rows = connections.list_connections(operator(args), integration=args.integration, settings=settings)
    if args.json:
        print_json(rows)
        return 0
    for r in rows:
        own = f"  limits: {_describe_limits(r['rate_limits'])}" if r.get("rate_limits") else ""
        print(f"{r['name']:<24} {r['integration']:<12} {r['test_status']:<8} {r['id']}"
              + ("" if r["is_active"] else "  inactive") + own)
    return 0


def _connections_show(args: argparse.Namespace) -> int:
    from shiftflow.models.manage import connections

    settings = connect(args)
    actor = operator(args)
    _show_connection(connections.connection_dict(connections.find_connection(actor, args.connection),
                                                 settings=settings), args.json)
    return 0


def _connections_update(args: argparse.Namespace) -> int:
    from shiftflow.models.manage import connections

    settings = connect(args)
    actor = operator(args)
    row = connections.find_connection(actor, args.connection)
    active = None if args.active is None else args.active == "yes"
    changed = connections.update_connection(actor, row.id, name=args.name,
                                            credentials=_credentials(args, row.integration.key),
                                            is_active=active, rate_limits=_limits(args), settings=settings)
    _show_connection(changed, args.json)
    return 0


def _connections_test(args: argparse.Namespace) -> int:
    from shiftflow.models.manage import connections

    settings = connect(args)
    actor = operator(args)
    row = connections.find_connection(actor, args.connection)
    outcome = connections.verify_connection(actor, row.id, settings=settings)
    result = outcome["result"]
    if args.json:
        print_json(outcome)
    else:
        print(f"{row.name}: {result['status']} in {result['seconds']:.2f}s: {result['message']}")
    return 0 if result["status"] != "failed" else 1


def _connections_delete(args: argparse.Namespace) -> int:
    from shiftflow.models.manage import connections

    settings = connect(args)
    actor = operator(args)
    row = connections.find_connection(actor, args.connection)
    connections.delete_connection(actor, row.id, settings=settings)
    print(f"deleted connection {row.name} ({row.id})")
    return 0


def _credential_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--credentials-file", metavar="PATH", help="a JSON object of credentials ('-': stdin)")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE", help="one credential field (repeatable)")
    p.add_argument("--ask", action="store_true", help="prompt for the secret fields without echo")


def _limit_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--limit", action="append", metavar="FIELD=VALUE",
                   help="the connection's own rate limit over its integration's: per_second=2, per_minute=30, "
                        "burst=3 (repeatable; 0: no limit on that scale); every worker holds to it")


def register(sub: Any) -> None:
    """Add ``tools``, ``integrations`` and ``connections`` to the ``shiftflow`` parser."""
    tools = sub.add_parser("tools", help="the tool registry, and which tools a workspace has enabled")
    t_sub = tools.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = t_sub.add_parser("list", help="list tools with their queue, effect and state in the workspace")
    p.add_argument("--workspace", required=True, help="workspace slug")
    p.add_argument("--category", help="only this category")
    p.add_argument("--json", action="store_true", help="print JSON (with the schemas)")
    p.set_defaults(func=guarded(_tools_list))
    p = t_sub.add_parser("show", help="one tool with its parameter and result schemas")
    p.add_argument("name")
    p.add_argument("--workspace", required=True, help="workspace slug")
    p.set_defaults(func=guarded(_tools_show))
    for verb, enabled in (("enable", True), ("disable", False)):
        p = t_sub.add_parser(verb, help=f"{verb} a tool for the workspace")
        p.add_argument("name")
        p.add_argument("--workspace", required=True, help="workspace slug")
        p.set_defaults(func=guarded(_tools_switch(enabled)))
    tool_runs.add_actions(t_sub)  # `tools executions`, `tools jobs`

    integ = sub.add_parser("integrations", help="the integration catalogue and the credentials each needs")
    i_sub = integ.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = i_sub.add_parser("list", help="list integrations and their credential fields (* = secret)")
    p.add_argument("--category", help="only this category")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=guarded(_integrations_list))
    p = i_sub.add_parser("show", help="one integration with its credential schema")
    p.add_argument("key")
    p.set_defaults(func=guarded(_integrations_show))

    conns = sub.add_parser("connections", help="a workspace's credentials for integrations (stored encrypted)")
    c_sub = conns.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = c_sub.add_parser("create", help="store credentials for an integration (validated, encrypted)")
    p.add_argument("integration", help="the integration's key (shiftflow integrations list)")
    p.add_argument("name", help="how steps name it (connection: NAME)")
    p.add_argument("--workspace", required=True, help="workspace slug")
    _credential_flags(p)
    _limit_flags(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=guarded(_connections_create))
    p = c_sub.add_parser("list", help="list connections (credentials masked)")
    p.add_argument("--workspace", required=True, help="workspace slug")
    p.add_argument("--integration", help="only this integration's")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=guarded(_connections_list))
    for verb, helptext, func in (("show", "one connection (credentials masked)", _connections_show),
                                 ("test", "prove the credentials with one harmless call (exit 1: failed)",
                                  _connections_test),
                                 ("delete", "delete a connection", _connections_delete)):
        p = c_sub.add_parser(verb, help=helptext)
        p.add_argument("connection", help="its name or id")
        p.add_argument("--workspace", required=True, help="workspace slug")
        if verb != "delete":
            p.add_argument("--json", action="store_true", help="print JSON")
        p.set_defaults(func=guarded(func))
    p = c_sub.add_parser("update", help="rename, (de)activate, or change credentials (merged over the stored ones)")
    p.add_argument("connection", help="its name or id")
    p.add_argument("--workspace", required=True, help="workspace slug")
    p.add_argument("--name", help="a new name")
    p.add_argument("--active", choices=["yes", "no"], help="activate or deactivate")
    _credential_flags(p)
    _limit_flags(p)
    p.add_argument("--no-limits", action="store_true", help="drop the connection's own rate limits")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=guarded(_connections_update))
