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


class BrokerUnavailable(TransientError):
    """Raised when RabbitMQ did not confirm a publish: the message may not be durable."""


class QueueFull(BrokerUnavailable):
    """Raised when RabbitMQ refused a publish (``basic.nack``): the queue is at its length limit.

    Nothing was queued; the same message may be sent again later (``x-overflow:
    reject-publish`` refuses new messages rather than dropping old ones).
    """


class QuarantinedError(PermanentError):
    """Raised when a message was delivered more times than the delivery limit allows."""
