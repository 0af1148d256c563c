"""A prompt version's typed variables, and the values a run gives them.

A declaration is ``{"name", "type", "required", "default", "options", "description"}``:
``type`` one of ``VARIABLE_TYPES``; ``options`` the only values allowed; a ``default`` is
used when a run gives none (a required variable has none). Declarations are checked when a
version is created, values when a run starts; both errors name the variable.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from shiftflow.kernel.prompts.errors import PromptError, PromptInputError

VARIABLE_TYPES = ("string", "number", "integer", "boolean", "object", "array")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_KEYS = frozenset({"name", "type", "required", "default", "options", "description"})
#: Most variables a version may declare, and the longest string value a run may give.
MAX_VARIABLES = 100
MAX_STRING = 100_000


def _a(kind: str) -> str:
    """``a string``, ``an integer``: the type with its article, for messages."""
    return ("an " if kind[0] in "aeiou" else "a ") + kind


def _is(kind: str, value: Any) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "object":
        return isinstance(value, dict)
    return isinstance(value, list)


def check_declared(declared: Any) -> list[dict[str, Any]]:
    """Check a version's declarations; return them normalised (``required`` false by default).

    Raises:
        PromptError: ``variables[2].type: ...`` naming the declaration and the problem.
    """
    if declared is None:
        return []
    if not isinstance(declared, list):
        raise PromptError("variables", "expected a list of {name, type, required, default, options}")
    if len(declared) > MAX_VARIABLES:
        raise PromptError("variables", f"at most {MAX_VARIABLES} variables")
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for index, item in enumerate(declared):
        where = f"variables[{index}]"
        if not isinstance(item, dict):
            raise PromptError(where, "expected an object with name and type")
        unknown = sorted(set(item) - _KEYS)
        if unknown:
            raise PromptError(f"{where}.{unknown[0]}", f"unknown field; expected {', '.join(sorted(_KEYS))}")
        name = item.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise PromptError(f"{where}.name", "expected a name of letters, digits and _ (not starting with a digit)")
        if name in seen:
            raise PromptError(f"{where}.name", f"{name!r} is declared twice")
        seen.add(name)
        kind = item.get("type", "string")
        if kind not in VARIABLE_TYPES:
            raise PromptError(f"{where}.type", f"{kind!r} is not a type: expected one of {', '.join(VARIABLE_TYPES)}")
        required = item.get("required", False)
        if not isinstance(required, bool):
            raise PromptError(f"{where}.required", "expected true or false")
        options = item.get("options")
        if options is not None:
            if not isinstance(options, list) or not options:
                raise PromptError(f"{where}.options", "expected a non-empty list of allowed values")
            for n, option in enumerate(options):
                if not _is(kind, option):
                    raise PromptError(f"{where}.options[{n}]", f"{option!r} is not {_a(kind)}")
        normal: dict[str, Any] = {"name": name, "type": kind, "required": required}
        if "default" in item:
            if required:
                raise PromptError(f"{where}.default", "a required variable has no default")
            default = item["default"]
            if default is not None and not _is(kind, default):
                raise PromptError(f"{where}.default", f"{default!r} is not {_a(kind)}")
            if options is not None and default not in options:
                raise PromptError(f"{where}.default", f"{default!r} is not one of the options")
            normal["default"] = default
        if options is not None:
            normal["options"] = options
        if isinstance(item.get("description"), str):
            normal["description"] = item["description"]
        out.append(normal)
    return out


def resolve(declared: list[Mapping[str, Any]], given: Any) -> dict[str, Any]:
    """The variables of one run: the given values checked, defaults filled in.

    Raises:
        PromptInputError: ``variables.city: required, missing``, a value of the wrong type,
            not among the options, or a variable the version does not declare.
    """
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise PromptInputError("variables", "expected an object of variable values")
    names = {str(d["name"]) for d in declared}
    unknown = sorted(set(given) - names)
    if unknown:
        known = ", ".join(sorted(names)) or "none"
        raise PromptInputError(f"variables.{unknown[0]}", f"not declared by this version (declared: {known})")
    out: dict[str, Any] = {}
    for item in declared:
        name, kind = str(item["name"]), str(item.get("type", "string"))
        where = f"variables.{name}"
        if name not in given or given[name] is None:
            if item.get("required"):
                raise PromptInputError(where, f"required {kind} variable is missing")
            out[name] = item.get("default")
            continue
        value = given[name]
        if not _is(kind, value):
            raise PromptInputError(where, f"expected {_a(kind)}, got {type(value).__name__}")
        if isinstance(value, str) and len(value) > MAX_STRING:
            raise PromptInputError(where, f"longer than {MAX_STRING} characters")
        options = item.get("options")
        if options is not None and value not in options:
            raise PromptInputError(where, f"{value!r} is not one of {', '.join(map(repr, options))}")
        out[name] = value
    return out
