"""Workspace and membership commands: create, read, rename, delete; add, re-role, remove members.

Ownership rules: only an owner (``workspace:transfer``) may make someone an owner or
change or remove an owner, and a workspace always keeps at least one owner. Removing a
member revokes their API keys in that workspace in the same transaction.
"""

from __future__ import annotations

import re
from typing import Any

import peewee

from shiftflow.kernel.db import database, is_postgres
from shiftflow.kernel.errors import NotFound
from shiftflow.models.manage import audit
from shiftflow.models.manage.access import Principal, parse_role
from shiftflow.models.manage.plain import parse_id, stamp
from shiftflow.models.manage.problems import Conflict, InvalidInput
from shiftflow.models.tables.base import fk, utcnow
from shiftflow.models.tables.tenancy import ApiKey, User, Workspace, WorkspaceMember

_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,99}$")
_EMAIL = re.compile(r"^[^@\s]{1,200}@[^@\s]{1,119}$")


def workspace_dict(row: Workspace) -> dict[str, Any]:
    """A workspace as plain data."""
    return {
        "id": str(row.id),
        "slug": row.slug,
        "name": row.name,
        "plan": row.plan,
        "created_at": stamp(row.created_at),
    }


def member_dict(member: WorkspaceMember, user: User) -> dict[str, Any]:
    """A membership as plain data (with the user's email and name)."""
    return {
        "id": str(member.id),
        "user_id": str(user.id),
        "email": user.email,
        "name": user.name,
        "role": member.role,
        "created_at": stamp(member.created_at),
    }


def _name(value: Any, field: str = "name") -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 200:
        raise InvalidInput(field, "expected a non-empty text of at most 200 characters")
    return value.strip()


def by_slug(slug: str) -> Workspace:
    """The workspace with ``slug`` (the CLI's ``--workspace``).

    Raises:
        NotFound: there is none (the message says how to create it).
    """
    row = Workspace.get_or_none(Workspace.slug == slug)
    if row is None:
        raise NotFound(
            f"workspace {slug!r} does not exist (create it with: shiftflow workspaces create {slug})"
        )
    return row


def ensure_user(email: Any, name: str | None = None) -> User:
    """The user with ``email`` (any case), created if missing.

    Raises:
        InvalidInput: ``email`` is not an email address.
    """
    if not isinstance(email, str) or not _EMAIL.match(email.strip()):
        raise InvalidInput("email", f"{email!r} is not an email address")
    address = email.strip().lower()
    user = User.get_or_none(peewee.fn.LOWER(User.email) == address)
    return user or User.create(email=address, name=name)


def create_workspace(
    actor: Principal, slug: str, name: str | None = None, owner_email: str | None = None
) -> Workspace:
    """Create a workspace (the CLI operator only), optionally with its first owner.

    Raises:
        InvalidInput: a malformed slug, name or email.
        Conflict: the slug is taken.
    """
    if not _SLUG.match(slug or ""):
        raise InvalidInput("slug", f"{slug!r} is not a slug: lowercase letters, digits and '-', at most 100")
    with database.atomic():
        if Workspace.get_or_none(Workspace.slug == slug) is not None:
            raise Conflict(f"workspace {slug!r} already exists")
        row = Workspace.create(slug=slug, name=_name(name or slug))
        audit.record(
            actor, "workspace.created", "workspace", row.id, after=workspace_dict(row), workspace_id=row.id
        )
        if owner_email:
            user = ensure_user(owner_email)
            member = WorkspaceMember.create(workspace=row.id, user=user.id, role="OWNER")
            audit.record(
                actor,
                "member.added",
                "member",
                member.id,
                after=member_dict(member, user),
                workspace_id=row.id,
            )
    return row


def list_workspaces() -> list[Workspace]:
    """Every workspace, by slug (the CLI operator)."""
    return list(Workspace.select().order_by(Workspace.slug))


def current(actor: Principal) -> Workspace:
    """The caller's workspace.

    Raises:
        NotFound: it was deleted meanwhile.
    """
    actor.require("workspace:read")
    row = Workspace.get_or_none(Workspace.id == actor.workspace_id)
    if row is None:
        raise NotFound("workspace does not exist")
    return row


def rename(actor: Principal, name: Any) -> Workspace:
    """Change the caller's workspace's display name."""
    actor.require("workspace:write")
    new_name = _name(name)
    with database.atomic():
        row = current(actor)
        before = workspace_dict(row)
        row.name = new_name
        row.save()
        audit.record(
            actor, "workspace.updated", "workspace", row.id, before=before, after=workspace_dict(row)
        )
    return row


