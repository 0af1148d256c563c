"""The one-way import rule (docs/architecture.md#layers) is enforced by `make lint`, and can fail."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=tree, env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.fixture
def tree(tmp_path):
    shutil.copytree(ROOT / "shiftflow", tmp_path / "shiftflow", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_tree_keeps_the_contracts(tree):
    result = _lint_imports(tree)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("module", "line"),
    [
        ("actors/triggers.py", "import shiftflow.producers.ingress.app  # noqa"),
        ("kernel/settings.py", "import shiftflow.models.tables.base  # noqa"),
        ("producers/ingress/hooks.py", "import shiftflow.actors.steps  # noqa"),
        ("consumers/pools.py", "import shiftflow.producers.ingress.hooks  # noqa"),
        # Inside models: a table imports no behaviour, the engine nothing of manage or
        # the SideShift product, and manage and the product nothing of each other.
        ("models/tables/executions.py", "import shiftflow.models.engine.runs  # noqa"),
        ("models/engine/runs.py", "import shiftflow.models.manage.access  # noqa"),
        ("models/manage/queries.py", "import shiftflow.models.swaps.orders  # noqa"),
        ("models/swaps/orders.py", "import shiftflow.models.manage.plain  # noqa"),
    ],
)
def test_a_wrong_way_import_fails_lint(tree, module, line):
    path = tree / "shiftflow" / module
    path.write_text(path.read_text() + "\n" + line + "\n")
    result = _lint_imports(tree)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout
