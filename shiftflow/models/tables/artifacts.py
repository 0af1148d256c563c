"""Artifacts: files a run produced (screenshots, PDFs, exports)."""

from __future__ import annotations

import peewee

from shiftflow.models.tables.base import BaseModel, utcnow
from shiftflow.models.tables.executions import Execution, StepExecution
from shiftflow.models.tables.tenancy import Workspace


class Artifact(BaseModel):
    """A file produced by an execution; the bytes live in object storage at ``url``.

    ``type``: SCREENSHOT, PDF, FILE, IMAGE, VIDEO, JSON, TEXT. ``sha256`` lets a retried
    step recognise an upload it already made.
    """

    workspace = peewee.ForeignKeyField(Workspace, backref="artifacts", on_delete="CASCADE")
    execution = peewee.ForeignKeyField(Execution, backref="artifacts", on_delete="CASCADE")
    step_execution = peewee.ForeignKeyField(
        StepExecution, null=True, backref="artifacts", on_delete="CASCADE"
    )
    type = peewee.CharField(max_length=10)
    name = peewee.CharField(max_length=300)
    description = peewee.TextField(null=True)
    # Indexed: a step checks its input artifacts by location, retention finds rows by it.
    url = peewee.CharField(max_length=2048, index=True)
    size_bytes = peewee.BigIntegerField(null=True)
    mime_type = peewee.CharField(max_length=200, null=True)
    sha256 = peewee.CharField(max_length=64, null=True)
    created_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        constraints = [
            peewee.Check(
                "\"type\" IN ('SCREENSHOT', 'PDF', 'FILE', 'IMAGE', 'VIDEO', 'JSON', 'TEXT')",
                name="chk_artifact_type",
            ),
            peewee.Check("size_bytes IS NULL OR size_bytes >= 0", name="chk_artifact_size"),
        ]
