"""The ``sideshift`` integration: a SideShift account (affiliate id and secret) for swap steps.

Test: ``GET /permissions`` on the deployment's SideShift API root
(``SHIFTFLOW_SIDESHIFT_BASE_URL``), through ShiftFlow's SideShift client. It proves the
API answers and that shifts may be created from this server's address (SideShift
refuses restricted jurisdictions). SideShift has no read-only call that checks an
account's secret, so a reachable API with shifts allowed is ``unverified``, and says so;
a refused jurisdiction fails.

The API root comes from the settings, never from the credentials: a connection must not
be able to point the swap client at another server.
"""

from __future__ import annotations

from typing import Any

from shiftflow.kernel.errors import ToolError
from shiftflow.kernel.integrations.base import CheckContext, CheckResult, Integration, RateLimits, unverified
from shiftflow.kernel.integrations.secrets import secret
from shiftflow.kernel.sideshift import DEFAULT_BASE_URL, SideShiftClient, Timeouts

CREDENTIALS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["affiliate_id"],
    "properties": {
        "affiliate_id": {"type": "string", "pattern": r"^[A-Za-z0-9]{1,64}$",
                         "description": "The SideShift account id (affiliateId)."},
        "secret": secret({"type": "string", "minLength": 1, "maxLength": 256,
                          "description": "The account secret (x-sideshift-secret)."}),
    },
}


def check(credentials: dict[str, Any], ctx: CheckContext) -> CheckResult:
    """``GET /permissions``; see the module docstring."""
    base_url = ctx.settings.sideshift_base_url if ctx.settings is not None else DEFAULT_BASE_URL
    timeouts = Timeouts(connect=ctx.timeout, read=ctx.timeout, write=ctx.timeout, pool=ctx.timeout)
    with SideShiftClient(credentials["affiliate_id"], secret=credentials.get("secret"), base_url=base_url,
                         timeouts=timeouts) as client:
        permissions = client.get_permissions()
    if not permissions.create_shift:
        raise ToolError("SideShift answers but refuses to create shifts from this server's address "
                        "(a restricted jurisdiction)")
    return unverified("SideShift answers and allows shifts from this server's address; it has no read-only "
                      "call that checks an account's secret, so the secret is proven by the first swap",
                      create_shift=True)


INTEGRATION = Integration(
    key="sideshift",
    name="SideShift",
    description="A SideShift.ai account for crypto swaps (affiliate id and secret).",
    category="crypto",
    auth_type="API_KEY",
    credentials_schema=CREDENTIALS_SCHEMA,
    test=check,
    # SideShift counts by our address, so every connection shares one budget. Its
    # documented per-minute limits on quotes and shifts are enforced by the SideShift
    # client's own sliding windows (docs/sideshift.md section 8); this one bounds reads.
    limits=RateLimits(per_second=5, burst=10),
    shared_limits=RateLimits(per_second=10, burst=20),
    cooldown_scope="integration",
    base_url=DEFAULT_BASE_URL,
    docs_url="https://sideshift.ai/api",
)
