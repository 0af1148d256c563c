"""Prompt templates: versioned prompts and the validations of their output."""

from __future__ import annotations

from typing import Any

import peewee

from shiftflow.kernel.db import JSONField
from shiftflow.models.tables.base import BaseModel, TimestampedModel, utcnow
from shiftflow.models.tables.tenancy import User, Workspace


class Prompt(TimestampedModel):
    """A prompt template a workflow step (or the prompt API) runs as an LLM call.

    ``template`` and ``variables`` (their types and constraints) are the current
    version's; every change also writes a ``PromptVersion`` row and bumps ``version``.
    ``status``: DRAFT, PUBLISHED, ARCHIVED; a published prompt has ``published_at``.
    """

    # Foreign-key ids peewee adds (declared for the type checker).
    workspace_id: Any
    created_by_id: Any

    workspace = peewee.ForeignKeyField(Workspace, backref="prompts", on_delete="CASCADE", index=False)
    created_by = peewee.ForeignKeyField(User, null=True, backref="prompts", on_delete="SET NULL")
    name = peewee.CharField(max_length=200)
    description = peewee.TextField(null=True)
    template = peewee.TextField()
    variables = JSONField(default=list)
    version = peewee.IntegerField(default=1)
    status = peewee.CharField(max_length=10, default="DRAFT")
    tags = JSONField(default=list)
    published_at = peewee.DateTimeField(null=True)

    class Meta:
        # Prompts by status, per tenant.
        indexes = (
            (("workspace", "status"), False),
            (("created_at",), False),
        )
        constraints = [
            peewee.Check("status IN ('DRAFT', 'PUBLISHED', 'ARCHIVED')", name="chk_prompt_status"),
            # Added by migration 0002: positive versions, a publication time once published.
            peewee.Check("version >= 1", name="chk_prompt_version_positive"),
            peewee.Check(
                "status <> 'PUBLISHED' OR published_at IS NOT NULL", name="chk_prompt_published_timestamp"
            ),
        ]


# Migration 0002: the catalogue of published prompts, newest first.
Prompt.add_index(
    Prompt.index(
        Prompt.status,
        Prompt.published_at,
        where=peewee.SQL("status = 'PUBLISHED'"),
        name="idx_prompts_status_published",
    )
)


class PromptVersion(BaseModel):
    """An immutable snapshot of a prompt's template; LLM calls pin the one they ran.

    Migration 0014 gives each version its own life cycle and model settings: ``status``
    DRAFT -> PUBLISHED -> ARCHIVED (only a published version runs in production; who
    published it and when are kept), and ``config`` (connection, model, system text,
    temperature, max_tokens, response_format, tools). Template, variables and config never
    change after the version is created; only the status columns move.
    """

    workspace_id: Any
    prompt_id: Any
    created_by_id: Any
    published_by_id: Any

    workspace = peewee.ForeignKeyField(Workspace, backref="prompt_versions", on_delete="CASCADE")
    prompt = peewee.ForeignKeyField(Prompt, backref="versions", on_delete="CASCADE", index=False)
    version = peewee.IntegerField()
    template = peewee.TextField()
    variables = JSONField(default=list)
    change_log = peewee.TextField(null=True)
    created_by = peewee.ForeignKeyField(User, null=True, backref="prompt_versions", on_delete="SET NULL")
    created_at = peewee.DateTimeField(default=utcnow)
    config = JSONField(default=dict)
    status = peewee.CharField(max_length=10, default="DRAFT")
    published_at = peewee.DateTimeField(null=True)
    published_by = peewee.ForeignKeyField(User, null=True, backref="published_prompt_versions",
                                          on_delete="SET NULL", index=False)
    archived_at = peewee.DateTimeField(null=True)

    class Meta:
        indexes = (
            (("prompt", "version"), True),
            (("prompt", "created_at"), False),
        )
        constraints = [
            peewee.Check("version >= 1", name="chk_prompt_version_version_positive"),
            peewee.Check("status IN ('DRAFT', 'PUBLISHED', 'ARCHIVED')", name="chk_prompt_version_status"),
            peewee.Check("status <> 'PUBLISHED' OR published_at IS NOT NULL",
                         name="chk_prompt_version_published_at"),
        ]


class PromptValidation(TimestampedModel):
    """A check run on a prompt's output.

    ``type``: SCHEMA (``config`` is a JSON Schema), REGEX (``config.pattern``), FUNCTION
    (``config.name`` of a validator registered in code; ShiftFlow never runs
    user-supplied code).
    """

    workspace = peewee.ForeignKeyField(Workspace, backref="prompt_validations", on_delete="CASCADE")
    prompt = peewee.ForeignKeyField(Prompt, backref="validations", on_delete="CASCADE", index=False)
    name = peewee.CharField(max_length=200)
    type = peewee.CharField(max_length=10)
    config = JSONField(default=dict)
    is_active = peewee.BooleanField(default=True)

    class Meta:
        indexes = ((("prompt", "is_active"), False),)
        constraints = [
            peewee.Check("\"type\" IN ('SCHEMA', 'REGEX', 'FUNCTION')", name="chk_prompt_validation_type"),
        ]
