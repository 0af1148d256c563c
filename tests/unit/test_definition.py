"""``kernel.definition``: definitions validate with path-naming errors; YAML and JSON parse."""

import pytest

from shiftflow.kernel.definition import parse, validate
from shiftflow.kernel.errors import DefinitionError


def test_plain_list_runs_in_order():
    d = validate({"name": "w", "steps": [{"id": "a", "type": "transform"}, {"id": "b", "type": "http"}]})
    assert [s.needs for s in d.steps] == [(), ("a",)]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"name": "w", "steps": [{"id": "a", "type": "http", "retry": {"max": -1}}]}, "steps[0].retry.max: must be >= 0"),
        ({"name": "w", "steps": []}, "steps"),
        ({"name": "w", "steps": [{"id": "a", "type": "teleport"}]}, "steps[0].type: must be one of"),
        ({"name": "w", "steps": [{"id": "a", "type": "http", "needs": ["z"]}]}, "steps[0].needs: unknown step 'z'"),
        ({"name": "w", "steps": [{"id": "a", "type": "http"}, {"id": "a", "type": "http"}]}, "duplicate step id"),
        ({"steps": [{"id": "a", "type": "http"}]}, "(root): 'name' is a required property"),
    ],
)
def test_errors_name_the_path(data, message):
    with pytest.raises(DefinitionError) as info:
        validate(data)
    assert message in str(info.value)


def test_yaml_and_json_parse_and_garbage_is_refused():
    assert parse('{"name": "x"}') == {"name": "x"}
    assert parse("name: x\n") == {"name": "x"}
    with pytest.raises(DefinitionError):
        parse("- a list\n")
