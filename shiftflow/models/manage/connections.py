"""Connections: a workspace's credentials for an integration of the catalogue.

Create, list, show, update, test and delete, for the API and the CLI alike:

* **Validated** against the integration's credential schema (``Integration.validate``):
  a problem is an ``InvalidInput`` naming the field (``credentials.password: required``),
  never quoting a secret value.
* **Sealed at rest**: the whole credential document is encrypted with the configured keys
  (``kernel.secretbox``, ``SHIFTFLOW_SECRET_KEYS``) before it is written; the row holds
  ciphertext only (``shiftflow secrets rotate`` re-encrypts it under a newer key).
* **Never returned**: every answer and every audit entry carries the credentials masked
  (``kernel.integrations.secrets.mask``: secret fields as ``***``); test messages have the
  connection's secret values removed. Nothing here logs a credential.
* **Audited**: ``connection.created``, ``.updated``, ``.tested``, ``.deleted``, each in the
  change's transaction.
* **Tenant-scoped**: another workspace's connection is a 404.

``test`` makes the integration's harmless call (``kernel.integrations.check_connection``:
an SMTP login and QUIT, a webhook's GET...) outside any transaction, then stores the
outcome (``test_status``, ``last_tested_at``, ``last_error``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import peewee

from shiftflow.kernel.db import database
from shiftflow.kernel.errors import NotFound, PermanentError
from shiftflow.kernel.integrations.base import (
    FAILED,
    CheckContext,
    CheckResult,
    Integration,
    InvalidCredentials,
    RateLimits,
    check_connection,
    parse_overrides,
)
from shiftflow.kernel.integrations.catalogue import (
    IntegrationCatalogue,
    UnknownIntegration,
    default_catalogue,
)
from shiftflow.kernel.integrations.secrets import mask
from shiftflow.kernel.secretbox import DecryptionError, vault_for
from shiftflow.kernel.settings import Settings, get_settings
from shiftflow.models.engine.tool_calls import ConnectionTokens, oauth2_client
from shiftflow.models.manage import audit
from shiftflow.models.manage.access import Principal
from shiftflow.models.manage.plain import parse_id, stamp
from shiftflow.models.manage.problems import Conflict, InvalidInput
from shiftflow.models.tables.base import fk, utcnow
from shiftflow.models.tables.integrations import Connection
from shiftflow.models.tables.integrations import Integration as IntegrationRow

#: A connection's name: how a step names it (``connection: smtp-main``, ``{{ secrets.<name>.* }}``).
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,99}$")
#: Longest ``last_error`` kept (a test message is short; this only bounds a pathological one).
_ERROR_MAX = 2000


def _workspace(actor: Principal) -> Any:
    if actor.workspace_id is None:
        raise InvalidInput("workspace", "name the workspace (--workspace)")
    return actor.workspace_id


def _vault(settings: Settings | None) -> Any:
    return vault_for((settings or get_settings()).secret_keys)


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not NAME.match(name):
        raise InvalidInput("name", "expected a letter or _, then up to 99 letters, digits, _ or -")
    return name


def _invalid(exc: InvalidCredentials) -> InvalidInput:
    """The first problem as an ``InvalidInput`` naming its field; the others follow in the message."""
    first = exc.problems[0]
    field, _, reason = first.partition(": ")
    rest = "; ".join(exc.problems[1:])
    return InvalidInput(field, reason + (f"; {rest}" if rest else ""))


def _validated(integration: Integration, credentials: Any) -> dict[str, Any]:
    try:
        return integration.validate(credentials)
    except InvalidCredentials as exc:
        raise _invalid(exc) from None


def check_rate_limits(value: Any) -> dict[str, Any] | None:
    """A connection's own rate limits, checked (``rate_limits.per_second: ...`` names the field).

    ``{per_second, per_minute, burst}``, any subset (the rest come from the integration; a
    rate of 0 means no limit on that scale); None or ``{}``: the integration's limits.

    Raises:
        InvalidInput: not an object, an unknown field, or a value out of range.
    """
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise InvalidInput("rate_limits", "expected an object with per_second, per_minute and/or burst, or null")
    try:
        clean = parse_overrides(value)
    except InvalidCredentials as exc:
        raise _invalid(exc) from None
    if isinstance(clean.get("burst"), float):
        # JSON Schema counts 2.0 as an integer; the token bucket wants a whole number.
        clean["burst"] = int(clean["burst"])
    try:
        RateLimits(**{"per_second": 0.0, "per_minute": 0.0, "burst": 1, **clean})
    except PermanentError as exc:
        raise InvalidInput("rate_limits", str(exc)) from None
    return clean or None


def effective_limits(row: Connection, catalogue: IntegrationCatalogue | None = None) -> dict[str, Any] | None:
    """The limits a connection's calls are held to: its own over its integration's (for display)."""
    from shiftflow.kernel.integrations.ratelimit import IntegrationLimiter

    try:
        own, _ = IntegrationLimiter(catalogue or default_catalogue()).limits(row.integration.key, row.rate_limits)
    except Exception:  # noqa: BLE001 - a display helper never fails a listing
        return None
    return own.to_dict()


def _integration_row(integration: Integration) -> IntegrationRow:
    """The catalogue entry's row (made on first use: the code is the catalogue, the row its key)."""
    row = IntegrationRow.get_or_none(IntegrationRow.key == integration.key)
    if row is not None:
        return row
    try:
        with database.atomic():
            return IntegrationRow.create(key=integration.key, name=integration.name,
                                         description=integration.description, category=integration.category,
                                         auth_type=integration.auth_type, docs_url=integration.docs_url)
    except peewee.IntegrityError:  # made concurrently
        return IntegrationRow.get(IntegrationRow.key == integration.key)


