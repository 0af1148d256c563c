"""Reading ``Retry-After``: how long a server asked us to wait before calling again."""

from __future__ import annotations

import math
import time
from email.utils import parsedate_to_datetime


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), or None.

    Parameters:
        value: the header value, if any.
        now: the current Unix time (tests); ``time.time()`` by default.

    Returns:
        A finite, non-negative number of seconds, or None when absent or unreadable
        (``nan`` and ``inf`` are unreadable: a wait must end).
    """
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
