"""API keys: created and shown once, stored as a SHA-256 hash with a lookup prefix.

A key reads ``sfk_<12 hex>_<43 url-safe characters>``: the first part (``sfk_`` and 12
hex digits, 48 bits) is stored in clear as the lookup prefix, shown in lists and safe
to log; the secret part carries 256 random bits. Only ``sha256(key)`` is stored, so a
database leak reveals no usable key; a fast hash is right here (unlike for passwords)
because the key is random, not guessable. Authentication compares hashes with
``hmac.compare_digest``.

Each request re-reads the key's member and role: revoking a key, removing a member or
demoting them takes effect at once. ``last_used_at`` is written at most once a minute
per key, so a busy key does not turn every read into a write.

No key carries more than its maker holds: a key is made for the caller, or (with
``keys:write``) for a member whose role is at most the caller's; its scopes are within
the making key's and it expires no later than the making key. The key row records who
made it, and every audit entry of a request made with a key someone else made names
that maker (``Principal.key_created_by``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
from typing import Any

from shiftflow.kernel.db import database
from shiftflow.kernel.errors import NotFound
from shiftflow.models.manage import audit
from shiftflow.models.manage.access import Principal, parse_scopes, role_at_most, scope_permissions
from shiftflow.models.manage.plain import parse_id, parse_time, stamp
from shiftflow.models.manage.problems import Conflict, Forbidden, InvalidInput, Unauthenticated
from shiftflow.models.tables.base import fk, utcnow
from shiftflow.models.tables.tenancy import ApiKey, User, WorkspaceMember

KEY_PREFIX = "sfk_"
_SHAPE = re.compile(r"^sfk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
#: Seconds between two writes of ``last_used_at`` for one key.
LAST_USED_EVERY_SECONDS = 60


def hash_key(text: str) -> str:
    """The stored form of a key: its SHA-256 as 64 hex digits."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def generate() -> tuple[str, str]:
    """A new key and its lookup prefix: ``("sfk_<hex>_<secret>", "sfk_<hex>")``."""
    lookup = secrets.token_hex(6)
    return f"{KEY_PREFIX}{lookup}_{secrets.token_urlsafe(32)}", f"{KEY_PREFIX}{lookup}"


def lookup_prefix(text: str | None) -> str | None:
    """The lookup prefix (``sfk_<12 hex>``) of a well-formed key, else None."""
    match = _SHAPE.match(text or "")
    return f"{KEY_PREFIX}{match.group(1)}" if match else None


def is_active(row: ApiKey, now: dt.datetime | None = None) -> bool:
    """True when the key is neither revoked nor expired."""
    now = now or utcnow()
    return bool(row.is_active) and row.revoked_at is None and (row.expires_at is None or row.expires_at > now)


def key_dict(row: ApiKey) -> dict[str, Any]:
    """A key as plain data: never its hash, never its secret."""
    return {
        "id": str(row.id),
        "name": row.name,
        "prefix": row.prefix,
        "scopes": list(row.scopes or []),
        "user_id": str(fk(row, "user")) if fk(row, "user") else None,
        "active": is_active(row),
        "created_at": stamp(row.created_at),
        "expires_at": stamp(row.expires_at),
        "last_used_at": stamp(row.last_used_at),
        "revoked_at": stamp(row.revoked_at),
        "created_by_user_id": str(row.created_by_user_id) if row.created_by_user_id else None,
        "created_by_key_id": str(row.created_by_key_id) if row.created_by_key_id else None,
        "created_via": row.created_via,
    }


def maker(row: ApiKey) -> str | None:
    """Who made a key, as a ``Principal.who`` label, when that is not the key's own member
    (None for one's own key, or a key made before makers were recorded)."""
    if row.created_by_user_id is not None:
        return None if row.created_by_user_id == fk(row, "user") else f"user {row.created_by_user_id}"
    if row.created_by_key_id is not None:
        return f"api key {row.created_by_key_id}"
    return f"the {row.created_via} operator" if row.created_via else None


