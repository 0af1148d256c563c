"""The fault suite's session: its own servers (``stack``), and its table at the end.

``stack`` starts RabbitMQ, PostgreSQL, Redis and SecantusDB of the suite's own once for
the scenarios' module (and stops them after it), only when a scenario asks for it; the other reliability tests use the shared
servers through ``tests/conftest.py`` as before. Set ``SHIFTFLOW_RELIABILITY_KEEP=1`` to
keep the stack's directory (logs of every server and ShiftFlow process) after the run.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .fault_checker import format_table
from .scenarios import RESULTS
from .services import ServiceError
from .stack import Stack


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    """The suite's own servers, started once for the module of scenarios and stopped after
    it; fails (never skips) when one cannot start."""
    try:
        made = Stack()
    except ServiceError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        made.start()
    except ServiceError as exc:
        made.stop()
        pytest.fail(str(exc), pytrace=False)
    try:
        yield made
    finally:
        made.stop()


_sent_to_controller = 0


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """In a pytest-xdist worker, send the scenario rows this test added with its report
    (``tests/conftest.py`` prints them in the controlling process)."""
    global _sent_to_controller
    outcome = yield
    if not hasattr(item.config, "workerinput") or len(RESULTS) <= _sent_to_controller:
        return
    report = outcome.get_result()  # type: ignore[attr-defined]
    for numbers in RESULTS[_sent_to_controller:]:
        lines = [f"  {numbers.scenario}: {note}" for note in numbers.notes]
        lines += [f"  {numbers.scenario}: FAIL: {problem}" for problem in numbers.problems()]
        report.user_properties.append(("reliability_scenario", {"table": format_table([numbers]), "lines": lines}))
    _sent_to_controller = len(RESULTS)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print every scenario's row, with its notes, after the run."""
    if not RESULTS:
        return
    terminalreporter.section("reliability scenarios")
    terminalreporter.write_line(format_table(RESULTS))
    for numbers in RESULTS:
        for note in numbers.notes:
            terminalreporter.write_line(f"  {numbers.scenario}: {note}")
        for problem in numbers.problems():
            terminalreporter.write_line(f"  {numbers.scenario}: FAIL: {problem}")
