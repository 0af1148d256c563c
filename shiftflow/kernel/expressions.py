r"""A sandboxed template language for data between steps: ``{{ path.to.value }}`` only.

A reference is a dotted path of names and list indexes into a plain-data context
(``trigger``, ``steps.<id>.output``, ``vars``). Nothing is evaluated: there is no
attribute access on Python objects, no call, no import, so there is nothing to escape
from. Output size is capped. A string that is exactly one reference keeps the value's
type (``"{{ trigger.amount }}"`` → ``12.5``); references inside longer text are
rendered as text.

References are found by a hand-written scanner, in time linear in the template's length:
the regular expression it replaced (``\{\{\s*([^{}]*?)\s*\}\}``) backtracked cubically
on ``{{`` followed by spaces (docs/benchmarks.md#template-scanning), and a template is
rendered inside the transaction that holds its execution's lock. A reference is ``{{``,
then text without braces, then the first ``}}``; its path is that text without
surrounding spaces.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

from shiftflow.kernel.errors import PermanentError

_BRACE = re.compile(r"[{}]")
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


class Unavailable:
    """A context value that refuses every path asked of it, saying why.

    Used for ``secrets`` in the context of steps that may not use them: the reference
    fails with the reason instead of "names nothing".
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason


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
        if isinstance(value, Unavailable):
            raise ExpressionError(f"reference {path!r}: {value.reason}")
        if not _SEGMENT.match(segment):
            raise ExpressionError(f"malformed reference {path!r}: segment {segment!r}")
        if isinstance(value, Mapping) and segment in value:
            value = value[segment]
        elif isinstance(value, list) and segment.isdigit() and int(segment) < len(value):
            value = value[int(segment)]
        else:
            raise ExpressionError(f"reference {path!r} names nothing (no {segment!r})")
    if isinstance(value, Unavailable):
        raise ExpressionError(f"reference {path!r}: {value.reason}")
    return Masked.TEXT if isinstance(value, Masked) else value


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)


def references(template: str) -> Iterator[tuple[int, int, str]]:
    """Every reference of ``template`` in order, as ``(start, end, path)``.

    Linear time: the text between two braces is looked at once or twice (an opener whose
    first brace after it is not ``}}`` is skipped, and the search goes on from the next
    ``{{``, never from the character after).
    """
    start = template.find("{{")
    while start >= 0:
        brace = _BRACE.search(template, start + 2)
        if brace is None:
            return  # no closing brace anywhere after: no reference either
        end = brace.start()
        if template.startswith("}}", end):
            yield start, end + 2, template[start + 2:end].strip()
            start = template.find("{{", end + 2)
        else:
            start = template.find("{{", start + 1)


def _whole(template: str) -> str | None:
    """The path when ``template`` (stripped) is exactly one reference, else None."""
    stripped = template.strip()
    if len(stripped) < 4 or not (stripped.startswith("{{") and stripped.endswith("}}")):
        return None
    inner = stripped[2:-2]
    return None if _BRACE.search(inner) else inner.strip()


def render(template: Any, context: Mapping[str, Any], _depth: int = 0) -> Any:
    """Render every reference inside ``template`` (strings, lists and dicts, recursively).

    Raises:
        ExpressionError: a reference is malformed or missing, or the output is too large.
    """
    if _depth > MAX_DEPTH:
        raise ExpressionError(f"template nested deeper than {MAX_DEPTH} levels")
    if isinstance(template, str):
        whole = _whole(template)
        if whole is not None:
            return resolve(whole, context)
        return _render_text(template, context)
    if isinstance(template, list):
        return [render(item, context, _depth + 1) for item in template]
    if isinstance(template, dict):
        return {key: render(value, context, _depth + 1) for key, value in template.items()}
    return template


def _render_text(template: str, context: Mapping[str, Any]) -> str:
    """``template`` with each reference replaced by its value as text; the size is checked
    as the pieces are added, so a template of many large references fails before the text
    is built."""
    pieces: list[str] = []
    size, last = 0, 0
    for start, end, path in references(template):
        value = _text(resolve(path, context))
        pieces.append(template[last:start])
        pieces.append(value)
        size += (start - last) + len(value)
        last = end
        if size > MAX_OUTPUT_CHARS:
            raise ExpressionError(f"template renders more than {MAX_OUTPUT_CHARS} characters")
    if last == 0:
        return template
    pieces.append(template[last:])
    size += len(template) - last
    if size > MAX_OUTPUT_CHARS:
        raise ExpressionError(f"template renders {size} characters, more than {MAX_OUTPUT_CHARS}")
    return "".join(pieces)
