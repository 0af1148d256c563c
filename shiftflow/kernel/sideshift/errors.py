"""SideShift errors, each on one branch of the kernel's error root.

``PermanentError`` children: retrying the same request cannot change the answer.
``TransientError`` children: the same request may pass later (429, 5xx, a timeout
before anything was sent).

``UnknownOutcome`` is the odd one: a create call (shift, checkout, account) reached
SideShift, or may have, and no usable answer came back. The order may exist. It sits on
the PERMANENT branch on purpose: a generic retry policy (Dramatiq retries every
``TransientError``) would POST again and could place a second order. The caller must
mark the order for reconciliation instead (docs/sideshift.md section 10).

``error_from_response`` turns an HTTP answer into one of these. SideShift's error body is
``{"error": {"message": ..., "code": ...}}``, ``code`` optional; several exact texts are
unconfirmed (docs/sideshift.md section 7), so messages are matched loosely and the HTTP status
is the fallback.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from shiftflow.kernel.errors import PermanentError, ShiftFlowError, TransientError
from shiftflow.kernel.retry_after import parse_retry_after

#: The window SideShift's rate limits are counted in, seconds (docs/sideshift.md section 8).
RATE_LIMIT_WINDOW = 60.0
#: The first wait after a 429 without ``Retry-After``, seconds (doubles per attempt).
DEFAULT_RATE_LIMIT_BACKOFF = 10.0


class SideShiftError(ShiftFlowError):
    """Root of every SideShift error; ``status``, ``code`` and ``body`` as received, if any.

    Parameters:
        message: human-readable text (SideShift's ``error.message`` when there was one).
        status: the HTTP status, None when no response was read.
        code: SideShift's ``error.code`` (``BAD_USER_INPUT``, ``ACCESS_DENIED``...), if sent.
        body: the decoded ``error`` object, or the raw text when it was not JSON.
    """

    def __init__(
        self, message: str, *, status: int | None = None, code: str | None = None, body: Any = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.body = body


class SideShiftRejected(SideShiftError, PermanentError):
    """Raised when SideShift refused the request for a reason a retry cannot fix."""


class BadRequest(SideShiftRejected):
    """Raised for a 400 (or other 4xx) that no more specific class below describes."""


class AmountOutOfRange(BadRequest):
    """Raised when the amount is outside the pair's deposit range; see the two children.

    ``minimum``/``maximum`` come from ``error.depositRangeMin``/``depositRangeMax`` when sent.
    """

    @property
    def minimum(self) -> Decimal | None:
        """The pair's deposit minimum when SideShift sent it, else None."""
        return _range_value(self.body, "depositRangeMin")

    @property
    def maximum(self) -> Decimal | None:
        """The pair's deposit maximum when SideShift sent it, else None."""
        return _range_value(self.body, "depositRangeMax")


class AmountTooLow(AmountOutOfRange):
    """Raised when the amount is below the pair's minimum (or not above zero)."""


class AmountTooHigh(AmountOutOfRange):
    """Raised when the amount is above the pair's maximum."""


class InvalidAddress(BadRequest):
    """Raised when a settle or refund address is malformed or belongs to SideShift."""


class PairNotAvailable(BadRequest):
    """Raised when a coin/network pair is unknown, invalid or disabled (``Method X/Y not found``)."""


UnknownPair = PairNotAvailable


class QuoteExpired(BadRequest):
    """Raised when a fixed shift names a quote older than 15 minutes: request a new quote."""


class QuoteAlreadyUsed(BadRequest):
    """Raised when a fixed shift names a quote that already backs a shift.

    Whether SideShift refuses a second use is open (docs/sideshift.md section 10); the
    fake can refuse or accept it, and a real refusal worded the same way maps here.
    ShiftFlow never re-posts a quote, so it does not rely on this refusal.
    """


class QuoteMismatch(SideShiftRejected):
    """Raised by the client when a quote cannot back a fixed shift as asked: its deposit or
    settle amount differs from the one requested, or its deposit amount has more decimals
    than the coin has (a fixed shift needs exactly that amount, which could not be sent).
    Nothing was created; the quote is not used.
    """


class UnknownPrecision(SideShiftRejected):
    """Raised by the client, before sending, for an amount of a coin whose decimals neither
    ``NATIVE_DECIMALS`` nor SideShift's coin list give: it could not be checked."""


class InvalidUserIp(BadRequest):
    """Raised when ``x-user-ip`` is missing or malformed where SideShift needs it."""


class TooManyOpenShifts(BadRequest):
    """Raised when the account already has the maximum of open variable shifts (5).

    Cancel one (after 5 minutes) or let one expire; a quick retry will not help.
    """


class OrderNotCancellable(BadRequest):
    """Raised by cancel-order when the order already expired or is younger than 5 minutes."""


class NotFound(SideShiftRejected):
    """Raised on a 404: an unknown shift, quote, checkout or account."""


class ShiftNotFound(NotFound):
    """Raised when a shift id is unknown to SideShift."""


class QuoteNotFound(NotFound):
    """Raised when a fixed shift names a quote SideShift does not know."""


class Unauthorized(SideShiftRejected):
    """Raised when ``x-sideshift-secret`` (or a signature) is missing or wrong (401)."""


class PermissionDenied(SideShiftRejected):
    """Raised when SideShift refuses the user's jurisdiction (403 ``ACCESS_DENIED``)."""


class UnexpectedResponse(SideShiftRejected):
    """Raised when a 2xx answer of a safe call does not have the documented shape."""


class UnknownOutcome(SideShiftRejected):
    """Raised when a create call was (or may have been) sent and no usable answer was read.

    Read timeout, connection reset or close after the request went out, a 5xx, or a 201
    whose body cannot be read. The order MAY exist: do not POST again; reconcile.
    ``body`` holds whatever was read (a 201 body that failed to parse keeps the shift id).
    Permanent branch on purpose: see the module docstring.
    """


class SideShiftTransient(SideShiftError, TransientError):
    """Raised when the same request may succeed later; nothing was created."""


class RateLimited(SideShiftTransient):
    """Raised when a rate limit stops the call: SideShift's 429, or our own limiter.

    Parameters:
        retry_after: seconds to wait before trying again, when known (SideShift's
            ``Retry-After``, which it may not send: docs/sideshift.md section 8).
        local: True when our limiter refused before sending anything (no request left).
    """

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        local: bool = False,
        status: int | None = None,
        code: str | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(message, status=status, code=code, body=body)
        self.retry_after = retry_after
        self.local = local

    def wait_seconds(self, attempt: int, *, default: float = DEFAULT_RATE_LIMIT_BACKOFF) -> float:
        """How long to wait before retry number ``attempt`` (1-based).

        ``retry_after`` when known; otherwise ``default`` doubling per attempt, up to the
        60 s window SideShift's limits are counted in (a retry after that always finds
        the window renewed).
        """
        if self.retry_after is not None:
            return self.retry_after
        return min(RATE_LIMIT_WINDOW, default * 2 ** (max(1, attempt) - 1))


class ServiceUnavailable(SideShiftTransient):
    """Raised on a 5xx, a timeout or a connection error of a call that is safe to repeat.

    For a create call it is raised only when the request provably never left (connect
    refused or timed out, no pooled connection); otherwise see ``UnknownOutcome``.
    """


class LimiterUnavailable(SideShiftTransient):
    """Raised when the shared rate limiter (Redis) cannot be reached; nothing was sent."""


def _range_value(body: Any, key: str) -> Decimal | None:
    if not isinstance(body, Mapping) or body.get(key) is None:
        return None
    try:
        return Decimal(str(body[key]))
    except InvalidOperation:
        return None


# Message patterns first (they are more precise than the status), in order. Texts come
# from docs/sideshift.md section 7; unconfirmed ones are matched loosely.
_BY_MESSAGE: tuple[tuple[re.Pattern[str], type[SideShiftError]], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), cls)
    for pattern, cls in (
        (r"amount too low|must be greater than zero|below (the )?min", AmountTooLow),
        (r"amount too high|above (the )?max", AmountTooHigh),
        (
            r"invalid receiving address|invalid refund|address belongs to sideshift|invalid .*address",
            InvalidAddress,
        ),
        (r"quote has already expired|quote .*expired", QuoteExpired),
        (r"quote .*(already (been )?used|already redeemed)", QuoteAlreadyUsed),
        (r"quote .*not found", QuoteNotFound),
        (
            r"^method .* not found|method.*disabled|invalid coin|invalid network|duplicate coin",
            PairNotAvailable,
        ),
        (r"x-sideshift-secret|unauthori[sz]ed|signature", Unauthorized),
        (r"x-user-ip", InvalidUserIp),
        (r"access denied|country-blocked", PermissionDenied),
        (r"open variable shifts|too many open", TooManyOpenShifts),
        (r"order already expired|can only be cancell?ed after", OrderNotCancellable),
        (r"shift .*not found|order .*not found", ShiftNotFound),
        (r"rate unavailable", ServiceUnavailable),
    )
)

