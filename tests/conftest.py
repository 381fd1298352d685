"""Suite-wide rules: a test fails if it logs an error, or leaves timers on the global reactor.

Hypothesis runs derandomized (the same examples every run, no example database), so a CI run
and its coverage are reproducible; ``HYPOTHESIS_PROFILE=explore`` searches afresh each run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import settings
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from zope.interface import provider

settings.register_profile("repeatable", derandomize=True, database=None)
settings.register_profile("explore", max_examples=1000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))


@pytest.fixture(autouse=True)
def fail_on_logged_errors() -> Iterator[list[LogEvent]]:
    """Collect critical log events (unhandled errors in Deferreds, tracebacks) and fail on any.

    Tests that provoke an error on purpose pop what they expect from the yielded list.
    """
    errors: list[LogEvent] = []

    @provider(ILogObserver)
    def observe(event: LogEvent) -> None:
        if event.get("isError") or event.get("log_failure") is not None:
            errors.append(event)

    globalLogPublisher.addObserver(observe)
    yield errors
    globalLogPublisher.removeObserver(observe)
    assert not errors, f"errors were logged: {errors}"


@pytest.fixture
def reactor() -> Iterator[object]:
    """The real reactor pytest-twisted runs; the test fails if it leaves delayed calls behind."""
    from twisted.internet import reactor as global_reactor

    yield global_reactor
    left = [call for call in global_reactor.getDelayedCalls() if call.active()]
    for call in left:
        call.cancel()
    assert not left, f"the test left delayed calls behind: {left}"
