"""Prompt variables, the sandboxed renderer and the output validators (pure functions)."""

from __future__ import annotations

import pytest

from shiftflow.kernel.prompts import (
    PromptError,
    PromptInputError,
    PromptTemplateError,
    Validation,
    check_declared,
    check_validation,
    register_validator,
    render,
    resolve,
    validate_output,
)

DECLARED = check_declared([
    {"name": "ticket", "type": "string", "required": True},
    {"name": "tier", "type": "string", "default": "standard", "options": ["standard", "premium"]},
    {"name": "count", "type": "integer", "default": 3},
    {"name": "score", "type": "number"},
])


def test_values_are_checked_and_defaults_filled_in() -> None:
    assert resolve(DECLARED, {"ticket": "t", "score": 2}) == {"ticket": "t", "tier": "standard", "count": 3,
                                                              "score": 2}


@pytest.mark.parametrize(("given", "message"), [
    ({}, "variables.ticket: required string variable is missing"),
    ({"ticket": 1}, "variables.ticket: expected a string, got int"),
    ({"ticket": "t", "tier": "gold"}, "variables.tier: 'gold' is not one of 'standard', 'premium'"),
    ({"ticket": "t", "count": True}, "variables.count: expected an integer, got bool"),
    ({"ticket": "t", "extra": 1}, "variables.extra: not declared by this version"),
    ("text", "variables: expected an object of variable values"),
])
def test_bad_values_are_refused_naming_the_variable(given: object, message: str) -> None:
    with pytest.raises(PromptInputError) as refused:
        resolve(DECLARED, given)
    assert str(refused.value).startswith(message)


@pytest.mark.parametrize(("declared", "message"), [
    ([{"name": "1x"}], "variables[0].name: expected a name"),
    ([{"name": "a", "type": "date"}], "variables[0].type: 'date' is not a type"),
    ([{"name": "a"}, {"name": "a"}], "variables[1].name: 'a' is declared twice"),
    ([{"name": "a", "required": True, "default": "x"}], "variables[0].default: a required variable has no default"),
    ([{"name": "a", "type": "integer", "default": "x"}], "variables[0].default: 'x' is not an integer"),
    ([{"name": "a", "options": ["x"], "default": "y"}], "variables[0].default: 'y' is not one of the options"),
    ([{"name": "a", "colour": "red"}], "variables[0].colour: unknown field"),
])
def test_bad_declarations_are_refused_naming_the_field(declared: list[dict[str, object]], message: str) -> None:
    with pytest.raises(PromptError) as refused:
        check_declared(declared)
    assert str(refused.value).startswith(message)


def test_templates_render_in_the_sandbox() -> None:
    assert render("Hi {{ name | upper }}{% for i in range(2) %}!{% endfor %}", {"name": "ann"}) == "Hi ANN!!"
    with pytest.raises(PromptTemplateError, match="template: refused by the sandbox"):
        render("{{ x.__class__.__mro__ }}", {"x": 1})
    with pytest.raises(PromptTemplateError, match="template: 'city' is undefined"):
        render("{{ city }}", {})
    with pytest.raises(PromptTemplateError, match="template: line 1: "):
        render("{% for %}", {})
    with pytest.raises(PromptTemplateError, match="refused by the sandbox|cannot render"):
        render("{% for i in range(10**9) %}{% endfor %}", {})


def test_outputs_are_validated_with_every_reason_listed() -> None:
    checks = [
        Validation("shape", "SCHEMA", {"type": "object", "required": ["label"],
                                       "properties": {"score": {"maximum": 5}}}),
        Validation("label", "REGEX", {"pattern": "label", "flags": "i"}),
        Validation("short", "FUNCTION", {"name": "max_words", "args": {"max": 2}}),
    ]
    value, reasons = validate_output('{"score": 9}', None, checks)
    assert value == {"score": 9}
    assert reasons == ["shape: at (root): 'label' is a required property",
                       "shape: at score: 9 is greater than the maximum of 5",
                       "label: the output does not match /label/"]
    value, reasons = validate_output("not json at all", None, checks)
    assert value == "not json at all"
    assert reasons[0] == "shape: the output is not JSON" and reasons[-1].startswith("short: the output has 4 words")
    assert validate_output('{"label": "LABEL"}', {"label": "LABEL"}, checks) == ({"label": "LABEL"}, [])


def test_validations_are_checked_when_added_and_only_registered_functions_run() -> None:
    with pytest.raises(PromptError, match="validation.config: not a valid JSON Schema"):
        check_validation("SCHEMA", {"type": "nope"})
    with pytest.raises(PromptError, match="validation.config.pattern: does not compile"):
        check_validation("REGEX", {"pattern": "("})
    with pytest.raises(PromptError, match="validation.config.name: 'os.system' is not a registered validator"):
        check_validation("FUNCTION", {"name": "os.system"})
    with pytest.raises(PromptError, match="validation.type: 'CODE'"):
        check_validation("CODE", {})

    @register_validator("test_has_digit")
    def has_digit(text: str, parsed: object, args: object) -> str | None:
        return None if any(c.isdigit() for c in text) else "no digit"

    assert check_validation("FUNCTION", {"name": "test_has_digit"})
    assert validate_output("abc", None, [Validation("d", "FUNCTION", {"name": "test_has_digit"})])[1] == \
        ["d: no digit"]