_BY_CODE: dict[str, type[SideShiftError]] = {
    "ACCESS_DENIED": PermissionDenied,
    "METHOD_NOT_FOUND": PairNotAvailable,
    "FORBIDDEN": Unauthorized,
}


def error_from_response(
    status: int, error: Mapping[str, Any] | None, text: str, headers: Mapping[str, str], *, unsafe: bool
) -> SideShiftError:
    """Map a non-2xx answer to the SideShift error a caller should handle.

    Parameters:
        status: the HTTP status.
        error: the decoded ``error`` object of the body, or None when there was none.
        text: the raw body text (kept when the body is not SideShift's JSON).
        headers: the response headers (``Retry-After`` on a 429).
        unsafe: True for calls that create something (shifts, checkout, account): a 5xx
            may have come after the order was stored, so it is an ``UnknownOutcome``.

    Returns:
        The exception to raise (not raised here).
    """
    message = str(error.get("message") or "") if error else ""
    code = str(error["code"]) if error and error.get("code") else None
    body: Any = dict(error) if error is not None else text[:2000]
    shown = message or f"HTTP {status}"
    if status == 429:
        retry = parse_retry_after(headers.get("retry-after"))
        return RateLimited(shown, retry_after=retry, status=status, code=code, body=body)
    if status >= 500 and unsafe:
        return UnknownOutcome(
            f"create call answered {status} ({shown}); the order may exist: reconcile, do not re-post",
            status=status,
            code=code,
            body=body,
        )
    cls = _classify(status, message, code)
    return cls(shown, status=status, code=code, body=body)


def _classify(status: int, message: str, code: str | None) -> type[SideShiftError]:
    for pattern, cls in _BY_MESSAGE:
        if message and pattern.search(message):
            return cls
    if code in _BY_CODE:
        return _BY_CODE[code]
    if status >= 500:
        return ServiceUnavailable
    if status == 401:
        return Unauthorized
    if status == 403:
        return PermissionDenied
    if status == 404:
        return NotFound
    return BadRequest
