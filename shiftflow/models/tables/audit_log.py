"""The audit log: who did what to which object, append-only."""

from __future__ import annotations

import peewee

from shiftflow.kernel.db import JSONField
from shiftflow.models.tables.base import BaseModel, utcnow


class AuditLog(BaseModel):
    """One security-relevant action (``workflow.created``, ``api_key.revoked``...).

    ``workspace_id``, ``user_id`` and ``api_key_id`` are plain UUID columns, not foreign
    keys, on purpose: the trail must outlive the objects it speaks about (a deleted
    workspace, a removed member). ``entity_id`` is text because some
    catalogue ids are slugs. Rows are only ever inserted.
    """

    workspace_id = peewee.UUIDField(null=True)
    user_id = peewee.UUIDField(null=True, index=True)
    api_key_id = peewee.UUIDField(null=True)
    action = peewee.CharField(max_length=100)
    entity_type = peewee.CharField(max_length=50)
    entity_id = peewee.CharField(max_length=100, null=True)
    changes = JSONField(null=True)
    metadata = JSONField(null=True)
    ip_address = peewee.CharField(max_length=45, null=True)
    user_agent = peewee.CharField(max_length=500, null=True)
    created_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        indexes = (
            (("workspace_id", "created_at"), False),
            (("entity_type", "entity_id"), False),
            (("created_at",), False),
        )
