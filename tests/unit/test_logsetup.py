"""``kernel.logsetup.RepeatFilter``: a transient store error is one line, repeats are
counted, an unexpected error keeps its traceback."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import peewee
import pytest

from shiftflow.kernel.errors import BrokerUnavailable
from shiftflow.kernel.logsetup import LOG_FORMAT, RepeatFilter, install, is_transient


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Message:
    """Stands for a Dramatiq message: renders as its whole payload."""

    message_id, actor_name = "m-1", "steps.run"

    def __str__(self) -> str:
        return "steps.run(payload={'data': '" + "x" * 5000 + "'})"


@pytest.fixture
def logged() -> Iterator[tuple[logging.Logger, io.StringIO, Clock]]:
    stream, clock = io.StringIO(), Clock()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(RepeatFilter(10.0, clock))
    logger = logging.getLogger("test.logsetup")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        yield logger, stream, clock
    finally:
        logger.removeHandler(handler)
        logger.propagate = True


def raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return caught


def test_a_transient_error_is_one_line_naming_the_message_and_the_error(logged) -> None:
    logger, stream, _ = logged
    error = raised(peewee.OperationalError('connection to server at "127.0.0.1", port 9 failed: refused\n\tIs it up?'))
    logger.error("Failed to process message %s with unhandled exception.", Message(), exc_info=error)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].endswith("Failed to process message steps.run:m-1 with unhandled exception. "
                              '[OperationalError: connection to server at "127.0.0.1", port 9 failed: refused]')


def test_repeats_are_counted_and_reported_with_the_next_line(logged) -> None:
    logger, stream, clock = logged
    for n in range(500):
        clock.now += 0.0625  # 31 s of 16 failures a second
        logger.error("Failed to process message %s with unhandled exception.", f"m-{n}",
                     exc_info=raised(BrokerUnavailable("not connected to RabbitMQ")))
    lines = stream.getvalue().splitlines()
    assert len(lines) == 4, lines  # at 0, 10, 20 and 30 s
    assert "m-0" in lines[0] and "more like this" not in lines[0]
    assert lines[1].endswith("(159 more like this in the last 10 s not logged)")
    # A different error is not a repeat of the first.
    logger.error("Failed to process message %s with unhandled exception.", "m-x",
                 exc_info=raised(peewee.InterfaceError("connection already closed")))
    assert len(stream.getvalue().splitlines()) == 5


def test_an_unexpected_error_keeps_its_traceback_and_its_repeats_are_counted(logged) -> None:
    logger, stream, clock = logged
    for _ in range(3):
        clock.now += 1
        logger.error("Failed to process message %s with unhandled exception.", Message(),
                     exc_info=raised(KeyError("boom")))
    text = stream.getvalue()
    assert text.count("Traceback (most recent call last)") == 1
    assert "KeyError: 'boom'" in text and "x" * 100 not in text  # the payload is not logged


def test_lines_without_an_error_repeat_only_when_identical(logged) -> None:
    logger, stream, clock = logged
    for n in range(3):
        logger.info("Retrying message %r in %d milliseconds.", f"m-{n}", 500)  # info: untouched
        logger.warning("MongoDB write failed, will retry: %s", "timed out")
        logger.warning("trigger %s quarantined", f"k-{n}")  # distinct: all written
    lines = stream.getvalue().splitlines()
    assert sum("Retrying" in line for line in lines) == 3
    assert sum("MongoDB write failed" in line for line in lines) == 1
    assert sum("quarantined" in line for line in lines) == 3


def test_install_adds_one_filter_per_handler() -> None:
    handler = logging.StreamHandler(io.StringIO())
    install(5.0, [handler])
    install(5.0, [handler])
    assert len(handler.filters) == 1


def test_what_counts_as_transient() -> None:
    assert is_transient(peewee.OperationalError("x")) and is_transient(BrokerUnavailable("x"))
    assert is_transient(ConnectionRefusedError()) and not is_transient(KeyError("x"))
    assert not is_transient(peewee.IntegrityError("x")) and not is_transient(peewee.DataError("x"))
