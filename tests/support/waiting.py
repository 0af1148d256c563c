"""Waiting for a condition by polling it, never by a fixed sleep."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.05,
    message: str | None = None,
) -> T:
    """Call ``predicate`` until it returns a truthy value, and return that value.

    Parameters:
        predicate: a function of no arguments; exceptions it raises count as "not yet"
            and the last one is chained to the timeout error.
        timeout: seconds before giving up.
        interval: seconds between calls.
        message: what was awaited, for the error message.

    Raises:
        TimeoutError: the predicate did not become truthy within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            value = predicate()
        except Exception as exc:  # any failure means "not ready yet"; kept for the report
            last_error = exc
        else:
            if value:
                return value
        if time.monotonic() >= deadline:
            what = message or getattr(predicate, "__name__", "condition")
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}") from last_error
        time.sleep(interval)


def wait_for_http(url: str, timeout: float = 10.0, status: int | None = None) -> int:
    """Wait until ``url`` answers an HTTP GET and return the status code.

    Parameters:
        url: the URL to poll (loopback servers started by the tests).
        timeout: seconds before giving up.
        status: when given, wait for exactly this status; otherwise any answer below 500.

    Raises:
        TimeoutError: no acceptable answer within ``timeout`` seconds.
    """

    def answered() -> int:
        try:
            with urllib.request.urlopen(url, timeout=2.0) as response:
                code = int(response.status)
        except urllib.error.HTTPError as exc:
            code = int(exc.code)
            exc.close()
        ok = code == status if status is not None else code < 500
        return code if ok else 0

    return wait_until(answered, timeout=timeout, interval=0.1, message=f"HTTP answer from {url}")
