"""The sandboxed template language: references only, typed when whole, bounded."""

import pytest

from shiftflow.kernel.expressions import ExpressionError, render

CTX = {"trigger": {"amount": 12.5, "items": [{"sku": "a"}], "name": "ada"}, "vars": {"n": 3}}


def test_whole_reference_keeps_type():
    assert render("{{ trigger.amount }}", CTX) == 12.5
    assert render("{{trigger.items}}", CTX) == [{"sku": "a"}]


def test_embedded_references_render_as_text():
    assert render("hi {{ trigger.name }}, {{ vars.n }} items: {{ trigger.items.0.sku }}", CTX) == "hi ada, 3 items: a"


def test_nested_structures_are_rendered():
    assert render({"a": ["{{ vars.n }}", {"b": "{{ trigger.name }}"}], "c": 1}, CTX) == {
        "a": [3, {"b": "ada"}], "c": 1}


@pytest.mark.parametrize(
    "template",
    ["{{ trigger.missing }}", "{{ trigger.__class__ }}", "{{ trigger.name.upper() }}", "{{ }}",
     "{{ __import__('os') }}", "{{ trigger.items.5 }}"],
)
def test_no_python_internals_and_no_missing_names(template):
    with pytest.raises(ExpressionError):
        render(template, CTX)


def test_output_size_is_bounded():
    big = {"trigger": {"s": "x" * 600_000}}
    with pytest.raises(ExpressionError, match="characters"):
        render("{{ trigger.s }}{{ trigger.s }}", big)