def _expiry(actor: Principal, value: Any) -> dt.datetime | None:
    """The new key's expiry: as asked, and never later than the making key's (its default)."""
    expires = None if value is None else parse_time(value, "expires_at")
    if expires is not None and expires <= utcnow():
        raise InvalidInput("expires_at", "must be in the future")
    ceiling = actor.key_expires_at
    if ceiling is None:
        return expires
    if expires is None:
        return ceiling
    if expires > ceiling:
        raise Forbidden(
            f"expires_at: a key cannot expire after the key that creates it ({stamp(ceiling)})"
        )
    return expires


def _require_rank(actor: Principal, member: WorkspaceMember, verb: str) -> None:
    """Refuse to act on another member's keys when their role is above the caller's."""
    if not role_at_most(member.role, actor.role):
        raise Forbidden(
            f"role {actor.role.lower()} may not {verb} keys of a member whose role is {member.role.lower()}"
        )


def create_key(
    actor: Principal, *, name: Any, user_id: Any = None, scopes: Any = None, expires_at: Any = None
) -> tuple[ApiKey, str]:
    """Create a key for a member of the caller's workspace; the clear key is returned once.

    Parameters:
        actor: the caller; without ``keys:write`` they may only create keys for themselves
            (``keys:self``); with it, also for members whose role is at most theirs. No
            caller may grant scopes beyond their own key's, nor a later expiry.
        name: a label (1-200 characters).
        user_id: the member the key acts as; default the caller.
        scopes: permission names, ``read`` or ``*``; default the caller's key's scopes.
        expires_at: an ISO timestamp in the future, or None: no expiry, or the caller's
            key's expiry when it has one.

    Returns:
        The stored row and the key text (shown once, never stored).

    Raises:
        InvalidInput: a malformed name, scope or expiry.
        Forbidden: the caller may not create this key (the message says why).
        NotFound: ``user_id`` is not a member of the workspace.
    """
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise InvalidInput("name", "expected a non-empty text of at most 200 characters")
    if scopes is None:
        scopes = actor.scopes
    if not isinstance(scopes, list | tuple):
        raise InvalidInput("scopes", "expected a list of scopes")
    wanted = parse_scopes(scopes)
    target = actor.user_id if user_id is None else parse_id(user_id, "user")
    if target is None:
        raise InvalidInput("user", "name the member the key acts as")
    own = target == actor.user_id
    if own and not actor.can("keys:write"):
        actor.require("keys:self")
    else:
        actor.require("keys:write")
    if not scope_permissions(wanted) <= scope_permissions(actor.scopes):
        raise Forbidden("a key cannot grant more scopes than the key that creates it")
    expires = _expiry(actor, expires_at)
    with database.atomic():
        member = WorkspaceMember.get_or_none(workspace=actor.workspace_id, user=target)
        if member is None:
            raise NotFound(f"user {target} is not a member of this workspace")
        if not own:
            _require_rank(actor, member, "make")
        text, prefix = generate()
        row = ApiKey.create(
            workspace=actor.workspace_id,
            user=target,
            name=name.strip(),
            prefix=prefix,
            key_hash=hash_key(text),
            scopes=list(wanted),
            expires_at=expires,
            created_at=utcnow(),
            created_by_user_id=actor.user_id,
            created_by_key_id=actor.api_key_id,
            created_via=actor.via,
        )
        audit.record(actor, "api_key.created", "api_key", row.id, after=key_dict(row))
    return row, text


def list_keys(actor: Principal) -> list[ApiKey]:
    """The workspace's keys (with ``keys:read``) or the caller's own (with ``keys:self``),
    newest first.

    Raises:
        Forbidden: the caller holds neither permission.
    """
    if not actor.can("keys:read"):
        actor.require("keys:self")
    query = ApiKey.select().order_by(ApiKey.created_at.desc(), ApiKey.id)
    if actor.workspace_id is not None:
        query = query.where(ApiKey.workspace == actor.workspace_id)
    if not actor.can("keys:read"):
        query = query.where(ApiKey.user == actor.user_id)
    return list(query)