def _entry(catalogue: IntegrationCatalogue | None, key: str) -> Integration:
    return (catalogue or default_catalogue()).get(key)


#: What a connection whose ciphertext no configured key opens says instead of its credentials.
UNREADABLE = ("the stored credentials cannot be decrypted with the configured keys (SHIFTFLOW_SECRET_KEYS): "
              "give them again (update), or configure the key they were sealed with")


def _open(row: Connection, settings: Settings | None) -> dict[str, Any] | None:
    """The decrypted credentials, or None when no configured key opens them (a retired key)."""
    try:
        value = _vault(settings).decrypt(row.credentials)
    except DecryptionError:
        return None
    return dict(value) if isinstance(value, Mapping) else {}


def _schema(integration: Integration | None) -> Mapping[str, Any]:
    # An integration the catalogue no longer has: every field counts as secret.
    return integration.credentials_schema if integration is not None else {"type": "object"}


def connection_dict(row: Connection, *, settings: Settings | None = None,
                    catalogue: IntegrationCatalogue | None = None) -> dict[str, Any]:
    """A connection as the API and the CLI show it: the credentials masked, never in clear."""
    key = row.integration.key
    catalogue = catalogue or default_catalogue()
    integration = catalogue.get(key) if key in catalogue else None
    credentials = _open(row, settings)
    return {
        "id": str(row.id),
        "name": row.name,
        "integration": key,
        "credentials": {} if credentials is None else mask(credentials, _schema(integration)),
        "credentials_readable": credentials is not None,
        "is_active": bool(row.is_active),
        "test_status": row.test_status,
        "last_tested_at": stamp(row.last_tested_at),
        "last_error": row.last_error,
        "expires_at": stamp(row.expires_at),
        "rate_limits": dict(row.rate_limits) if row.rate_limits else None,
        "effective_limits": effective_limits(row, catalogue),
        "user_id": str(fk(row, "user")) if fk(row, "user") else None,
        "created_at": stamp(row.created_at),
        "updated_at": stamp(row.updated_at),
    }


def _summary(row: Connection, masked: dict[str, Any]) -> dict[str, Any]:
    """What an audit entry keeps of a connection (credentials masked)."""
    return {"name": row.name, "integration": row.integration.key, "is_active": bool(row.is_active),
            "credentials": masked, "rate_limits": dict(row.rate_limits) if row.rate_limits else None}


