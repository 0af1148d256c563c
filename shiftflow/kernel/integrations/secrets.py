"""A connection's secrets: which fields they are, masking them for display, hiding them in text.

A credential schema marks each secret field with ``"x-secret": true``. From it:

* ``mask(credentials, schema)``: the credentials as the API and the CLI may show them,
  every secret field (and every field the schema does not know) replaced by ``***``;
* ``redactor(credentials, schema)``: a function removing every secret value of the
  connection from a text (an error message, an answer's excerpt), in the forms an echo
  may take; it is ``kernel/redaction.py``'s scrubber, the one the engine uses for
  ``{{ secrets.* }}`` values, fed with this connection's secret values.

Without a schema every string value counts as secret (as the engine does for a
connection a step used), which can only hide more.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from shiftflow.kernel.redaction import MASK, scrubber, string_values

#: The schema keyword marking a credential field as a secret.
SECRET = "x-secret"


def secret(schema: Mapping[str, Any]) -> dict[str, Any]:
    """``schema`` marked as a secret field."""
    return {**schema, SECRET: True}


def secret_paths(schema: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted paths of the fields ``schema`` marks secret (nested objects walked)."""
    out: list[str] = []
    for name, sub in (schema.get("properties") or {}).items():
        if not isinstance(sub, Mapping):
            continue
        path = f"{prefix}{name}"
        if sub.get(SECRET):
            out.append(path)
        elif sub.get("type") == "object":
            out.extend(secret_paths(sub, path + "."))
    return out


def _masked(value: Any, schema: Mapping[str, Any] | None) -> Any:
    if schema is None or schema.get(SECRET):
        return MASK if value not in (None, "") else value
    if isinstance(value, Mapping):
        known = schema.get("properties") or {}
        return {k: _masked(v, known.get(k)) for k, v in value.items()}
    if isinstance(value, list):
        # Items of an array: secret when the array or its item schema says so.
        items = schema.get("items")
        return [_masked(v, items if isinstance(items, Mapping) else None) for v in value]
    return value


def mask(credentials: Mapping[str, Any], schema: Mapping[str, Any]) -> dict[str, Any]:
    """``credentials`` for display: secret fields, and fields the schema does not declare,
    as ``***`` (an empty or absent value stays as it is, so a person sees what is unset)."""
    return dict(_masked(credentials, schema))


def secret_values(credentials: Mapping[str, Any], schema: Mapping[str, Any] | None = None) -> list[str]:
    """The secret values of a connection as text: those of secret fields and of fields the
    schema does not declare (numbers as their digits); every string when ``schema`` is None."""
    if schema is None:
        return string_values(credentials)
    found: list[str] = []
    known = schema.get("properties") or {}
    for name, value in credentials.items():
        sub = known.get(name)
        if not isinstance(sub, Mapping) or sub.get(SECRET):
            found.extend(string_values(value) if isinstance(value, Mapping | list) else [str(value)])
        elif isinstance(value, Mapping) and sub.get("type") == "object":
            found.extend(secret_values(value, sub))
    return [v for v in found if v]


def scrubber_for(credentials: Mapping[str, Any], schema: Mapping[str, Any] | None = None) -> Callable[[Any], Any]:
    """A function hiding the connection's secret values in any string of a nested value."""
    return scrubber(secret_values(credentials, schema))


def redactor(credentials: Mapping[str, Any], schema: Mapping[str, Any] | None = None) -> Callable[[str], str]:
    """A function removing every secret value of the connection from a text (``***`` instead)."""
    scrub = scrubber_for(credentials, schema)

    def redact(text: str) -> str:
        return str(scrub(text))

    return redact
