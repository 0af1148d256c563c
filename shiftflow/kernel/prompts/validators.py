"""Checks of a model's output: JSON Schema, regex, and named functions registered in Python.

A validation is ``(name, type, config)``:

* ``SCHEMA``: ``config`` is a JSON Schema (or ``{"schema": {...}}``); the output's JSON
  must match it (an output that is not JSON fails, saying so).
* ``REGEX``: ``config.pattern`` must be found in the output text (``re.search``;
  ``config.flags`` may hold ``i``, ``m``, ``s``; ``config.full: true`` matches the whole text).
* ``FUNCTION``: ``config.name`` of a validator registered with ``register_validator``,
  with ``config.args`` passed to it. Only functions registered in code run; a workspace
  cannot supply code, only choose among these and give them arguments.

``validate_output`` runs every validation and returns the reasons of those that failed
(empty: passed), each prefixed by the validation's name, for the run record and to feed
back to the model.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jsonschema

from shiftflow.kernel.prompts.errors import PromptError

VALIDATION_TYPES = ("SCHEMA", "REGEX", "FUNCTION")
#: Longest regex pattern; the text searched is cut at ``MAX_REGEX_TEXT`` (Python's ``re``
#: has no timeout, so both are bounded).
MAX_PATTERN = 500
MAX_REGEX_TEXT = 200_000

#: A validator: (output text, parsed JSON or None, args) -> None when it passes, else the reason.
Validator = Callable[[str, Any, Mapping[str, Any]], "str | None"]
_REGISTRY: dict[str, Validator] = {}
_UNSET = object()


@dataclass(frozen=True)
class Validation:
    """One active validation of a prompt."""

    name: str
    type: str
    config: Mapping[str, Any] = field(default_factory=dict)


def register_validator(name: str) -> Callable[[Validator], Validator]:
    """Register ``fn`` as the FUNCTION validator ``name`` (a decorator)."""

    def add(fn: Validator) -> Validator:
        _REGISTRY[name] = fn
        return fn

    return add


def validators() -> list[str]:
    """The names of the registered FUNCTION validators."""
    return sorted(_REGISTRY)


@register_validator("non_empty")
def _non_empty(text: str, parsed: Any, args: Mapping[str, Any]) -> str | None:
    return None if text.strip() else "the output is empty"


@register_validator("max_words")
def _max_words(text: str, parsed: Any, args: Mapping[str, Any]) -> str | None:
    limit = int(args.get("max", 100))
    words = len(text.split())
    return None if words <= limit else f"the output has {words} words, more than {limit}"


@register_validator("json_object")
def _json_object(text: str, parsed: Any, args: Mapping[str, Any]) -> str | None:
    return None if isinstance(_parsed(text, parsed), dict) else "the output is not a JSON object"


@register_validator("no_placeholders")
def _no_placeholders(text: str, parsed: Any, args: Mapping[str, Any]) -> str | None:
    found = re.search(r"\{\{|\}\}|\[(?:TODO|INSERT)[^\]]*\]", text)
    return None if found is None else f"the output holds a placeholder ({found.group(0)!r})"


def _schema_of(config: Mapping[str, Any]) -> Mapping[str, Any]:
    schema = config.get("schema", config) if isinstance(config, Mapping) else config
    return schema if isinstance(schema, Mapping) else {}


@functools.lru_cache(maxsize=256)
def _schema_validator(text: str) -> jsonschema.protocols.Validator:
    schema = json.loads(text)
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema)


def _flags(text: str) -> int:
    value = 0
    for letter in text:
        value |= {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL}[letter]
    return value


def check_validation(type_: str, config: Any, where: str = "validation") -> dict[str, Any]:
    """Check a validation's type and config when it is created; return the config.

    Raises:
        PromptError: an unknown type, a schema that is not a JSON Schema, a pattern that
            does not compile, a function that is not registered (naming the field).
    """
    if type_ not in VALIDATION_TYPES:
        raise PromptError(f"{where}.type", f"{type_!r}: expected one of {', '.join(VALIDATION_TYPES)}")
    if not isinstance(config, dict):
        raise PromptError(f"{where}.config", "expected an object")
    if type_ == "SCHEMA":
        schema = _schema_of(config)
        try:
            jsonschema.validators.validator_for(schema).check_schema(schema)
        except jsonschema.SchemaError as exc:
            raise PromptError(f"{where}.config", f"not a valid JSON Schema: {exc.message}") from None
    elif type_ == "REGEX":
        pattern, flags = config.get("pattern"), config.get("flags", "")
        if not isinstance(pattern, str) or not pattern or len(pattern) > MAX_PATTERN:
            raise PromptError(f"{where}.config.pattern", f"expected a pattern of 1-{MAX_PATTERN} characters")
        if not isinstance(flags, str) or set(flags) - set("ims"):
            raise PromptError(f"{where}.config.flags", "expected letters among i, m, s")
        try:
            re.compile(pattern, _flags(flags))
        except re.error as exc:
            raise PromptError(f"{where}.config.pattern", f"does not compile: {exc}") from None
    else:
        name = config.get("name")
        if name not in _REGISTRY:
            raise PromptError(f"{where}.config.name",
                              f"{name!r} is not a registered validator: expected one of {', '.join(validators())}")
        if not isinstance(config.get("args", {}), dict):
            raise PromptError(f"{where}.config.args", "expected an object")
    return config


def _parsed(text: str, parsed: Any) -> Any:
    if parsed is not None:
        return parsed
    try:
        return json.loads(text)
    except ValueError:
        return _UNSET


def validate_output(text: str, parsed: Any, validations: list[Validation]) -> tuple[Any, list[str]]:
    """Run every validation on one output.

    Returns:
        (the validated output: the parsed JSON when the output is JSON, else the text;
        the reasons of the validations that failed, ``"<name>: <reason>"``; empty: passed).
    """
    reasons: list[str] = []
    value = _parsed(text, parsed)
    for v in validations:
        config = v.config or {}
        if v.type == "SCHEMA":
            if value is _UNSET:
                reasons.append(f"{v.name}: the output is not JSON")
                continue
            validator = _schema_validator(json.dumps(_schema_of(config), sort_keys=True))
            errors = sorted(validator.iter_errors(value), key=lambda e: list(map(str, e.absolute_path)))
            for error in errors[:5]:
                path = "/".join(map(str, error.absolute_path)) or "(root)"
                reasons.append(f"{v.name}: at {path}: {error.message}")
        elif v.type == "REGEX":
            pattern = re.compile(str(config.get("pattern", "")), _flags(str(config.get("flags", ""))))
            subject = text[:MAX_REGEX_TEXT]
            found = pattern.fullmatch(subject) if config.get("full") else pattern.search(subject)
            if found is None:
                reasons.append(f"{v.name}: the output does not match /{pattern.pattern}/")
        else:
            fn = _REGISTRY.get(str(config.get("name")))
            if fn is None:
                reasons.append(f"{v.name}: validator {config.get('name')!r} is not registered in this worker")
                continue
            reason = fn(text, None if value is _UNSET else value, dict(config.get("args") or {}))
            if reason:
                reasons.append(f"{v.name}: {reason}")
    return (text if value is _UNSET else value), reasons
