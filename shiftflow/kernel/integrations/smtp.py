"""The ``smtp`` integration: a mail server ``email.send`` delivers through.

Test: connect, EHLO, STARTTLS or TLS as configured, AUTH when a username is given, QUIT
(``tools.mail.verify_login``): the credentials and the certificate are proven, nothing
is sent.
"""

from __future__ import annotations

from typing import Any

from shiftflow.kernel.integrations.base import CheckContext, CheckResult, Integration, RateLimits, passed
from shiftflow.kernel.integrations.secrets import secret
from shiftflow.kernel.tools import mail

CREDENTIALS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["host"],
    "properties": {
        "host": {"type": "string", "minLength": 1, "maxLength": 255},
        "port": {"type": "integer", "minimum": 1, "maximum": 65535,
                 "description": "587 by default, 465 for security: tls."},
        "security": {"enum": list(mail.SECURITY), "default": "starttls"},
        "username": {"type": "string", "minLength": 1, "maxLength": 320},
        "password": secret({"type": "string", "maxLength": 4096}),
        "from": {"type": "string", "format": "email", "maxLength": 320,
                 "description": "The default sender address."},
        "tls_ca_pem": {"type": "string", "maxLength": 65536,
                       "description": "A private CA certificate (PEM) to trust; certificates are always checked."},
    },
    "dependentRequired": {"password": ["username"]},
    "if": {"required": ["username"]},
    "then": {"required": ["password"]},
}


def check(credentials: dict[str, Any], ctx: CheckContext) -> CheckResult:
    """Connect, greet, secure, log in and quit; see the module docstring."""
    seen = mail.verify_login(credentials, timeout=ctx.timeout, allow_private=ctx.allow_private)
    how = "logged in" if seen["authenticated"] else "connected (no username: AUTH not tried)"
    return passed(f"SMTP {seen['host']}:{seen['port']} ({seen['security']}): {how}", **seen)


INTEGRATION = Integration(
    key="smtp",
    name="SMTP",
    description="A mail server (STARTTLS or TLS, AUTH) that email.send delivers through.",
    category="email",
    auth_type="BASIC",
    credentials_schema=CREDENTIALS_SCHEMA,
    test=check,
    tools=("email.send",),
    # Mail providers count messages per minute and per day; a steady trickle avoids their
    # throttling (and a 4xx deferral of every recipient).
    limits=RateLimits(per_second=2, per_minute=60, burst=5),
)
