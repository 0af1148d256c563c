"""How big a value is as JSON, counted without building the JSON, and the step caps.

A whole-value reference (``"{{ steps.a.output }}"``) copies nothing while rendering, so a
chain of steps that each repeat the step before multiplies a value for free in memory
(the same objects shared many times) until something serialises it: storing it, logging
it, publishing it. ``json_size`` walks a value and stops as soon as its count passes the
limit, so measuring costs at most about ``limit`` however large the value would become.
"""

from __future__ import annotations

from typing import Any

from shiftflow.kernel.errors import PermanentError

#: Sizes of the JSON literals.
_LITERALS = {True: 4, False: 5}


class SizeLimitExceeded(PermanentError):
    """Raised when a step's rendered inputs or its output are larger than their cap."""


def _text_size(text: str) -> int:
    # UTF-8 bytes plus the quotes; escapes of quotes and control characters are not counted
    # (a few bytes off at worst: this is a cap, not an encoder).
    return len(text) + 2 if text.isascii() else len(text.encode("utf-8", "surrogatepass")) + 2


def _number_size(value: int | float) -> int:
    if isinstance(value, int) and value.bit_length() > 64:
        # str() of a huge int is quadratic (and refused past 4,300 digits): estimate it.
        return int(value.bit_length() * 0.30103) + 2
    return len(repr(value))


def json_size(value: Any, limit: int) -> int:
    """The length in bytes of ``value``'s compact JSON text (UTF-8), counted until it passes
    ``limit``: a result above ``limit`` means "larger than the limit", not the exact size."""
    total = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            total += _text_size(item)
        elif item is None:
            total += 4
        elif isinstance(item, bool):
            total += _LITERALS[item]
        elif isinstance(item, int | float):
            total += _number_size(item)
        elif isinstance(item, dict):
            # {} plus a colon per entry and a comma between entries.
            total += 2 + 2 * len(item) - (1 if item else 0)
            for key, inner in item.items():
                total += _text_size(str(key))
                stack.append(inner)
        elif isinstance(item, list | tuple):
            total += 2 + max(0, len(item) - 1)
            stack.extend(item)
        else:
            total += _text_size(str(item))
        if total > limit:
            return total
    return total


def check_size(value: Any, limit: int, what: str, setting: str) -> None:
    """Raise when ``value`` is larger than ``limit`` bytes of JSON.

    Parameters:
        what: what the value is, for the message (``"rendered inputs"``, ``"output"``).
        setting: the environment variable that sets ``limit``, named in the message.

    Raises:
        SizeLimitExceeded: naming ``what``, the cap and its variable.
    """
    if json_size(value, limit) > limit:
        raise SizeLimitExceeded(f"{what} larger than {limit} bytes (the cap {setting})")
