"""What PostgreSQL can store: the one check behind every "cannot be stored" refusal.

Data from outside (webhook bodies, API bodies, event data, query parameters) ends up in
``jsonb`` and ``text`` columns. Python's ``json`` reads more than those columns hold:

* ``NaN`` and ``Infinity`` (refused by the parsers here), and number literals too large
  for a double, such as ``1e999``, which Python reads as infinity: ``jsonb`` has neither;
* ``\\u0000`` escapes: PostgreSQL text cannot hold NUL;
* ``\\ud800`` escapes (lone UTF-16 surrogates), which are not characters and have no
  UTF-8 form;
* nesting as deep as the parser's stack allows: capped here at ``MAX_JSON_DEPTH``.

Integers are limited by Python, not PostgreSQL: ``json`` reads at most 4300 digits
(``sys.get_int_max_str_digits``) and writes no more, while ``jsonb`` numerics hold
131,072. Values built in Python (not parsed) are checked for the same and for keys that
are not text; other objects are checked as the text ``JSONField`` writes for them.

``unstorable`` walks the value once, iteratively (no recursion limit to hit), and
returns why it cannot be stored, or None. Messages start with ``contains`` or ``nests``
so callers can prefix what they checked (``body contains ...``).
"""

from __future__ import annotations

import math
import sys
from typing import Any

#: Deepest nesting accepted in stored JSON (OWASP API4: cap depth, not only size). The
#: outermost object or list is level 1.
MAX_JSON_DEPTH = 64


def _max_int_bits() -> int:
    # Integers with more decimal digits than Python converts cannot be written as JSON;
    # a bit length is cheap, and log2(10) bits per digit keeps the bound exact enough.
    digits = sys.get_int_max_str_digits() if hasattr(sys, "get_int_max_str_digits") else 0
    return int(digits * math.log2(10)) if digits else 0


_MAX_INT_BITS = _max_int_bits()


def number_problem(shown: str) -> str:
    """The message for a number ``jsonb`` cannot hold (infinite or NaN), shown as ``shown``."""
    return f"contains a number PostgreSQL cannot store ({shown})"


def unstorable(value: Any, *, max_depth: int = MAX_JSON_DEPTH) -> str | None:
    """Why PostgreSQL could not store ``value`` as JSON (or as text, for a string), or None.

    Parameters:
        value: plain data: dict (text keys), list, tuple, str, int, float, bool, None.
        max_depth: deepest nesting accepted; a scalar alone is level 0, the outermost
            container level 1.

    Returns:
        A reason starting with ``contains`` or ``nests`` (the caller names the field),
        or None when ``value`` can be stored.
    """
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        kind = type(item)
        if kind is str:
            if "\x00" in item:
                return "contains \\u0000, which cannot be stored"
            if not item.isascii():
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    return "contains an unpaired UTF-16 surrogate, which cannot be stored"
        elif kind is dict or kind is list or kind is tuple:
            if depth + 1 > max_depth:
                return f"nests deeper than {max_depth} levels"
            if kind is dict:
                for key in item:
                    if type(key) is not str:
                        return f"contains a key that is not text ({type(key).__name__})"
                    stack.append((key, depth))
                stack.extend((v, depth + 1) for v in item.values())
            else:
                stack.extend((v, depth + 1) for v in item)
        elif kind is float:
            if not math.isfinite(item):
                return number_problem(repr(item))
        elif kind is int:
            if _MAX_INT_BITS and item.bit_length() > _MAX_INT_BITS:
                return f"contains an integer of more than {sys.get_int_max_str_digits()} digits"
        elif item is None or kind is bool:
            pass
        elif isinstance(item, str | dict | list | tuple | int | float):  # subclasses: rare, checked alike
            stack.append((_plain(item), depth))
        else:
            # ``JSONField`` writes anything else (a UUID, a datetime) as its text.
            stack.append((str(item), depth))
    return None


def _plain(item: Any) -> Any:
    """A subclass instance (an IntEnum, an OrderedDict...) as its plain base type."""
    base: Any
    for base in (bool, int, float, str, dict, list, tuple):
        if isinstance(item, base):
            return base(item)
    return item
