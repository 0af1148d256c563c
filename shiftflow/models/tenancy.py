"""Tenancy: users, workspaces, members with roles, API keys (seeds 000-004: one User table)."""

from __future__ import annotations

import peewee

from shiftflow.models.base import BaseModel, TimestampedModel, utcnow
from shiftflow.kernel.db import JSONField


class User(TimestampedModel):
    """A person. One table for every seed (seed 000 wallet users, 003 password users...)."""

    email = peewee.CharField(max_length=320, null=True, unique=True)
    name = peewee.CharField(max_length=200, null=True)
    password_hash = peewee.CharField(max_length=255, null=True)
    wallet_address = peewee.CharField(max_length=128, null=True, unique=True)
    is_active = peewee.BooleanField(default=True)
    last_login_at = peewee.DateTimeField(null=True)


class Workspace(TimestampedModel):
    """A tenant: every workflow, connection, execution and log belongs to one workspace."""

    name = peewee.CharField(max_length=200)
    slug = peewee.CharField(max_length=100, unique=True)
    plan = peewee.CharField(max_length=20, default="FREE")
    max_workflows = peewee.IntegerField(default=5)
    max_executions = peewee.IntegerField(default=1000)


class WorkspaceMember(TimestampedModel):
    """A user's role in a workspace: OWNER, ADMIN, MEMBER or VIEWER."""

    workspace = peewee.ForeignKeyField(Workspace, backref="members", on_delete="CASCADE")
    user = peewee.ForeignKeyField(User, backref="memberships", on_delete="CASCADE")
    role = peewee.CharField(max_length=10, default="MEMBER")

    class Meta:
        indexes = ((("workspace", "user"), True),)


class ApiKey(BaseModel):
    """An API key: shown once, stored as a SHA-256 hash with a short lookup prefix."""

    workspace = peewee.ForeignKeyField(Workspace, backref="api_keys", on_delete="CASCADE")
    user = peewee.ForeignKeyField(User, backref="api_keys", on_delete="CASCADE", null=True)
    name = peewee.CharField(max_length=200)
    prefix = peewee.CharField(max_length=32, index=True)
    key_hash = peewee.CharField(max_length=64, unique=True)
    scopes = JSONField(default=list)
    is_active = peewee.BooleanField(default=True)
    last_used_at = peewee.DateTimeField(null=True)
    expires_at = peewee.DateTimeField(null=True)
    revoked_at = peewee.DateTimeField(null=True)
    created_at = peewee.DateTimeField(default=utcnow)
