"""Scrubbing secret values out of what comes back from an outside call.

An outside service may echo a header, a token or a password in its answer or in its
error; a message may quote a URL with an API key in its query. ``scrubber(values)``
builds a function that replaces every occurrence of those values, in the forms an echo
may take (as sent, percent-encoded, JSON-escaped), by ``***`` in any string of a nested
value. The engine's ``{{ secrets.* }}`` rendering and the connection helpers of
``kernel/integrations`` both use it, so a value is hidden the same way wherever it leaks.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import quote, quote_plus

from shiftflow.kernel.expressions import Masked

#: What a hidden value is replaced by (the same text as a masked ``secrets.*`` reference).
MASK = Masked.TEXT

#: Shorter secret values are not scrubbed: masking every "1" or "yes" in an answer would
#: destroy it, and such a value protects nothing.
MIN_SCRUBBED_LENGTH = 6


def encodings(value: str) -> set[str]:
    """``value`` and the forms an echo of it may take: percent-encoded (a URL's query, a
    form body), JSON-escaped (quoted inside a JSON answer)."""
    return {value, quote(value, safe=""), quote(value), quote_plus(value), json.dumps(value)[1:-1],
            json.dumps(value, ensure_ascii=False)[1:-1]}


def string_values(value: Any) -> list[str]:
    """Every string inside ``value`` (mappings, lists and tuples walked; keys left out)."""
    found: list[str] = []
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            found.append(item)
        elif isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return found


def _identity(value: Any) -> Any:
    return value


def scrubber(values: Iterable[str]) -> Callable[[Any], Any]:
    """A function replacing, in every string of a value (recursively, keys included), each
    of ``values`` of at least ``MIN_SCRUBBED_LENGTH`` characters by ``***``.

    Longer values are replaced first, so a secret that contains another is hidden whole.
    The identity when no value qualifies: the common call pays nothing.
    """
    needles = sorted({form for v in values if len(v) >= MIN_SCRUBBED_LENGTH for form in encodings(v)},
                     key=len, reverse=True)
    if not needles:
        return _identity

    def scrub(value: Any) -> Any:
        if isinstance(value, str):
            for needle in needles:
                if needle in value:
                    value = value.replace(needle, MASK)
            return value
        if isinstance(value, dict):
            return {scrub(k): scrub(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [scrub(v) for v in value]
        return value

    return scrub
