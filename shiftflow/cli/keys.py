"""Access commands: ``shiftflow workspaces``, ``shiftflow members`` and ``shiftflow keys``.

They call the same functions as the management API (``models.manage.workspaces``,
``models.manage.apikeys``), as the operator, and write the same audit entries. An API key is
printed once, at creation; only its hash is stored.
"""

from __future__ import annotations

import argparse
import datetime as dt
from typing import Any

from shiftflow.cli.operator import connect, guarded, operator, print_json
from shiftflow.kernel.errors import NotFound
from shiftflow.models.manage.access import PERMISSIONS, ROLES
from shiftflow.models.manage.problems import InvalidInput

_ROLE_CHOICES = [r.lower() for r in ROLES]


def _workspaces_create(args: argparse.Namespace) -> int:
    from shiftflow.models.manage import workspaces

    connect(args)
    row = workspaces.create_workspace(operator(args), args.slug, args.name, args.owner)
    print(f"workspace {row.slug} ({row.id})" + (f", owner {args.owner}" if args.owner else ""))
    return 0


def _workspaces_list(args: argparse.Namespace) -> int:
    from shiftflow.models.manage import workspaces

    connect(args)
    rows = [workspaces.workspace_dict(w) for w in workspaces.list_workspaces()]
    if args.json:
        print_json(rows)
        return 0
    for row in rows:
        print(f"{row['slug']:<24} {row['id']}  {row['name']}")
    return 0


def _member_id(actor: Any, email: str) -> str:
    from shiftflow.models.manage import workspaces

    for member in workspaces.list_members(actor):
        if (member["email"] or "").lower() == email.strip().lower():
            return str(member["id"])
    raise NotFound(f"{email} is not a member of this workspace")


def _members_add(args: argparse.Namespace) -> int:
    from shiftflow.models.manage import workspaces

    connect(args)
    member = workspaces.add_member(operator(args), args.email, args.role, args.name)
    print(f"{member['email']} is {member['role']} of {args.workspace} (member {member['id']})")
    return 0


def _members_list(args: argparse.Namespace) -> int:
    from shiftflow.models.manage import workspaces

    connect(args)
    members = workspaces.list_members(operator(args))
    if args.json:
        print_json(members)
        return 0
    for m in members:
        print(f"{m['role']:<7} {m['email'] or '-':<40} {m['id']}")
    return 0


def _members_set_role(args: argparse.Namespace) -> int:
    from shiftflow.models.manage import workspaces

    connect(args)
    actor = operator(args)
    member = workspaces.set_role(actor, _member_id(actor, args.email), args.role)
    print(f"{member['email']} is now {member['role']} of {args.workspace}")
    return 0


def _members_remove(args: argparse.Namespace) -> int:
    from shiftflow.models.manage import workspaces

    connect(args)
    actor = operator(args)
    workspaces.remove_member(actor, _member_id(actor, args.email))
    print(f"{args.email} removed from {args.workspace}; their API keys there are revoked")
    return 0


def _expiry(args: argparse.Namespace) -> str | None:
    if args.expires_in is not None:
        if args.expires_in <= 0:
            raise InvalidInput("expires_at", "--expires-in must be a positive number of days")
        return (dt.datetime.now(dt.UTC) + dt.timedelta(days=args.expires_in)).isoformat()
    return args.expires_at


def _keys_create(args: argparse.Namespace) -> int:
    from shiftflow.models.manage import apikeys

    connect(args)
    actor = operator(args)
    scopes = [s.strip() for s in args.scopes.split(",") if s.strip()]
    row, text = apikeys.create_key(
        actor, name=args.name, user_id=_user_id(actor, args.user), scopes=scopes, expires_at=_expiry(args)
    )
    print("API key (shown once, store it now):")
    print(f"  {text}")
    print(
        f"id {row.id}  prefix {row.prefix}  user {args.user}  scopes {','.join(row.scopes)}  "
        f"expires {row.expires_at.isoformat(timespec='seconds') + 'Z' if row.expires_at else 'never'}"
    )
    return 0


def _user_id(actor: Any, email: str) -> str:
    from shiftflow.models.manage import workspaces

    for member in workspaces.list_members(actor):
        if (member["email"] or "").lower() == email.strip().lower():
            return str(member["user_id"])
    raise NotFound(f"{email} is not a member of this workspace (add them: shiftflow members add {email} ...)")


