"""An example tool plugin: ``text.shout`` upper-cases a text (see ../pyproject.toml)."""

from __future__ import annotations

from typing import Any

from shiftflow.kernel.tools.base import Tool, ToolContext


def shout(params: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
    """Upper-case ``text``, ``times`` times joined by spaces."""
    return {"text": " ".join([params["text"].upper()] * params.get("times", 1))}


TOOL = Tool(
    name="text.shout",
    description="Upper-case a text.",
    category="text",
    queue="tools",
    effect="repeatable",
    params_schema={
        "type": "object",
        "required": ["text"],
        "additionalProperties": False,
        "properties": {"text": {"type": "string"}, "times": {"type": "integer", "minimum": 1, "maximum": 5}},
    },
    result_schema={"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}},
    run=shout,
)