def find_key(actor: Principal, key_id: Any) -> ApiKey:
    """One key of the caller's workspace by id or lookup prefix (``sfk_<hex>``).

    Raises:
        NotFound: no such key in the workspace (or, without ``keys:read``, not the caller's).
    """
    text = str(key_id)
    if _SHAPE.match(text):
        raise InvalidInput("key", "give the key's id or prefix, never the key itself")
    if re.fullmatch(r"sfk_[0-9a-f]{12}", text):
        condition = ApiKey.prefix == text
    else:
        condition = ApiKey.id == parse_id(text, "API key")
    query = ApiKey.select().where(condition)
    if actor.workspace_id is not None:
        query = query.where(ApiKey.workspace == actor.workspace_id)
    row = query.get_or_none()
    if row is None or (not actor.can("keys:read") and fk(row, "user") != actor.user_id):
        raise NotFound(f"API key {text[:100]!r} does not exist")
    return row


def revoke_key(actor: Principal, key_id: Any) -> ApiKey:
    """Revoke a key now: the next request with it gets 401.

    Raises:
        NotFound: as ``find_key``.
        Forbidden: another member's key without ``keys:write`` or whose role is above the
            caller's, or one's own without ``keys:self``.
        Conflict: it is revoked already.
    """
    with database.atomic():
        row = find_key(actor, key_id)
        own = fk(row, "user") == actor.user_id
        actor.require("keys:self" if own and not actor.can("keys:write") else "keys:write")
        member = None if own else WorkspaceMember.get_or_none(workspace=fk(row, "workspace"), user=fk(row, "user"))
        if member is not None:
            _require_rank(actor, member, "revoke")
        if row.revoked_at is not None or not row.is_active:
            raise Conflict(f"API key {row.prefix} is revoked already")
        before = key_dict(row)
        row.is_active, row.revoked_at = False, utcnow()
        row.save()
        audit.record(
            actor,
            "api_key.revoked",
            "api_key",
            row.id,
            before=before,
            after=key_dict(row),
            workspace_id=fk(row, "workspace"),
        )
    return row


def authenticate(text: str | None, *, ip: str | None = None, user_agent: str | None = None) -> Principal:
    """The caller behind an API key, with their current role in the key's workspace.

    Raises:
        Unauthenticated: no key, an unknown one, or one that is revoked, expired, not bound
            to a user, or whose user is no longer an active member.
    """
    if not text:
        raise Unauthenticated("missing API key: send 'Authorization: Bearer sfk_...'")
    match = _SHAPE.match(text)
    if match is None:
        raise Unauthenticated("malformed API key")
    digest = hash_key(text)
    candidates = ApiKey.select().where(ApiKey.prefix == f"{KEY_PREFIX}{match.group(1)}")
    row = next((c for c in candidates if hmac.compare_digest(c.key_hash, digest)), None)
    if row is None:
        raise Unauthenticated("unknown API key")
    now = utcnow()
    if row.revoked_at is not None or not row.is_active:
        raise Unauthenticated("this API key was revoked")
    if row.expires_at is not None and row.expires_at <= now:
        raise Unauthenticated(f"this API key expired at {stamp(row.expires_at)}")
    if fk(row, "user") is None:
        raise Unauthenticated("this API key is not bound to a member")
    member: Any = (  # a (role, user active) tuple, or None
        WorkspaceMember.select(WorkspaceMember.role, User.is_active)
        .join(User)
        .where(
            (WorkspaceMember.workspace == fk(row, "workspace")) & (WorkspaceMember.user == fk(row, "user"))
        )
        .tuples()
        .get_or_none()
    )
    if member is None or not member[1]:
        raise Unauthenticated("this API key's user is no longer a member of its workspace")
    _touch(row, now)
    return Principal(
        workspace_id=fk(row, "workspace"),
        role=member[0],
        scopes=tuple(row.scopes or ()),
        user_id=fk(row, "user"),
        api_key_id=row.id,
        ip=ip,
        user_agent=user_agent,
        key_expires_at=row.expires_at,
        key_created_by=maker(row),
    )


def _touch(row: ApiKey, now: dt.datetime) -> None:
    """Stamp ``last_used_at``, at most once per ``LAST_USED_EVERY_SECONDS``; the condition
    in the UPDATE keeps concurrent requests from all writing."""
    horizon = now - dt.timedelta(seconds=LAST_USED_EVERY_SECONDS)
    if row.last_used_at is not None and row.last_used_at > horizon:
        return
    ApiKey.update(last_used_at=now).where(
        (ApiKey.id == row.id) & (ApiKey.last_used_at.is_null() | (ApiKey.last_used_at <= horizon))
    ).execute()
