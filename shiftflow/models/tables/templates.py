"""Workflow templates: ready-made definitions a workspace copies into a workflow."""

from __future__ import annotations

import peewee

from shiftflow.kernel.db import JSONField
from shiftflow.models.tables.base import TimestampedModel


class WorkflowTemplate(TimestampedModel):
    """A catalogue entry a user starts a workflow from.

    Global, not tenant data: the project ships templates. ``definition`` has the same
    schema as ``WorkflowVersion.definition`` (trigger and steps); ``required_integrations``
    lists ``Integration.key`` values a workspace must connect before using it.
    """

    key = peewee.CharField(max_length=100, unique=True)
    name = peewee.CharField(max_length=200)
    description = peewee.TextField(default="")
    category = peewee.CharField(max_length=50, index=True)
    # Denormalised from the definition so the catalogue can filter without parsing JSON.
    trigger_type = peewee.CharField(max_length=12, default="MANUAL")
    definition = JSONField()
    icon = peewee.CharField(max_length=2048, null=True)
    tags = JSONField(default=list)
    is_popular = peewee.BooleanField(default=False)
    usage_count = peewee.IntegerField(default=0)
    required_integrations = JSONField(default=list)

    class Meta:
        constraints = [peewee.Check("usage_count >= 0", name="chk_workflow_template_usage")]
