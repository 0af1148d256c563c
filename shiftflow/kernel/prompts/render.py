"""Render a prompt template with Jinja2's sandbox.

Templates are a workspace's data, so they are rendered by ``SandboxedEnvironment``: no
access to Python internals (``__class__``, ``__globals__``...), unsafe method calls are
refused, ``range`` is bounded. Undefined names are errors (``StrictUndefined``): a
template that mentions ``{{ citty }}`` fails naming it instead of sending an empty hole to
the model. No autoescaping: the output is text for a model, not HTML.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment, SecurityError

from shiftflow.kernel.prompts.errors import PromptTemplateError

#: Longest template (a JSON body of one, every character escaped, stays under the API's 1 MiB),
#: and longest rendered text (characters).
MAX_TEMPLATE = 50_000
MAX_RENDERED = 400_000

_ENV = SandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True)


@functools.lru_cache(maxsize=512)
def _compiled(source: str) -> jinja2.Template:
    return _ENV.from_string(source)


def compile_template(source: str, field: str = "template") -> jinja2.Template:
    """Compile ``source``.

    Raises:
        PromptTemplateError: too long, or a syntax error (``template: line 3: ...``).
    """
    if not isinstance(source, str):
        raise PromptTemplateError(field, "expected text")
    if len(source) > MAX_TEMPLATE:
        raise PromptTemplateError(field, f"longer than {MAX_TEMPLATE} characters")
    try:
        return _compiled(source)
    except jinja2.TemplateSyntaxError as exc:
        raise PromptTemplateError(field, f"line {exc.lineno}: {exc.message}") from None


def render(source: str, variables: Mapping[str, Any], field: str = "template") -> str:
    """``source`` rendered with ``variables``.

    Raises:
        PromptTemplateError: a syntax error, an undefined name, an operation the sandbox
            refuses, or a result longer than ``MAX_RENDERED``.
    """
    template = compile_template(source, field)
    try:
        text = template.render(dict(variables))
    except jinja2.UndefinedError as exc:
        raise PromptTemplateError(field, f"{exc.message} (declare it as a variable)") from None
    except SecurityError as exc:
        raise PromptTemplateError(field, f"refused by the sandbox: {exc}") from None
    except (jinja2.TemplateError, TypeError, ValueError, ArithmeticError, OverflowError) as exc:
        raise PromptTemplateError(field, f"cannot render: {exc}") from None
    if len(text) > MAX_RENDERED:
        raise PromptTemplateError(field, f"renders to more than {MAX_RENDERED} characters")
    return text
