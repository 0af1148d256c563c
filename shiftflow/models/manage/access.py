"""Who may do what: roles, permissions, API-key scopes, and the caller of a command.

A request is allowed when the caller's *role* in the workspace grants the permission
and the API key's *scopes* include it. Roles (``WorkspaceMember.role``):

=======  ==================================================================
OWNER    everything, including deleting the workspace and transferring ownership
ADMIN    everything but ``workspace:delete`` and ``workspace:transfer`` (so also
         ``effects:settle``: deciding what became of an outside call)
MEMBER   read everything but keys of others and the audit log; write workflows
         and executions; create, list and revoke their own API keys
VIEWER   read only (no audit log, no API keys: listing even their own needs keys:self)
=======  ==================================================================

Connections (``connections:read``/``connections:write``): every role may list them, masked;
only owners and admins create, change, test or delete them (a connection holds a
workspace's secrets, and its test makes an outside call). Nobody reads the credentials back:
no permission returns them. Enabling or disabling a tool for the workspace
(``tools:write``) is for owners and admins too.

Scopes are permission names, ``read`` (every ``*:read`` permission and ``templates:read``)
or ``*`` (whatever the role grants). The role is looked up on every request, so demoting
or removing a member takes effect on their keys at once.

Roles are ordered (``ROLES``, highest first): a caller acts on other members' keys only
when their role is at most the caller's (``role_at_most``), so no key ever carries more
than its maker holds.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, replace

from shiftflow.models.manage.problems import Forbidden, InvalidInput

#: Every role, highest first.
ROLES = ("OWNER", "ADMIN", "MEMBER", "VIEWER")

#: Every permission, as ``area:verb``.
PERMISSIONS: tuple[str, ...] = (
    "workspace:read",
    "workspace:write",
    "workspace:delete",
    "workspace:transfer",
    "members:read",
    "members:write",
    "keys:read",
    "keys:write",
    "keys:self",
    "workflows:read",
    "workflows:write",
    "executions:read",
    "executions:write",
    "dead_letters:read",
    "dead_letters:replay",
    "effects:settle",
    "audit:read",
    "analytics:read",
    "templates:read",
    "tools:read",
    "tools:write",
    "integrations:read",
    "connections:read",
    "connections:write",
)

#: What the ``read`` scope stands for.
READ: frozenset[str] = frozenset(p for p in PERMISSIONS if p.endswith(":read"))

_OWNER = frozenset(PERMISSIONS)
_ADMIN = _OWNER - {"workspace:delete", "workspace:transfer"}
_VIEWER = READ - {"audit:read", "keys:read"}
_MEMBER = _VIEWER | {"workflows:write", "executions:write", "keys:self"}

#: The role -> permissions matrix.
MATRIX: dict[str, frozenset[str]] = {"OWNER": _OWNER, "ADMIN": _ADMIN, "MEMBER": _MEMBER, "VIEWER": _VIEWER}


def role_at_most(role: str, ceiling: str) -> bool:
    """True when ``role`` grants no more than ``ceiling`` (each role's permissions contain
    those of every role below it)."""
    return ROLES.index(role) >= ROLES.index(ceiling)


def parse_role(value: object, field: str = "role") -> str:
    """``value`` as a role name (any case).

    Raises:
        InvalidInput: not one of OWNER, ADMIN, MEMBER, VIEWER.
    """
    role = str(value).upper() if isinstance(value, str) else ""
    if role not in MATRIX:
        raise InvalidInput(
            field, f"{value!r} is not a role: expected one of {', '.join(r.lower() for r in ROLES)}"
        )
    return role


def parse_scopes(values: Iterable[object], field: str = "scopes") -> tuple[str, ...]:
    """Validate key scopes: permission names, ``read`` or ``*``; sorted, without duplicates.

    Raises:
        InvalidInput: an unknown scope (the message lists the known ones), or none at all.
    """
    scopes: set[str] = set()
    for value in values:
        if not isinstance(value, str) or (value not in PERMISSIONS and value not in ("read", "*")):
            raise InvalidInput(
                field, f"unknown scope {value!r}: expected '*', 'read' or one of {', '.join(PERMISSIONS)}"
            )
        scopes.add(value)
    if not scopes:
        raise InvalidInput(field, "give at least one scope ('*' for everything the role allows)")
    return tuple(sorted(scopes))


def scope_permissions(scopes: Iterable[str]) -> frozenset[str]:
    """The permissions a set of scopes covers (before the role limits them)."""
    out: set[str] = set()
    for scope in scopes:
        if scope == "*":
            return _OWNER
        out |= READ if scope == "read" else {scope}
    return frozenset(out)


@dataclass(frozen=True)
class Principal:
    """The caller of a command: whose workspace, which role and scopes, and from where.

    ``workspace_id`` scopes every query; it is None only for the operator (the CLI, which
    talks to the database directly and acts on any workspace). ``ip``, ``user_agent`` and
    ``via`` go into audit-log entries. A caller authenticated by an API key also carries
    the key's expiry (``key_expires_at``: a key it makes may not outlive it) and, when
    someone other than its member made the key, who did (``key_created_by``, a
    ``Principal.who`` label written into every audit entry of its requests).
    """

    workspace_id: uuid.UUID | None
    role: str
    scopes: tuple[str, ...] = ("*",)
    user_id: uuid.UUID | None = None
    api_key_id: uuid.UUID | None = None
    ip: str | None = None
    user_agent: str | None = None
    via: str = "api"
    key_expires_at: dt.datetime | None = None
    key_created_by: str | None = None

    def __post_init__(self) -> None:
        if self.workspace_id is None and self.via != "cli":
            raise ValueError("only the CLI operator acts without a workspace")
        if self.role not in MATRIX:
            raise ValueError(f"unknown role {self.role!r}")

    @classmethod
    def operator(
        cls, workspace_id: uuid.UUID | None = None, *, user_agent: str = "shiftflow-cli"
    ) -> Principal:
        """The CLI operator: every permission, on ``workspace_id`` or (None) on every workspace."""
        return cls(workspace_id=workspace_id, role="OWNER", via="cli", user_agent=user_agent)

    @property
    def who(self) -> str:
        """The caller as written in step outputs and errors: its user, else its key, else the operator."""
        if self.user_id:
            return f"user {self.user_id}"
        if self.api_key_id:
            return f"api key {self.api_key_id}"
        return f"the {self.via} operator"

    @property
    def permissions(self) -> frozenset[str]:
        """What this caller may do: the role's permissions limited by the key's scopes."""
        return MATRIX[self.role] & scope_permissions(self.scopes)

    def can(self, permission: str) -> bool:
        """True when the caller holds ``permission``."""
        return permission in self.permissions

    def require(self, permission: str) -> None:
        """Check one permission.

        Raises:
            Forbidden: the role or the key's scopes do not grant it (the message says which).
        """
        if permission not in PERMISSIONS:
            raise ValueError(f"unknown permission {permission!r}")
        if permission not in MATRIX[self.role]:
            raise Forbidden(f"role {self.role.lower()} may not {permission}")
        if permission not in scope_permissions(self.scopes):
            raise Forbidden(f"this API key's scopes do not include {permission}")

    def at(self, ip: str | None, user_agent: str | None) -> Principal:
        """The same caller, seen from a request's client address and user agent."""
        return replace(self, ip=ip, user_agent=user_agent)
