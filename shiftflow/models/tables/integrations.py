"""Integrations: the services catalogue, their trigger kinds, and a workspace's
authenticated connections to them."""

from __future__ import annotations

import peewee

from shiftflow.kernel.db import JSONField
from shiftflow.models.tables.base import TimestampedModel
from shiftflow.models.tables.tenancy import User, Workspace


class Integration(TimestampedModel):
    """An outside service ShiftFlow can call or be triggered by (Gmail, Slack, SideShift...).

    Global catalogue rows shipped with the project. Every table has a UUID key; the slug
    (``gmail``) is the unique ``key``.
    """

    key = peewee.CharField(max_length=100, unique=True)
    name = peewee.CharField(max_length=200)
    description = peewee.TextField(default="")
    icon_url = peewee.CharField(max_length=2048, null=True)
    category = peewee.CharField(max_length=50, index=True)
    auth_type = peewee.CharField(max_length=10, default="NONE")
    is_active = peewee.BooleanField(default=True)
    is_popular = peewee.BooleanField(default=False)
    docs_url = peewee.CharField(max_length=2048, null=True)
    website_url = peewee.CharField(max_length=2048, null=True)

    class Meta:
        constraints = [
            peewee.Check(
                "auth_type IN ('OAUTH2', 'API_KEY', 'BASIC', 'NONE')", name="chk_integration_auth_type"
            ),
        ]


class IntegrationTrigger(TimestampedModel):
    """A kind of event an integration can start a workflow with.

    ``key`` is its slug (``gmail.new_email``); ``config_schema`` is the JSON Schema of
    the trigger's configuration in a workflow definition. The catalogue of actions
    is the ``Tool`` table: an action is a tool that belongs to an integration.
    """

    integration = peewee.ForeignKeyField(Integration, backref="triggers", on_delete="CASCADE")
    key = peewee.CharField(max_length=150, unique=True)
    name = peewee.CharField(max_length=200)
    description = peewee.TextField(default="")
    type = peewee.CharField(max_length=10)
    config_schema = JSONField(default=dict)
    polling_interval_seconds = peewee.IntegerField(null=True)
    is_active = peewee.BooleanField(default=True)

    class Meta:
        constraints = [
            peewee.Check(
                "\"type\" IN ('WEBHOOK', 'POLLING', 'SCHEDULE', 'MANUAL')",
                name="chk_integration_trigger_type",
            ),
            peewee.Check(
                "polling_interval_seconds IS NULL OR polling_interval_seconds > 0",
                name="chk_integration_trigger_interval",
            ),
        ]


class Connection(TimestampedModel):
    """A workspace's authenticated account at an integration.

    ``credentials`` is ciphertext only: the kernel encrypts the whole credential document
    (OAuth access and refresh tokens, API keys, passwords) before it is stored and
    decrypts it in the worker that makes the call; this table never sees plaintext.
    ``key_id`` names the encryption key used, so keys can rotate row by row. Only
    ``expires_at`` stays in clear text, so a refresher can find tokens about to expire.
    """

    workspace = peewee.ForeignKeyField(Workspace, backref="connections", on_delete="CASCADE")
    # The member who connected it; the connection outlives them (workflows still use it).
    user = peewee.ForeignKeyField(User, null=True, backref="connections", on_delete="SET NULL", index=False)
    integration = peewee.ForeignKeyField(Integration, backref="connections")
    name = peewee.CharField(max_length=200)
    credentials = peewee.TextField(
        help_text="Ciphertext: the kernel encrypts credentials before storing them; never plaintext."
    )
    key_id = peewee.CharField(max_length=64, null=True)
    expires_at = peewee.DateTimeField(null=True)
    is_active = peewee.BooleanField(default=True)
    last_tested_at = peewee.DateTimeField(null=True)
    test_status = peewee.CharField(max_length=8, default="PENDING")
    last_error = peewee.TextField(null=True)
    #: The connection's own rate limits (``{per_second, per_minute, burst}``, any subset), over
    #: the integration's; None: the integration's (docs/integrations.md#rate-limits-and-cool-downs).
    rate_limits = JSONField(null=True)

    class Meta:
        # Connections by user and integration; also serves lookups by user alone.
        indexes = ((("user", "integration"), False),)
        constraints = [
            peewee.Check(
                "test_status IN ('PENDING', 'SUCCESS', 'FAILED')", name="chk_connection_test_status"
            ),
        ]
