"""Tenancy: users, workspaces, members with roles, API keys."""

from __future__ import annotations

import peewee

from shiftflow.kernel.db import JSONField
from shiftflow.models.tables.base import BaseModel, TimestampedModel, utcnow


class User(TimestampedModel):
    """A person: one table for every product (wallet users, password users...).

    Product-specific profile data (travel preferences, social accounts, resume links)
    lives in ``profile``: the engine never queries it, tools read it.
    """

    email = peewee.CharField(max_length=320, null=True, unique=True)
    name = peewee.CharField(max_length=200, null=True)
    password_hash = peewee.CharField(max_length=255, null=True)
    wallet_address = peewee.CharField(max_length=128, null=True, unique=True)
    is_active = peewee.BooleanField(default=True)
    last_login_at = peewee.DateTimeField(null=True)
    # A verification date answers both "is it verified" and "since when".
    email_verified_at = peewee.DateTimeField(null=True)
    avatar_url = peewee.CharField(max_length=2048, null=True)
    # IANA name; the default zone of the user's schedules.
    timezone = peewee.CharField(max_length=64, default="UTC")
    profile = JSONField(default=dict)


class Workspace(TimestampedModel):
    """A tenant: every workflow, connection, execution and log belongs to one workspace."""

    name = peewee.CharField(max_length=200)
    slug = peewee.CharField(max_length=100, unique=True)
    plan = peewee.CharField(max_length=20, default="FREE")
    max_workflows = peewee.IntegerField(default=5)
    max_executions = peewee.IntegerField(default=1000)
    # Admission quotas of this workspace (migration 0009), set by ``shiftflow quotas``. NULL
    # takes the deployment's default (SHIFTFLOW_QUOTA_*); a rate of 0 means no limit.
    quota_webhooks_per_second = peewee.FloatField(null=True)
    quota_webhooks_burst = peewee.IntegerField(null=True)
    quota_runs_per_second = peewee.FloatField(null=True)
    quota_runs_burst = peewee.IntegerField(null=True)
    quota_max_queued_executions = peewee.IntegerField(null=True)
    # The most this workspace's LLM calls may cost per UTC day, USD (migration 0014). NULL
    # takes the deployment's SHIFTFLOW_LLM_DAILY_BUDGET_USD ("" there: no limit).
    llm_daily_budget_usd = peewee.DecimalField(max_digits=12, decimal_places=6, null=True)

    class Meta:
        constraints = [
            peewee.Check("max_workflows >= 0 AND max_executions >= 0", name="chk_workspace_limits"),
            peewee.Check(
                "(quota_webhooks_per_second IS NULL OR quota_webhooks_per_second >= 0)"
                " AND (quota_webhooks_burst IS NULL OR quota_webhooks_burst >= 1)"
                " AND (quota_runs_per_second IS NULL OR quota_runs_per_second >= 0)"
                " AND (quota_runs_burst IS NULL OR quota_runs_burst >= 1)"
                " AND (quota_max_queued_executions IS NULL OR quota_max_queued_executions >= 0)",
                name="chk_workspace_quotas",
            ),
            peewee.Check("llm_daily_budget_usd IS NULL OR llm_daily_budget_usd >= 0",
                         name="chk_workspace_llm_budget"),
        ]


class WorkspaceMember(TimestampedModel):
    """A user's role in a workspace: OWNER, ADMIN, MEMBER or VIEWER."""

    workspace = peewee.ForeignKeyField(Workspace, backref="members", on_delete="CASCADE")
    user = peewee.ForeignKeyField(User, backref="memberships", on_delete="CASCADE")
    role = peewee.CharField(max_length=10, default="MEMBER")

    class Meta:
        indexes = ((("workspace", "user"), True),)
        constraints = [
            peewee.Check("role IN ('OWNER', 'ADMIN', 'MEMBER', 'VIEWER')", name="chk_workspace_member_role"),
        ]


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
    # Who made the key (migration 0008): the member and key that asked, or ``cli`` for the
    # operator. Plain ids, as in the audit log: the record outlives the maker. NULL on
    # keys made before 0008.
    created_by_user_id = peewee.UUIDField(null=True)
    created_by_key_id = peewee.UUIDField(null=True)
    created_via = peewee.CharField(max_length=10, null=True)

    class Meta:
        # Keys listed per user and state.
        indexes = ((("user", "is_active"), False),)


# Migration 0002: the authentication lookup only ever wants active keys;
# a partial index stays small however many revoked keys pile up.
ApiKey.add_index(ApiKey.index(ApiKey.key_hash, where=peewee.SQL("is_active"), name="idx_api_keys_hash"))
