"""LLM errors, each on one branch of the kernel's error root.

Permanent (``ToolError``, never retried): the provider refused the request (400, 401,
403, 404, 413, a 429 for an exhausted quota), the request is malformed before anything
is sent, a connection field is missing, a model has no price, a budget is spent.
Transient (``ToolUnavailable``): a 5xx, a refused or dropped connection, the deadline
passed. Rate limits (``RateLimited``, a transient error with ``retry_after``): a 429, a
529 or an ``overloaded_error``, a 503 with ``Retry-After``; the caller waits
``retry_after`` seconds (or its own backoff when None) instead of retrying at once.

Messages name the provider, the status and the provider's own message, never the API key.
"""

from __future__ import annotations

from decimal import Decimal

from shiftflow.kernel.errors import PermanentError, RateLimited, ShiftFlowError, ToolError, ToolUnavailable


class LlmError(ShiftFlowError):
    """What every error of a provider's answer carries (mixed into the classes below).

    Attributes:
        provider: ``openai`` or ``anthropic``.
        status: the HTTP status, None when no answer was read.
        error_type: the provider's error type or code (``rate_limit_error``,
            ``insufficient_quota``...), when it sent one.
        request_id: the provider's request id, when it sent one.
    """

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        status: int | None = None,
        error_type: str | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.provider = provider
        self.status = status
        self.error_type = error_type
        self.request_id = request_id


class LlmRejected(LlmError, ToolError):
    """Raised when the provider refused the request and the same request would be refused again."""


class LlmAuthFailed(LlmRejected):
    """Raised for a 401 or 403: the API key is wrong, revoked, or may not use this model."""


class LlmBadResponse(LlmError, ToolError):
    """Raised when a successful status came with a body that is not the provider's answer shape."""


class LlmUnavailable(LlmError, ToolUnavailable):
    """Raised when the call failed in a way that may pass later: a 5xx, a refused or dropped connection."""


class LlmTimeout(LlmUnavailable):
    """Raised when the call's deadline passed before the whole answer was read.

    The provider may still have run (and billed) the call; its tokens are unknown.
    """


class LlmRateLimited(LlmError, RateLimited):
    """Raised when the provider asked us to slow down (429), or is overloaded (529, ``overloaded_error``).

    ``retry_after`` holds the seconds it asked for (``retry-after-ms``, ``Retry-After``,
    or the reset time of an exhausted limit), None when it said nothing.
    """

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        retry_after: float | None,
        status: int | None = None,
        error_type: str | None = None,
        request_id: str | None = None,
        overloaded: bool = False,
    ) -> None:
        super().__init__(message, provider=provider, status=status, error_type=error_type, request_id=request_id)
        self.retry_after = retry_after
        self.overloaded = overloaded


class InvalidLlmRequest(ToolError):
    """Raised before anything is sent when the request cannot be right; the message names the field."""


class InvalidCredentials(PermanentError):
    """Raised when a connection's credentials lack a field or hold a malformed one (named, never shown)."""


class UnknownModelPrice(PermanentError):
    """Raised when a model is in no price table and the table has no default price."""


class BudgetExceeded(PermanentError):
    """Raised when a call could take a workspace past its daily LLM budget.

    Attributes:
        budget: the daily limit, USD.
        spent: what the workspace spent today (UTC), USD.
        estimate: the most this call may cost, USD.
        workspace: the workspace, when the caller named it.
    """

    def __init__(self, message: str, *, budget: Decimal, spent: Decimal, estimate: Decimal, workspace: str | None) -> None:
        super().__init__(message)
        self.budget = budget
        self.spent = spent
        self.estimate = estimate
        self.workspace = workspace
