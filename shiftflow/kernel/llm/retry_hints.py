"""How long a provider asked us to wait after a 429 or 529, from its answer's headers.

In order of precedence:

1. ``retry-after-ms``: milliseconds (OpenAI and Anthropic send it; most precise).
2. ``Retry-After``: seconds or an HTTP date (both providers, on most 429s).
3. The reset time of a limit the answer shows as exhausted (remaining ``0``):
   Anthropic's ``anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-reset``
   (RFC 3339 times), OpenAI's ``x-ratelimit-reset-{requests,tokens}`` (durations such as
   ``20ms``, ``1s``, ``6m0s``). When several are exhausted, the latest reset wins: an
   earlier call would meet the other limit.

None when the answer says nothing usable: the caller's own backoff decides.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from datetime import datetime

from shiftflow.kernel.retry_after import parse_retry_after

_ANTHROPIC_LIMITS = ("requests", "tokens", "input-tokens", "output-tokens")
_OPENAI_LIMITS = ("requests", "tokens")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def parse_duration(text: str) -> float | None:
    """Seconds in a Go-style duration (``1h2m3.5s``, ``6m0s``, ``20ms``), None if malformed."""
    text = text.strip()
    if not text:
        return None
    total, pos = 0.0, 0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            return None
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    return total if pos == len(text) and math.isfinite(total) else None


def _seconds_until(stamp: str, now: float) -> float | None:
    try:
        when = datetime.fromisoformat(stamp.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


def _exhausted(headers: Mapping[str, str], remaining: str) -> bool:
    return (headers.get(remaining) or "").strip() == "0"


def retry_after_from_headers(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds to wait before calling again, from a provider answer's headers (see the module docstring).

    Parameters:
        headers: the answer's headers; names are matched lower-case (``httpx.Headers``
            matches any case).
        now: the current Unix time (tests); ``time.time()`` by default.

    Returns:
        A finite, non-negative number of seconds, or None.
    """
    now = time.time() if now is None else now
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            ms = float(raw_ms)
        except ValueError:
            ms = math.nan
        if math.isfinite(ms):
            return max(0.0, ms / 1000.0)
    seconds = parse_retry_after(headers.get("retry-after"), now=now)
    if seconds is not None:
        return seconds
    waits: list[float] = []
    for limit in _ANTHROPIC_LIMITS:
        reset = headers.get(f"anthropic-ratelimit-{limit}-reset")
        if reset and _exhausted(headers, f"anthropic-ratelimit-{limit}-remaining"):
            wait = _seconds_until(reset, now)
            if wait is not None:
                waits.append(wait)
    for limit in _OPENAI_LIMITS:
        reset = headers.get(f"x-ratelimit-reset-{limit}")
        if reset and _exhausted(headers, f"x-ratelimit-remaining-{limit}"):
            wait = parse_duration(reset)
            if wait is not None:
                waits.append(wait)
    return max(waits) if waits else None
