"""MongoDB retention: a TTL index on ``timestamp`` per log collection, its lifetime from settings.

MongoDB deletes a document once its ``timestamp`` (a BSON date: every log, analytics and
usage document has one) is older than the index's ``expireAfterSeconds``; its background
task runs about once a minute, so documents may outlive their lifetime by that much.
Defaults: execution logs 30 days, analytics events and integration usage one year
(``SHIFTFLOW_LOG_RETENTION_DAYS``, ``_ANALYTICS_RETENTION_DAYS``, ``_USAGE_RETENTION_DAYS``;
0 keeps them forever: the TTL index is dropped).

``ensure_ttl_indexes`` is idempotent: it creates the index, changes its lifetime in place
(``collMod``) when the setting changed, or drops it. ``shiftflow migrate`` and
``shiftflow retention run`` call it.
"""

from __future__ import annotations

from typing import Any

from pymongo import ASCENDING
from pymongo.errors import OperationFailure

from shiftflow.kernel.mongo import ANALYTICS_EVENTS, EXECUTION_LOGS, INTEGRATION_USAGE
from shiftflow.kernel.settings import Settings

#: The name of the TTL index in each collection.
INDEX_NAME = "timestamp_ttl"
_DAY = 86_400


def lifetimes(settings: Settings) -> dict[str, int]:
    """Seconds each log collection keeps a document (0: forever)."""
    return {
        EXECUTION_LOGS: settings.log_retention_days * _DAY,
        ANALYTICS_EVENTS: settings.analytics_retention_days * _DAY,
        INTEGRATION_USAGE: settings.usage_retention_days * _DAY,
    }


def ensure_ttl_indexes(db: Any, settings: Settings) -> dict[str, str]:
    """Make each collection's TTL index match the settings.

    Parameters:
        db: a pymongo database.
        settings: the lifetimes (``lifetimes``).

    Returns:
        Per collection what was done: ``created``, ``changed``, ``kept``, ``dropped`` or ``off``.
    """
    done = {}
    for collection, seconds in lifetimes(settings).items():
        existing = db[collection].index_information().get(INDEX_NAME)
        if seconds <= 0:
            if existing is not None:
                db[collection].drop_index(INDEX_NAME)
            done[collection] = "dropped" if existing is not None else "off"
        elif existing is None:
            db[collection].create_index([("timestamp", ASCENDING)], name=INDEX_NAME, expireAfterSeconds=seconds)
            done[collection] = "created"
        elif int(existing.get("expireAfterSeconds", -1)) == seconds:
            done[collection] = "kept"
        else:
            try:
                db.command("collMod", collection, index={"name": INDEX_NAME, "expireAfterSeconds": seconds})
            except OperationFailure:
                # A server without collMod on indexes: the same result, with a moment without the index.
                db[collection].drop_index(INDEX_NAME)
                db[collection].create_index([("timestamp", ASCENDING)], name=INDEX_NAME,
                                            expireAfterSeconds=seconds)
            done[collection] = "changed"
    return done
