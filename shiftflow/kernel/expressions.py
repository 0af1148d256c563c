"""A sandboxed template language for data between steps: ``{{ path.to.value }}`` only.

A reference is a dotted path of names and list indexes into a plain-data context
(``trigger``, ``steps.<id>.output``, ``vars``). Nothing is evaluated: there is no
attribute access on Python objects, no call, no import, so there is nothing to escape
from. Output size is capped. A string that is exactly one reference keeps the value's
type (``"{{ trigger.amount }}"`` → ``12.5``); references inside longer text are
rendered as text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from shiftflow.kernel.errors import PermanentError

_REF = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
_SEGMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$|^\d+$")

#: The largest string a template may render to.
MAX_OUTPUT_CHARS = 1_000_000
#: The deepest structure ``render`` walks.
MAX_DEPTH = 32


class ExpressionError(PermanentError):
    """Raised when a reference is malformed, missing, or renders too much."""


class Masked:
    """A context value that renders as ``***`` whatever path is asked of it.

    Used to render a step's inputs a second time for storage and logs, with every
    secret masked.
    """

    TEXT = "***"


def resolve(path: str, context: Mapping[str, Any]) -> Any:
    """Look up ``path`` (``a.b.0.c``) in ``context``.

    Raises:
        ExpressionError: the path is malformed or names nothing.
    """
    if not path:
        raise ExpressionError("empty reference {{ }}")
    value: Any = context
    for segment in path.split("."):
        if isinstance(value, Masked):
            return Masked.TEXT
        if not _SEGMENT.match(segment):
            raise ExpressionError(f"malformed reference {path!r}: segment {segment!r}")
        if isinstance(value, Mapping) and segment in value:
            value = value[segment]
        elif isinstance(value, list) and segment.isdigit() and int(segment) < len(value):
            value = value[int(segment)]
        else:
            raise ExpressionError(f"reference {path!r} names nothing (no {segment!r})")
    return Masked.TEXT if isinstance(value, Masked) else value


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)


def render(template: Any, context: Mapping[str, Any], _depth: int = 0) -> Any:
    """Render every reference inside ``template`` (strings, lists and dicts, recursively).

    Raises:
        ExpressionError: a reference is malformed or missing, or the output is too large.
    """
    if _depth > MAX_DEPTH:
        raise ExpressionError(f"template nested deeper than {MAX_DEPTH} levels")
    if isinstance(template, str):
        whole = _REF.fullmatch(template.strip())
        if whole:
            return resolve(whole.group(1), context)
        out = _REF.sub(lambda m: _text(resolve(m.group(1), context)), template)
        if len(out) > MAX_OUTPUT_CHARS:
            raise ExpressionError(f"template renders {len(out)} characters, more than {MAX_OUTPUT_CHARS}")
        return out
    if isinstance(template, list):
        return [render(item, context, _depth + 1) for item in template]
    if isinstance(template, dict):
        return {key: render(value, context, _depth + 1) for key, value in template.items()}
    return template
