"""In-app notifications: a user's inbox of workflow events."""

from __future__ import annotations

import peewee

from shiftflow.kernel.db import JSONField
from shiftflow.models.tables.base import BaseModel, utcnow
from shiftflow.models.tables.executions import Execution
from shiftflow.models.tables.tenancy import User, Workspace


class Notification(BaseModel):
    """A message for one user: WORKFLOW_EXECUTED, WORKFLOW_FAILED, CONDITION_MET, SYSTEM_ALERT...

    The inbox row only. Sending an email or a chat message is a step with an outside
    effect and goes through the ``SideEffect`` ledger, not through this table.
    """

    workspace = peewee.ForeignKeyField(Workspace, backref="notifications", on_delete="CASCADE")
    user = peewee.ForeignKeyField(User, backref="notifications", on_delete="CASCADE", index=False)
    execution = peewee.ForeignKeyField(Execution, null=True, backref="notifications", on_delete="SET NULL")
    # Not a CHECK: new event types arrive with new step kinds.
    type = peewee.CharField(max_length=40)
    title = peewee.CharField(max_length=300)
    message = peewee.TextField()
    data = JSONField(null=True)
    is_read = peewee.BooleanField(default=False)
    read_at = peewee.DateTimeField(null=True)
    created_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        indexes = (
            (("user", "is_read", "created_at"), False),
            (("created_at",), False),
        )
