"""Failpoints fire only where configured; exit-once fires once across processes."""

import subprocess
import sys

import pytest

from shiftflow.kernel import failpoints
from shiftflow.kernel.errors import TransientError

CODE = "from shiftflow.kernel import failpoints; failpoints.hit('step.after_work', 'call'); print('survived')"


def _run(env):
    return subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True, timeout=30)


def test_unset_does_nothing(tmp_path):
    # The process goes on past the point, as it does where another point is configured.
    for env in ({}, {"SHIFTFLOW_FAILPOINTS": "step.before_work:call=exit"}):
        ran = _run({**env, "SHIFTFLOW_FAILPOINT_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"})
        assert ran.returncode == 0 and ran.stdout.strip() == "survived", ran.stderr


def test_raise_is_transient_and_keyed(monkeypatch):
    monkeypatch.setenv("SHIFTFLOW_FAILPOINTS", "step.after_work:call=raise")
    failpoints.hit("step.after_work", "other")
    with pytest.raises(TransientError):
        failpoints.hit("step.after_work", "call")


def test_exit_once_kills_the_first_process_only(tmp_path):
    env = {"SHIFTFLOW_FAILPOINTS": "step.after_work:call=exit-once", "SHIFTFLOW_FAILPOINT_DIR": str(tmp_path),
           "PATH": "/usr/bin:/bin"}
    first, second = _run(env), _run(env)
    assert first.returncode == 137 and "survived" not in first.stdout
    assert second.returncode == 0 and "survived" in second.stdout
