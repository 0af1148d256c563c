"""One guarded GET for connection tests, with the answers every test reads the same way.

Through the HTTP tool's client (``tools.http.exchange``: address rules, deadline, size
cap). A 429, or a 503 with ``Retry-After``, is ``RateLimited``; a 401 or 403 is a refusal
of the credentials (permanent); another 5xx is transient. Anything else is returned for
the test to judge.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from shiftflow.kernel.errors import ToolError, ToolUnavailable
from shiftflow.kernel.integrations.base import CheckContext
from shiftflow.kernel.tools import http


def get(url: str, ctx: CheckContext, *, headers: Mapping[str, str] | None = None,
        params: Mapping[str, Any] | None = None, method: str = "GET",
        refused: str = "the credentials were refused") -> http.Exchange:
    """``method url`` with ``headers``; see the module docstring.

    Raises:
        RateLimited: 429, or 503 with ``Retry-After``.
        ToolError: 401 or 403 (``refused`` says what that means), or a refused address.
        ToolUnavailable: another 5xx, a timeout, a refused connection.
    """
    answer = http.exchange({"url": url, "method": method, "headers": dict(headers or {}), "params": params},
                           timeout=ctx.timeout, allow_private=ctx.allow_private)
    limited = http.rate_limited(answer)
    if limited is not None:
        raise limited
    if answer.status in (401, 403):
        raise ToolError(f"{method} {url} answered {answer.status}: {refused}")
    if answer.status >= 500:
        raise ToolUnavailable(f"{method} {url} answered {answer.status}")
    return answer


def json_body(answer: http.Exchange) -> Any:
    """The answer's JSON, or None when it is not JSON."""
    try:
        return json.loads(answer.body)
    except ValueError:
        return None
