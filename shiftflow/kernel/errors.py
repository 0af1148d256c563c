"""One error root with two branches that decide retries.

``PermanentError`` and its children never retry: retrying cannot change the outcome.
``TransientError`` and its children retry with backoff: the same call may succeed later.
Actors never catch ``Exception``; they let these propagate so that retries and
dead letters keep working.
"""

from __future__ import annotations


class ShiftFlowError(Exception):
    """Root of every error ShiftFlow raises on purpose."""


class PermanentError(ShiftFlowError):
    """Raised when retrying cannot help: bad input, a missing row, a refused request."""


class TransientError(ShiftFlowError):
    """Raised when the same operation may succeed later: a timeout, a 5xx, a lost connection."""


class SettingsError(PermanentError):
    """Raised at start-up when an environment variable is missing or malformed.

    The message names the variable and what is expected, so a person can fix it.
    """


class DefinitionError(PermanentError):
    """Raised when a workflow definition does not validate; the message names the path."""


class NotFound(PermanentError):
    """Raised when a referenced row (workflow, execution, step, webhook) does not exist."""


class SignatureError(PermanentError):
    """Raised when a webhook signature, timestamp or header is missing or wrong."""


class ToolError(PermanentError):
    """Raised when a tool call fails in a way a retry cannot fix (4xx, bad response)."""


class ToolUnavailable(TransientError):
    """Raised when a tool call failed in a way that may pass later (timeout, 5xx, refused)."""


class RateLimited(ToolUnavailable):
    """Raised when the other side asked us to slow down (a 429, or a 503 with ``Retry-After``).

    Parameters:
        message: what was refused, for people.
        retry_after: seconds the other side asked us to wait, when it said (``Retry-After``);
            None when it did not, and the caller's own backoff decides.
    """

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ToolOutcomeUnknown(ToolError):
    """Raised when a call with an outside effect may or may not have happened.

    An SMTP server that took the message body and then went silent may have delivered it.
    This sits on the PERMANENT branch on purpose: a retry could do the effect twice, and a
    tool with ``effect: once`` promises never to do that.
    """


class LimitExceeded(ToolError):
    """Raised when an input or an output is over one of the configured limits; names the limit."""


class ArtifactNotFound(NotFound):
    """Raised when an artifact location names nothing in the store (deleted, or never stored)."""


class ArtifactTooLarge(LimitExceeded):
    """Raised when an artifact is larger than the store's limit per artifact; nothing is kept."""


class ArtifactStoreUnavailable(TransientError):
    """Raised when the artifact store could not be reached or timed out (the call may pass later)."""


class BrokerUnavailable(TransientError):
    """Raised when RabbitMQ did not confirm a publish: the message may not be durable."""


class QueueFull(BrokerUnavailable):
    """Raised when RabbitMQ refused a publish (``basic.nack``): the queue is at its length limit.

    Nothing was queued; the same message may be sent again later (``x-overflow:
    reject-publish`` refuses new messages rather than dropping old ones).
    """


class QuarantinedError(PermanentError):
    """Raised when a message was delivered more times than the delivery limit allows."""
