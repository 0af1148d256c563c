"""Writing the audit log: one ``AuditLog`` row per mutation, inside its transaction.

Every management command (API or CLI) calls ``record`` in the same transaction as the
change it describes, so a change never commits without its entry and a rolled-back
change leaves none. Entries carry who (user, API key, or the CLI operator; and who made
the key, when that was someone else: ``metadata.key_created_by``), what
(``workflow.paused``, ``api_key.created``...), the object, its state before and after,
and the client's IP address and user agent.
"""

from __future__ import annotations

from typing import Any

from shiftflow.models.manage.access import Principal
from shiftflow.models.manage.plain import stamp
from shiftflow.models.tables.audit_log import AuditLog
from shiftflow.models.tables.base import utcnow

#: Column widths of ``AuditLog`` (longer values are cut, never rejected).
_IP_MAX, _UA_MAX, _ENTITY_ID_MAX = 45, 500, 100


def record(
    actor: Principal,
    action: str,
    entity_type: str,
    entity_id: Any,
    *,
    before: Any = None,
    after: Any = None,
    workspace_id: Any = None,
    metadata: dict[str, Any] | None = None,
) -> AuditLog:
    """Append one entry (call inside the mutation's transaction).

    Parameters:
        actor: who acted, with their client address and user agent.
        action: ``<entity>.<verb>``, e.g. ``execution.cancelled``.
        entity_type: the kind of object (``workflow``, ``execution``, ``api_key``...).
        entity_id: the object's id (a UUID, a slug...), or None for a bulk action.
        before: the object's relevant state before the change (plain JSON data), or None.
        after: its state after the change, or None (deleted).
        workspace_id: the workspace the object belongs to; defaults to the actor's.
        metadata: anything else worth keeping (a filter, a count...).

    Returns:
        The stored entry.
    """
    meta: dict[str, Any] = {"via": actor.via, **(metadata or {})}
    if actor.key_created_by:
        # The key acts as its member, but someone else made it: name them, so the trail
        # never shows a member doing what another member's key did in their name.
        meta["key_created_by"] = actor.key_created_by
    return AuditLog.create(
        workspace_id=workspace_id if workspace_id is not None else actor.workspace_id,
        user_id=actor.user_id,
        api_key_id=actor.api_key_id,
        action=action,
        entity_type=entity_type,
        entity_id=None if entity_id is None else str(entity_id)[:_ENTITY_ID_MAX],
        changes={"before": before, "after": after},
        metadata=meta,
        ip_address=actor.ip[:_IP_MAX] if actor.ip else None,
        user_agent=actor.user_agent[:_UA_MAX] if actor.user_agent else None,
        created_at=utcnow(),
    )


def entry_dict(row: AuditLog) -> dict[str, Any]:
    """An entry as plain data for the API and CLI."""
    changes = row.changes if isinstance(row.changes, dict) else {}
    return {
        "id": str(row.id),
        "action": row.action,
        "entity_type": row.entity_type,
        "entity_id": row.entity_id,
        "user_id": str(row.user_id) if row.user_id else None,
        "api_key_id": str(row.api_key_id) if row.api_key_id else None,
        "before": changes.get("before"),
        "after": changes.get("after"),
        "metadata": row.metadata or {},
        "ip": row.ip_address,
        "user_agent": row.user_agent,
        "created_at": stamp(row.created_at),
    }
