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
from shiftflow.models import audit_log
from shiftflow.models.access import Principal, parse_scopes, scope_permissions
from shiftflow.models.base import utcnow
from shiftflow.models.plain import fk, parse_id, parse_time, stamp
from shiftflow.models.problems import Conflict, Forbidden, InvalidInput, Unauthenticated
from shiftflow.models.tenancy import ApiKey, User, WorkspaceMember

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
    }


def _expiry(value: Any) -> dt.datetime | None:
    if value is None:
        return None
    expires = parse_time(value, "expires_at")
    if expires <= utcnow():
        raise InvalidInput("expires_at", "must be in the future")
    return expires


def create_key(
    actor: Principal, *, name: Any, user_id: Any = None, scopes: Any = ("*",), expires_at: Any = None
) -> tuple[ApiKey, str]:
    """Create a key for a member of the caller's workspace; the clear key is returned once.

    Parameters:
        actor: the caller; without ``keys:write`` they may only create keys for themselves
            (``keys:self``), and no caller may grant scopes beyond their own key's.
        name: a label (1-200 characters).
        user_id: the member the key acts as; default the caller.
        scopes: permission names, ``read`` or ``*``.
        expires_at: an ISO timestamp in the future, or None for no expiry.

    Returns:
        The stored row and the key text (shown once, never stored).

    Raises:
        InvalidInput: a malformed name, scope or expiry.
        Forbidden: the caller may not create this key.
        NotFound: ``user_id`` is not a member of the workspace.
    """
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise InvalidInput("name", "expected a non-empty text of at most 200 characters")
    if not isinstance(scopes, list | tuple):
        raise InvalidInput("scopes", "expected a list of scopes")
    wanted = parse_scopes(scopes)
    expires = _expiry(expires_at)
    target = actor.user_id if user_id is None else parse_id(user_id, "user")
    if target is None:
        raise InvalidInput("user", "name the member the key acts as")
    if target == actor.user_id and not actor.can("keys:write"):
        actor.require("keys:self")
    else:
        actor.require("keys:write")
    if not scope_permissions(wanted) <= scope_permissions(actor.scopes):
        raise Forbidden("a key cannot grant more scopes than the key that creates it")
    with database.atomic():
        member = WorkspaceMember.get_or_none(workspace=actor.workspace_id, user=target)
        if member is None:
            raise NotFound(f"user {target} is not a member of this workspace")
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
        )
        audit_log.record(actor, "api_key.created", "api_key", row.id, after=key_dict(row))
    return row, text


def list_keys(actor: Principal) -> list[ApiKey]:
    """The workspace's keys (with ``keys:read``) or the caller's own, newest first."""
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
        Forbidden: another member's key without ``keys:write``, or own without ``keys:self``.
        Conflict: it is revoked already.
    """
    with database.atomic():
        row = find_key(actor, key_id)
        actor.require(
            "keys:self" if fk(row, "user") == actor.user_id and not actor.can("keys:write") else "keys:write"
        )
        if row.revoked_at is not None or not row.is_active:
            raise Conflict(f"API key {row.prefix} is revoked already")
        before = key_dict(row)
        row.is_active, row.revoked_at = False, utcnow()
        row.save()
        audit_log.record(
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
