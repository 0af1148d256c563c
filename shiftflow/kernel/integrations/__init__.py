"""Integrations and connections at the kernel level: the catalogue, credential schemas and
their secrets, connection tests, OAuth2 tokens, and rate limits shared through Redis.

* ``base``: ``Integration`` (one catalogue entry), ``RateLimits``, ``CheckResult``,
  ``check_connection``;
* ``catalogue``: the built-in entries and the ``shiftflow.integrations`` entry points;
* ``secrets``: masking credentials for display, hiding their values in text;
* ``oauth2``: the token client (client-credentials and refresh-token grants);
* ``ratelimit``: ``acquire`` before an outside call, ``cool_down`` after its 429.

Nothing here reads the database or talks to the broker; the engine stores connections
and parks steps (``docs/integrations.md``).
"""

from __future__ import annotations

from shiftflow.kernel.integrations.base import (
    CheckContext,
    CheckResult,
    Integration,
    InvalidCredentials,
    RateLimits,
    check_connection,
)
from shiftflow.kernel.integrations.catalogue import (
    IntegrationCatalogue,
    UnknownIntegration,
    builtin_integrations,
    default_catalogue,
)
from shiftflow.kernel.integrations.secrets import mask, redactor

__all__ = [
    "CheckContext",
    "CheckResult",
    "Integration",
    "IntegrationCatalogue",
    "InvalidCredentials",
    "RateLimits",
    "UnknownIntegration",
    "builtin_integrations",
    "check_connection",
    "default_catalogue",
    "mask",
    "redactor",
]
