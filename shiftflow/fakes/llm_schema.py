"""A small valid JSON value for a JSON Schema: what the fake LLM answers for structured output.

Deterministic: the same schema always gives the same value. Follows ``const``, ``enum``,
``type`` (the first non-null one of a list), ``properties`` (every property is filled),
``items``/``prefixItems`` with ``minItems``, string ``format``/``minLength``/``maxLength``,
number bounds, ``anyOf``/``oneOf`` (the first branch), ``allOf`` (merged) and local
``$ref`` (``#/$defs/...``, ``#/definitions/...``). A string is the property's name (or
``"text"``), so answers are easy to read in tests. ``pattern`` is not followed: a
schema whose strings need a pattern gets a value that fails it, as a real model might.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_FORMATS = {
    "date-time": "2025-01-01T00:00:00Z",
    "date": "2025-01-01",
    "time": "00:00:00Z",
    "email": "user@example.com",
    "uri": "https://example.com/",
    "url": "https://example.com/",
    "uuid": "00000000-0000-4000-8000-000000000000",
    "ipv4": "192.0.2.1",
    "hostname": "example.com",
}
_MAX_DEPTH = 12


def _resolve(ref: str, root: Mapping[str, Any]) -> Mapping[str, Any]:
    if not ref.startswith("#/"):
        return {}
    node: Any = root
    for part in ref[2:].split("/"):
        node = node.get(part.replace("~1", "/").replace("~0", "~")) if isinstance(node, Mapping) else None
    return node if isinstance(node, Mapping) else {}


def _merge(parts: list[Mapping[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if key == "properties" and isinstance(value, Mapping):
                merged.setdefault("properties", {}).update(value)
            elif key == "required" and isinstance(value, list):
                merged.setdefault("required", []).extend(value)
            else:
                merged.setdefault(key, value)
    return merged


def _number(schema: Mapping[str, Any], integer: bool) -> int | float:
    low = schema.get("minimum")
    exclusive = schema.get("exclusiveMinimum")
    high = schema.get("maximum")
    value: float = 0
    if isinstance(low, int | float):
        value = low
    if isinstance(exclusive, int | float) and value <= exclusive:
        value = exclusive + 1 if integer else exclusive + 0.5
    if isinstance(high, int | float) and value > high:
        value = high
    return int(value) if integer else value


def _string(schema: Mapping[str, Any], hint: str) -> str:
    fmt = schema.get("format")
    text = _FORMATS.get(fmt, hint or "text") if isinstance(fmt, str) else (hint or "text")
    low = schema.get("minLength")
    high = schema.get("maxLength")
    if isinstance(low, int) and len(text) < low:
        text = text + "x" * (low - len(text))
    if isinstance(high, int) and len(text) > high:
        text = text[:high]
    return text


def instance_for(schema: Any, root: Any = None, *, hint: str = "", depth: int = 0) -> Any:
    """A value valid against ``schema`` (within the limits named in the module docstring).

    Parameters:
        schema: the JSON Schema.
        root: the document local ``$ref`` resolve against (``schema`` itself by default).
        hint: the text a string gets (the property name when inside an object).
    """
    if not isinstance(schema, Mapping) or depth > _MAX_DEPTH:
        return None if schema is False else "text"
    root = schema if root is None else root
    if "$ref" in schema and isinstance(schema["$ref"], str):
        rest = {k: v for k, v in schema.items() if k != "$ref"}
        return instance_for(_merge([_resolve(schema["$ref"], root), rest]), root, hint=hint, depth=depth + 1)
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    for key in ("anyOf", "oneOf"):
        branches = schema.get(key)
        if isinstance(branches, list) and branches:
            rest = {k: v for k, v in schema.items() if k != key}
            first = branches[0] if isinstance(branches[0], Mapping) else {}
            return instance_for(_merge([rest, first]), root, hint=hint, depth=depth + 1)
    parts = schema.get("allOf")
    if isinstance(parts, list) and parts:
        rest = {k: v for k, v in schema.items() if k != "allOf"}
        return instance_for(_merge([rest, *[p for p in parts if isinstance(p, Mapping)]]), root, hint=hint, depth=depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
    if kind == "object":
        properties = schema.get("properties")
        out: dict[str, Any] = {}
        if isinstance(properties, Mapping):
            for name, sub in properties.items():
                out[name] = instance_for(sub, root, hint=name, depth=depth + 1)
        for name in schema.get("required") or ():
            if isinstance(name, str) and name not in out:
                out[name] = "text"
        return out
    if kind == "array":
        prefix = schema.get("prefixItems")
        items: list[Any] = []
        if isinstance(prefix, list):
            items = [instance_for(p, root, hint=hint, depth=depth + 1) for p in prefix]
        low = schema.get("minItems")
        count = max(low if isinstance(low, int) else 1, len(items))
        item_schema = schema.get("items")
        while len(items) < count:
            items.append(instance_for(item_schema if isinstance(item_schema, Mapping) else {}, root, hint=hint, depth=depth + 1))
        high = schema.get("maxItems")
        return items[:high] if isinstance(high, int) else items
    if kind == "string":
        return _string(schema, hint)
    if kind == "integer":
        return _number(schema, True)
    if kind == "number":
        return _number(schema, False)
    if kind == "boolean":
        return True
    return None
