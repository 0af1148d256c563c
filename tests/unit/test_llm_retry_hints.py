"""How long a provider asked us to wait, from the headers of a 429/529 answer."""

from __future__ import annotations

import httpx
import pytest

from shiftflow.kernel.llm.retry_hints import parse_duration, retry_after_from_headers

NOW = 1_750_000_000.0  # 2025-06-15T15:06:40Z


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("20ms", 0.02), ("1s", 1.0), ("6m0s", 360.0), ("1h2m3.5s", 3723.5), ("0.5s", 0.5), ("", None), ("5", None),
     ("1x", None), ("s1", None), ("1s 2m", None)],
)
def test_go_style_durations(text, seconds):
    assert parse_duration(text) == (pytest.approx(seconds) if seconds is not None else None)


def test_retry_after_ms_first_then_retry_after():
    assert retry_after_from_headers(httpx.Headers({"retry-after-ms": "250", "retry-after": "9"}), now=NOW) == 0.25
    assert retry_after_from_headers(httpx.Headers({"Retry-After": "9"}), now=NOW) == 9.0
    date = "Sun, 15 Jun 2025 15:07:00 GMT"  # 20 s after NOW
    assert retry_after_from_headers(httpx.Headers({"retry-after": date}), now=NOW) == pytest.approx(20.0)


def test_unreadable_values_fall_through():
    headers = httpx.Headers({"retry-after-ms": "soon", "retry-after": "nan"})
    assert retry_after_from_headers(headers, now=NOW) is None
    assert retry_after_from_headers(httpx.Headers({"retry-after": "-5"}), now=NOW) == 0.0


def test_anthropic_reset_of_the_exhausted_limits_only():
    headers = httpx.Headers({
        "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-requests-reset": "2025-06-15T15:06:50Z",  # 10 s
        "anthropic-ratelimit-tokens-remaining": "5000",
        "anthropic-ratelimit-tokens-reset": "2025-06-15T15:07:40Z",  # 60 s, but not exhausted
        "anthropic-ratelimit-output-tokens-remaining": "0",
        "anthropic-ratelimit-output-tokens-reset": "2025-06-15T15:07:10+00:00",  # 30 s
    })
    assert retry_after_from_headers(headers, now=NOW) == pytest.approx(30.0)  # the later of the two exhausted


def test_openai_reset_of_the_exhausted_limits_only():
    headers = httpx.Headers({
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "1m30s",
        "x-ratelimit-remaining-tokens": "100",
        "x-ratelimit-reset-tokens": "6m0s",
    })
    assert retry_after_from_headers(headers, now=NOW) == 90.0


def test_nothing_exhausted_or_nothing_said_is_none():
    assert retry_after_from_headers(httpx.Headers({}), now=NOW) is None
    headers = httpx.Headers({"anthropic-ratelimit-requests-remaining": "3",
                             "anthropic-ratelimit-requests-reset": "2025-06-15T15:06:50Z",
                             "anthropic-ratelimit-tokens-remaining": "0",
                             "anthropic-ratelimit-tokens-reset": "not a time"})
    assert retry_after_from_headers(headers, now=NOW) is None
