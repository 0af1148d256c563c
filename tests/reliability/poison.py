"""Poison bodies: correctly signed webhooks whose JSON sits at or past a limit.

Each is sent as it is, signed over its exact bytes. The ingress may refuse one (a 4xx
with a reason) or accept it (202); what it must never do is accept one that is then
lost, or fail with a 5xx. The list covers numbers at and past every limit (floats that
overflow, underflow or are subnormal, integers past 64 bits and past Python's digit
limit), the JSON constants, strings PostgreSQL cannot hold, encodings, depth and size.
"""

from __future__ import annotations

import json

#: ``SHIFTFLOW_WEBHOOK_MAX_BODY_BYTES``'s default; the scenario runs with it.
MAX_BODY = 262_144
#: The ingress's deepest accepted nesting (``ingress.MAX_JSON_DEPTH``).
MAX_DEPTH = 64


def _nested(depth: int) -> bytes:
    """An object nesting ``depth`` levels in all (the outer object counts as one)."""
    return b'{"x": ' + b"[" * (depth - 1) + b"1" + b"]" * (depth - 1) + b"}"


def _sized(size: int) -> bytes:
    """An object of exactly ``size`` bytes."""
    shell = b'{"pad": ""}'
    return b'{"pad": "' + b"a" * (size - len(shell)) + b'"}'


def poison_bodies() -> dict[str, bytes]:
    """Name -> body bytes."""
    return {
        "float_overflow": b'{"x": 1e999}',
        "float_overflow_negative": b'{"x": -1e999}',
        "float_overflow_upper_e": b'{"x": 1E400}',
        "float_overflow_nested": b'{"a": {"b": [1, 2, 1e309]}}',
        "float_max": b'{"x": 1.7976931348623157e308}',
        "float_subnormal": b'{"x": 5e-324}',
        "float_underflow": b'{"x": 1e-400}',
        "negative_zero": b'{"x": -0.0}',
        "long_decimal": b'{"x": 0.1000000000000000055511151231257827021181583404541015625}',
        "int_64bit_edges": b'{"a": 9223372036854775807, "b": -9223372036854775808, "c": 18446744073709551616}',
        "int_4000_digits": b'{"x": ' + b"9" * 4000 + b"}",
        "int_5000_digits": b'{"x": ' + b"9" * 5000 + b"}",
        "nan": b'{"x": NaN}',
        "infinity": b'{"x": -Infinity}',
        "nul_escaped": b'{"x": "a\\u0000b"}',
        "nul_in_key": b'{"a\\u0000": 1}',
        "lone_surrogate": b'{"x": "\\ud800"}',
        "surrogate_pair": b'{"x": "\\ud83d\\ude00"}',
        "control_escapes": b'{"x": "\\u0001\\u001f\\u007f"}',
        "noncharacter": b'{"x": "\\uffff\\ufffe"}',
        "raw_unicode": json.dumps({"x": "\U0001f600 \u2603 \u202e \u2028 \u2029 e\u0301"}, ensure_ascii=False).encode(),
        "escaped_key": b'{"\\u00e9t\\u00e9": 1}',
        "utf8_bom": b'\xef\xbb\xbf{"x": 1}',
        "utf16": '{"x": "\u2603"}'.encode("utf-16"),
        "utf32_le": '{"x": 1}'.encode("utf-32-le"),
        "invalid_utf8": b'{"x": "\xff\xfe"}',
        "overlong_utf8": b'{"x": "\xc0\xaf"}',
        "encoded_surrogate": b'{"x": "\xed\xa0\x80"}',
        "duplicate_keys": b'{"a": 1, "a": 2}',
        "empty_object": b"{}",
        "empty_key": b'{"": ""}',
        "many_keys": json.dumps({f"k{i}": i for i in range(10_000)}).encode(),
        "depth_at_limit": _nested(MAX_DEPTH),
        "depth_past_limit": _nested(MAX_DEPTH + 1),
        "size_at_limit": _sized(MAX_BODY),
        "size_past_limit": _sized(MAX_BODY + 1),
        "array_body": b"[1, 2]",
        "string_body": b'"x"',
        "truncated": b'{"x": ',
        "trailing_garbage": b'{"x": 1} x',
        "whitespace_padded": b' \t\r\n{"x": 1}\n ',
    }
