"""``kernel.steps``: the planner runs a DAG and skips branches; conditions compare and combine."""

import pytest

from shiftflow.kernel.definition import validate
from shiftflow.kernel.steps import ConditionError, StepState, compare, evaluate_condition, plan


def test_fan_out_and_join():
    d = validate({"name": "w", "steps": [
        {"id": "a", "type": "transform"},
        {"id": "b", "type": "http", "needs": ["a"]},
        {"id": "c", "type": "http", "needs": ["a"]},
        {"id": "d", "type": "transform", "needs": ["b", "c"]},
    ]})
    ok = StepState("SUCCEEDED")
    assert plan(d, {"a": ok}).ready == ["b", "c"]
    assert plan(d, {"a": ok, "b": ok, "c": StepState("RUNNING")}).ready == []
    both = plan(d, {"a": ok, "b": ok, "c": ok})
    assert both.ready == ["d"] and not both.finished
    assert plan(d, {"a": ok, "b": ok, "c": ok, "d": ok}).finished


def test_false_condition_skips_its_branch_and_finishes():
    d = validate({"name": "w", "steps": [{"id": "c", "type": "condition"}, {"id": "h", "type": "http"},
                                        {"id": "t", "type": "transform"}]})
    decision = plan(d, {"c": StepState("SUCCEEDED", {"passed": False})})
    assert decision.skipped == ["h", "t"] and decision.finished and not decision.failed


def test_failure_finishes_as_failed_once_nothing_runs():
    d = validate({"name": "w", "steps": [{"id": "a", "type": "http", "needs": []},
                                        {"id": "b", "type": "http", "needs": []}]})
    running = plan(d, {"a": StepState("FAILED"), "b": StepState("RUNNING")})
    assert running.failed and not running.finished
    assert plan(d, {"a": StepState("FAILED"), "b": StepState("SUCCEEDED")}).finished


@pytest.mark.parametrize(
    ("left", "op", "right", "expected"),
    [("12.5", ">=", 10, True), (3, "<", "2", False), ("a", "==", "a", True), ("x", "in", ["x"], True),
     ([1, 2], "contains", 2, True), (None, "exists", None, False), ("eth", "!=", "btc", True),
     ("2999.99", "below", 3000, True)],
)
def test_compare(left, op, right, expected):
    assert compare(left, op, right) is expected


def test_conditions_combine_and_reject_bad_operators():
    assert evaluate_condition({"all": [{"left": 1, "op": "<", "right": 2}, {"left": 1, "op": "==", "right": 1}]})
    assert evaluate_condition({"any": [{"left": 1, "op": ">", "right": 2}]}) == {"passed": False}
    with pytest.raises(ConditionError):
        compare(1, "~", 2)
    with pytest.raises(ConditionError):
        compare("abc", "<", 1)
