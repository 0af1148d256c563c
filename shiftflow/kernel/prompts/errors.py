"""Errors of prompts: each names the field (``variables.city``, ``template``, ``validations[1]``)."""

from __future__ import annotations

from shiftflow.kernel.errors import PermanentError


class PromptError(PermanentError):
    """Raised when a prompt, a version or a run cannot be what was asked.

    Attributes:
        field: the field at fault (``variables.city``, ``template``...), for a 4xx answer.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message


class PromptInputError(PromptError):
    """Raised when a run's variables do not match the version's declarations."""


class PromptTemplateError(PromptError):
    """Raised when a template does not compile, or fails to render with the given variables."""
