"""Encode a log document once, or replace it by a stand-in that says why it could not be.

The writer thread sends documents in batches. One document the BSON encoder refuses (an
integer outside 64 bits, a ``Decimal``, a set, a non-string key) used to raise out of
``insert_many`` and kill the thread with its whole batch, other workspaces' logs
included; one the server refuses (larger than 16 MiB) was retried forever, holding every
later document behind it. Each document is now encoded on its own, before the batch is
sent, and one that fails is replaced by a small stand-in with the same ``_id``: its small
top-level fields (execution, workspace, message, level...), the reason, and a bounded
preview of the rest.
"""

from __future__ import annotations

from typing import Any

import bson
from bson.errors import BSONError
from bson.raw_bson import RawBSONDocument

#: MongoDB's document size limit (``maxBsonObjectSize``).
MAX_DOCUMENT_BYTES = 16 * 1024 * 1024
#: Top-level fields of a refused document kept in its stand-in when each encodes in this much.
MAX_KEPT_FIELD_BYTES = 1024
#: Characters of the refused document's text kept in its stand-in.
PREVIEW_CHARS = 2000

#: What the encoder raises for a value it cannot write (``OverflowError``: an int beyond 64 bits).
ENCODE_ERRORS = (BSONError, OverflowError, TypeError, ValueError)


def encode(document: dict[str, Any], limit: int = MAX_DOCUMENT_BYTES) -> tuple[RawBSONDocument, str | None]:
    """``document`` encoded, or its stand-in and the reason it was needed.

    The encoded form is what the writer sends (``insert_many`` does not encode it again).
    """
    try:
        raw = bson.encode(document)
    except OverflowError:
        # An integer beyond 64 bits (from a trigger's data, say): kept whole, as its text.
        return encode(ints_as_text(document), limit)
    except ENCODE_ERRORS as exc:
        reason = f"{type(exc).__name__}: {exc}"[:500]
        return RawBSONDocument(bson.encode(stand_in(document, reason))), reason
    if len(raw) > limit:
        reason = f"document of {len(raw)} bytes is larger than {limit} bytes"
        return RawBSONDocument(bson.encode(stand_in(document, reason))), reason
    return RawBSONDocument(raw), None


#: The integers BSON holds (int64).
_INT64 = (-(2**63), 2**63 - 1)


def ints_as_text(value: Any) -> Any:
    """``value`` with every integer beyond 64 bits replaced by its decimal text."""
    if isinstance(value, dict):
        return {k: ints_as_text(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [ints_as_text(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and not _INT64[0] <= value <= _INT64[1]:
        try:
            return str(value)
        except ValueError:  # more than 4,300 digits: no text in this Python either
            return f"<integer of about {value.bit_length() * 0.30103:.0f} digits>"
    return value


def stand_in(document: dict[str, Any], reason: str) -> dict[str, Any]:
    """A small document that takes the place of a refused one (always encodable)."""
    out: dict[str, Any] = {}
    for key, value in document.items():
        if not isinstance(key, str) or key == "unstorable" or key == "preview":
            continue
        try:
            if len(bson.encode({key: value})) <= MAX_KEPT_FIELD_BYTES:
                out[key] = value
        except ENCODE_ERRORS:
            continue
    if "_id" in document:
        out["_id"] = document["_id"]
    out["unstorable"] = reason
    out["preview"] = _preview(document)
    return out


def _preview(document: dict[str, Any]) -> str:
    try:
        text = repr(document)
    except ValueError:  # an int of more than 4,300 digits has no repr in this Python
        return "(no preview: a value has no text form)"
    return text[:PREVIEW_CHARS]