def delete(actor: Principal) -> None:
    """Delete the caller's workspace with its workflows, executions, members and keys.

    Raises:
        Conflict: rows that must outlive it still point at it (e.g. SideShift orders).
    """
    actor.require("workspace:delete")
    try:
        with database.atomic():
            row = current(actor)
            audit.record(actor, "workspace.deleted", "workspace", row.id, before=workspace_dict(row))
            Workspace.delete().where(Workspace.id == row.id).execute()
    except peewee.IntegrityError:
        raise Conflict("the workspace still owns records that must be kept (e.g. swap orders)") from None


def _members(actor: Principal) -> Any:
    query = WorkspaceMember.select(WorkspaceMember, User).join(User)
    if actor.workspace_id is not None:
        query = query.where(WorkspaceMember.workspace == actor.workspace_id)
    return query


def list_members(actor: Principal) -> list[dict[str, Any]]:
    """The members of the caller's workspace, oldest first."""
    actor.require("members:read")
    rows = _members(actor).order_by(WorkspaceMember.created_at, WorkspaceMember.id)
    return [member_dict(m, m.user) for m in rows]


def _member(actor: Principal, member_id: Any) -> WorkspaceMember:
    mid = parse_id(member_id, "member")
    query = _members(actor).where(WorkspaceMember.id == mid)
    if is_postgres():
        query = query.for_update()
    row = query.get_or_none()
    if row is None:
        raise NotFound(f"member {mid} does not exist")
    return row


def _other_owners(member: WorkspaceMember) -> int:
    return (
        WorkspaceMember.select()
        .where(
            (WorkspaceMember.workspace == fk(member, "workspace"))
            & (WorkspaceMember.role == "OWNER")
            & (WorkspaceMember.id != member.id)
        )
        .count()
    )


def add_member(actor: Principal, email: Any, role: Any, name: Any = None) -> dict[str, Any]:
    """Add a user (created by email if new) to the caller's workspace with ``role``.

    Raises:
        InvalidInput: a malformed email or role.
        Forbidden: adding an owner without ``workspace:transfer``.
        Conflict: the user is a member already.
    """
    actor.require("members:write")
    new_role = parse_role(role)
    if new_role == "OWNER":
        actor.require("workspace:transfer")
    if actor.workspace_id is None:
        raise InvalidInput("workspace", "name the workspace")
    with database.atomic():
        user = ensure_user(email, _name(name) if name is not None else None)
        if WorkspaceMember.get_or_none(workspace=actor.workspace_id, user=user.id) is not None:
            raise Conflict(f"{user.email} is a member already")
        member = WorkspaceMember.create(workspace=actor.workspace_id, user=user.id, role=new_role)
        after = member_dict(member, user)
        audit.record(actor, "member.added", "member", member.id, after=after)
    return after


def set_role(actor: Principal, member_id: Any, role: Any) -> dict[str, Any]:
    """Change a member's role.

    Raises:
        NotFound: no such member in the caller's workspace.
        Forbidden: an owner is involved and the caller may not transfer ownership.
        Conflict: it would leave the workspace without an owner.
    """
    actor.require("members:write")
    new_role = parse_role(role)
    with database.atomic():
        member = _member(actor, member_id)
        if "OWNER" in (member.role, new_role):
            actor.require("workspace:transfer")
        if member.role == "OWNER" and new_role != "OWNER" and not _other_owners(member):
            raise Conflict("a workspace needs at least one owner: make someone else owner first")
        before = member_dict(member, member.user)
        member.role = new_role
        member.save()
        after = member_dict(member, member.user)
        audit.record(actor, "member.role_changed", "member", member.id, before=before, after=after)
    return after


def remove_member(actor: Principal, member_id: Any) -> None:
    """Remove a member and revoke their API keys in the workspace.

    Raises:
        NotFound, Forbidden, Conflict: as for ``set_role``.
    """
    actor.require("members:write")
    with database.atomic():
        member = _member(actor, member_id)
        if member.role == "OWNER":
            actor.require("workspace:transfer")
            if not _other_owners(member):
                raise Conflict("a workspace needs at least one owner: make someone else owner first")
        before = member_dict(member, member.user)
        revoked = (
            ApiKey.update(is_active=False, revoked_at=utcnow())
            .where(
                (ApiKey.workspace == fk(member, "workspace"))
                & (ApiKey.user == fk(member, "user"))
                & ApiKey.revoked_at.is_null()
            )
            .execute()
        )
        member.delete_instance()
        audit.record(
            actor, "member.removed", "member", member.id, before=before, metadata={"keys_revoked": revoked}
        )