def get_connection(actor: Principal, connection_id: Any, *, lock: bool = False) -> Connection:
    """One connection of the caller's workspace.

    Raises:
        NotFound: no such connection in the workspace.
    """
    actor.require("connections:read")
    workspace = _workspace(actor)
    cid = parse_id(connection_id, "connection")
    query = Connection.select().where((Connection.id == cid) & (Connection.workspace == workspace))
    if lock:
        query = query.for_update()
    row = query.first()
    if row is None:
        raise NotFound(f"connection {cid} does not exist")
    return row


def find_connection(actor: Principal, ref: str) -> Connection:
    """A connection by id or by name (the CLI's way of naming one).

    Raises:
        NotFound: none has that id or name in the workspace.
    """
    actor.require("connections:read")
    workspace = _workspace(actor)
    row = Connection.get_or_none((Connection.workspace == workspace) & (Connection.name == ref))
    return row if row is not None else get_connection(actor, ref)


def list_connections(actor: Principal, *, integration: str | None = None,
                     settings: Settings | None = None) -> list[dict[str, Any]]:
    """The workspace's connections by name (optionally one integration's), masked."""
    actor.require("connections:read")
    workspace = _workspace(actor)
    query = (Connection.select(Connection, IntegrationRow).join(IntegrationRow)
             .where(Connection.workspace == workspace).order_by(Connection.name))
    if integration:
        query = query.where(IntegrationRow.key == integration)
    catalogue = default_catalogue()
    return [connection_dict(r, settings=settings, catalogue=catalogue) for r in query]


def create_connection(actor: Principal, integration_key: str, name: str, credentials: Any, *,
                      rate_limits: Any = None, settings: Settings | None = None,
                      catalogue: IntegrationCatalogue | None = None) -> dict[str, Any]:
    """Store a new connection, its credentials validated and sealed (``connection.created``).

    Raises:
        UnknownIntegration: no such integration (404).
        InvalidInput: the name, a credential field, or a rate limit field (named) is
            invalid (422).
        Conflict: the workspace has a connection of that name (409).
    """
    actor.require("connections:write")
    workspace = _workspace(actor)
    try:
        integration = _entry(catalogue, integration_key)
    except UnknownIntegration as exc:
        raise InvalidInput("integration", str(exc)) from None
    _check_name(name)
    limits = check_rate_limits(rate_limits)
    clean = _validated(integration, credentials)
    vault = _vault(settings)
    with database.atomic():
        if Connection.select().where((Connection.workspace == workspace) & (Connection.name == name)).exists():
            raise Conflict(f"a connection named {name!r} already exists in this workspace")
        row = Connection.create(workspace=workspace, user=actor.user_id, integration=_integration_row(integration).id,
                                name=name, credentials=vault.encrypt(clean), key_id=vault.current_key_id,
                                test_status="PENDING", rate_limits=limits)
        audit.record(actor, "connection.created", "connection", row.id, after=_summary(row, mask(clean, integration.credentials_schema)))
    return connection_dict(row, settings=settings, catalogue=catalogue)


