"""Prompt templates: typed variables, sandboxed rendering and output validations.

Pure functions, no I/O: ``variables`` checks a prompt's declared variables and the values a
run gives them, ``render`` renders a template with Jinja2's sandbox, ``validators`` checks
a model's output (JSON Schema, regex, and named functions registered in Python; no code a
user supplies is ever run). ``docs/llm.md`` ("Prompts") describes them.
"""

from shiftflow.kernel.prompts.errors import PromptError, PromptInputError, PromptTemplateError
from shiftflow.kernel.prompts.render import render
from shiftflow.kernel.prompts.validators import (
    Validation,
    check_validation,
    register_validator,
    validate_output,
)
from shiftflow.kernel.prompts.variables import VARIABLE_TYPES, check_declared, resolve

__all__ = [
    "VARIABLE_TYPES",
    "PromptError",
    "PromptInputError",
    "PromptTemplateError",
    "Validation",
    "check_declared",
    "check_validation",
    "register_validator",
    "render",
    "resolve",
    "validate_output",
]