def _keys_list(args: argparse.Namespace) -> int:
    from shiftflow.models.manage import apikeys

    connect(args)
    keys = [apikeys.key_dict(k) for k in apikeys.list_keys(operator(args))]
    if args.json:
        print_json(keys)
        return 0
    for k in keys:
        state = "active" if k["active"] else ("revoked" if k["revoked_at"] else "expired")
        made_by = k["created_by_user_id"] and f"user {k['created_by_user_id']}" or k["created_via"] or "?"
        print(
            f"{k['prefix']}  {state:<8} {k['name']:<24} scopes={','.join(k['scopes'])}  "
            f"last used {k['last_used_at'] or 'never'}  made by {made_by}  id {k['id']}"
        )
    return 0


def _keys_revoke(args: argparse.Namespace) -> int:
    from shiftflow.models.manage import apikeys

    connect(args)
    row = apikeys.revoke_key(operator(args), args.key)
    print(f"API key {row.prefix} ({row.name}) revoked")
    return 0


def register(sub: Any) -> None:
    """Add ``workspaces``, ``members`` and ``keys`` to the ``shiftflow`` parser."""
    ws = sub.add_parser("workspaces", help="create and list workspaces (tenants)")
    ws_sub = ws.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = ws_sub.add_parser("create", help="create a workspace, optionally with its owner")
    p.add_argument("slug", help="lowercase letters, digits and '-'")
    p.add_argument("--name", help="display name (default: the slug)")
    p.add_argument("--owner", metavar="EMAIL", help="the first owner (a user created by email if new)")
    p.set_defaults(func=guarded(_workspaces_create))
    p = ws_sub.add_parser("list", help="list every workspace")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=guarded(_workspaces_list))

    members = sub.add_parser("members", help="add, list, re-role and remove workspace members")
    m_sub = members.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = m_sub.add_parser("add", help="add a user (created by email if new) with a role")
    p.add_argument("email", help="the user's email")
    p.add_argument("--workspace", required=True, help="workspace slug")
    p.add_argument("--role", required=True, type=str.lower, choices=_ROLE_CHOICES)
    p.add_argument("--name", help="the user's display name (new users)")
    p.set_defaults(func=guarded(_members_add))
    p = m_sub.add_parser("list", help="list members and roles")
    p.add_argument("--workspace", required=True, help="workspace slug")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=guarded(_members_list))
    p = m_sub.add_parser("set-role", help="change a member's role")
    p.add_argument("email")
    p.add_argument("--workspace", required=True, help="workspace slug")
    p.add_argument("--role", required=True, type=str.lower, choices=_ROLE_CHOICES)
    p.set_defaults(func=guarded(_members_set_role))
    p = m_sub.add_parser("remove", help="remove a member (and revoke their API keys in the workspace)")
    p.add_argument("email")
    p.add_argument("--workspace", required=True, help="workspace slug")
    p.set_defaults(func=guarded(_members_remove))

    keys = sub.add_parser("keys", help="create, list and revoke API keys of the management API")
    k_sub = keys.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = k_sub.add_parser(
        "create",
        help="create an API key for a member (printed once)",
        epilog=f"scopes: '*' (all the role allows), 'read', or any of: {', '.join(PERMISSIONS)}",
    )
    p.add_argument("--workspace", required=True, help="workspace slug")
    p.add_argument(
        "--user", required=True, metavar="EMAIL", help="the member the key acts as (their role applies)"
    )
    p.add_argument("--name", required=True, help="a label, e.g. 'ci deploy'")
    p.add_argument("--scopes", default="*", help="comma-separated scopes (default '*')")
    expiry = p.add_mutually_exclusive_group()
    expiry.add_argument("--expires-in", type=float, metavar="DAYS", help="expire after this many days")
    expiry.add_argument("--expires-at", metavar="TIME", help="expire at this ISO timestamp")
    p.set_defaults(func=guarded(_keys_create))
    p = k_sub.add_parser("list", help="list a workspace's keys (never the keys themselves)")
    p.add_argument("--workspace", required=True, help="workspace slug")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=guarded(_keys_list))
    p = k_sub.add_parser("revoke", help="revoke a key now")
    p.add_argument("key", metavar="KEY", help="the key's id or prefix (sfk_...), as `keys list` shows")
    p.add_argument("--workspace", required=True, help="workspace slug")
    p.set_defaults(func=guarded(_keys_revoke))