def update_connection(actor: Principal, connection_id: Any, *, name: str | None = None,
                      credentials: Mapping[str, Any] | None = None, is_active: bool | None = None,
                      rate_limits: Any = ..., settings: Settings | None = None,
                      catalogue: IntegrationCatalogue | None = None) -> dict[str, Any]:
    """Rename, re-credential, (de)activate or re-limit a connection (``connection.updated``).

    ``rate_limits`` replaces the connection's own limits (None: back to the integration's;
    left out, ``...``: unchanged).

    ``credentials`` are merged over the stored ones field by field (a ``null`` removes a
    field), then the whole document is validated again, so changing a password does not
    mean sending the host again. New credentials reset ``test_status`` to PENDING.

    Raises:
        NotFound, InvalidInput, Conflict: as ``create_connection``.
    """
    actor.require("connections:write")
    workspace = _workspace(actor)
    if name is not None:
        _check_name(name)
    if credentials is not None and not isinstance(credentials, Mapping):
        raise InvalidInput("credentials", "expected an object")
    limits = check_rate_limits(rate_limits) if rate_limits is not ... else ...
    vault = _vault(settings)
    with database.atomic():
        row = get_connection(actor, connection_id, lock=True)
        integration = _entry(catalogue, row.integration.key)
        readable = _open(row, settings)
        stored = readable or {}
        before = _summary(row, mask(stored, integration.credentials_schema))
        changed: list[str] = []
        if name is not None and name != row.name:
            if Connection.select().where((Connection.workspace == workspace) & (Connection.name == name)
                                         & (Connection.id != row.id)).exists():
                raise Conflict(f"a connection named {name!r} already exists in this workspace")
            row.name = name
            changed.append("name")
        if credentials is not None:
            # Unreadable stored credentials (a retired key) are replaced, not merged.
            merged = {k: v for k, v in {**stored, **credentials}.items() if v is not None}
            clean = _validated(integration, merged)
            fields = sorted(k for k in set(clean) | set(stored) if clean.get(k) != stored.get(k))
            if fields or readable is None:
                row.credentials, row.key_id = vault.encrypt(clean), vault.current_key_id
                row.test_status, row.last_error = "PENDING", None
                stored = clean
                changed.append("credentials")
        if is_active is not None and bool(is_active) != bool(row.is_active):
            row.is_active = bool(is_active)
            changed.append("is_active")
        if limits is not ... and limits != (dict(row.rate_limits) if row.rate_limits else None):
            row.rate_limits = limits
            changed.append("rate_limits")
        if changed:
            row.updated_at = utcnow()
            row.save()
        after = _summary(row, mask(stored, integration.credentials_schema))
        # The names of changed credential fields, never their values.
        meta = {"changed": changed}
        if "credentials" in changed:
            meta["credential_fields"] = fields
        audit.record(actor, "connection.updated", "connection", row.id, before=before, after=after, metadata=meta)
    return connection_dict(row, settings=settings, catalogue=catalogue)


def delete_connection(actor: Principal, connection_id: Any, *, settings: Settings | None = None,
                      catalogue: IntegrationCatalogue | None = None) -> None:
    """Delete a connection for good (``connection.deleted``); steps naming it then fail."""
    actor.require("connections:write")
    with database.atomic():
        row = get_connection(actor, connection_id, lock=True)
        key = row.integration.key
        cat = catalogue or default_catalogue()
        schema = cat.get(key).credentials_schema if key in cat else {"type": "object"}
        before = _summary(row, mask(_open(row, settings) or {}, schema))
        row.delete_instance()
        audit.record(actor, "connection.deleted", "connection", connection_id, before=before)


def verify_connection(actor: Principal, connection_id: Any, *, settings: Settings | None = None,
                    catalogue: IntegrationCatalogue | None = None) -> dict[str, Any]:
    """Make the integration's harmless call with the stored credentials and record the outcome
    (``connection.tested``). A refusal is an answer (``result.status: failed``), not an error.

    Returns:
        ``{"connection": <connection_dict>, "result": <CheckResult.to_dict()>}``.
    """
    actor.require("connections:write")
    settings = settings or get_settings()
    row = get_connection(actor, connection_id)
    integration = _entry(catalogue, row.integration.key)
    credentials = _open(row, settings)
    ctx = CheckContext(timeout=settings.http_timeout_seconds, allow_private=settings.http_allow_private,
                       settings=settings, connection_id=str(row.id),
                       tokens=ConnectionTokens(fk(row, "workspace"), settings),
                       # The engine's client: a refresh here takes the same Redis lock as a step's.
                       oauth2=oauth2_client(settings))
    # No transaction is open during the outside call: it may take the whole timeout.
    result = (check_connection(integration, credentials, ctx) if credentials is not None
              else CheckResult(FAILED, UNREADABLE))
    with database.atomic():
        row = get_connection(actor, connection_id, lock=True)
        before = {"test_status": row.test_status}
        row.test_status, row.last_tested_at = result.test_status, utcnow()
        row.last_error = None if result.status != "failed" else result.message[:_ERROR_MAX]
        row.save()
        audit.record(actor, "connection.tested", "connection", row.id, before=before,
                     after={"test_status": row.test_status},
                     metadata={"status": result.status, "message": result.message[:_ERROR_MAX]})
    return {"connection": connection_dict(row, settings=settings, catalogue=catalogue), "result": result.to_dict()}
