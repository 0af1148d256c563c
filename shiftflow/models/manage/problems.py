"""Errors a management command raises for a person to act on (API status, CLI exit code).

The API maps them to HTTP statuses (``Unauthenticated`` 401, ``Forbidden`` 403,
``kernel.errors.NotFound`` 404, ``Conflict`` 409, ``InvalidInput`` 422); the CLI prints
the message and exits 2 for ``InvalidInput`` (bad usage, naming the field) and 1 for the
others. All are permanent: repeating the same request cannot change the outcome.
"""

from __future__ import annotations

from shiftflow.kernel.errors import PermanentError


class Unauthenticated(PermanentError):
    """Raised when a request carries no API key, or one that is unknown, expired or revoked."""


class Forbidden(PermanentError):
    """Raised when the caller's role or key scopes do not allow the operation."""


class Conflict(PermanentError):
    """Raised when the object's state forbids the operation (cancel a finished execution...)."""


class InvalidInput(PermanentError):
    """Raised when a field of a request is missing or malformed; ``field`` names it.

    Parameters:
        field: the field, query parameter or CLI option at fault (``input``, ``scopes``...).
        message: what is wrong and what is expected.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message
