"""The engine's CLI: the published schema is current, validation names the field."""

import json
import subprocess
import sys
from pathlib import Path

from shiftflow.kernel.definition import SCHEMA

ROOT = Path(__file__).resolve().parents[2]
CLI = str(Path(sys.executable).with_name("shiftflow"))


def test_published_schema_matches_the_code():
    published = json.loads((ROOT / "docs" / "workflow.schema.json").read_text())
    assert published == json.loads(json.dumps(SCHEMA)), "regenerate with: shiftflow schema > docs/workflow.schema.json"


def test_validate_accepts_the_example_and_names_the_bad_field(tmp_path):
    ok = subprocess.run([CLI, "validate", str(ROOT / "shiftflow/examples/hello.yaml")], capture_output=True, text=True,
                        timeout=60)
    assert ok.returncode == 0 and "valid (3 steps" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsteps:\n  - {id: a, type: http}\n  - {id: b, type: transform, retry: {max: -1}}\n")
    result = subprocess.run([CLI, "validate", str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "steps[1].retry.max: must be >= 0" in result.stderr


def test_missing_file_is_a_usage_error(tmp_path):
    result = subprocess.run([CLI, "validate", str(tmp_path / "nope.yaml")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "nope.yaml" in result.stderr
