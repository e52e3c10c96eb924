"""The L2 circuit breaker (pybreaker underneath), as a pure unit with a failing callable."""

from __future__ import annotations

import logging
import time

import pytest

from pipeline.cache.breaker import CLOSED, HALF_OPEN, OPEN, CacheBreaker
from pipeline.errors import CacheUnavailable


class Flaky:
    def __init__(self) -> None:
        self.healthy = False
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if not self.healthy:
            raise ConnectionError("cache down")
        return "ok"


def test_opens_after_fail_max_consecutive_failures_then_refuses_without_calling(
    caplog: pytest.LogCaptureFixture,
) -> None:
    breaker = CacheBreaker(fail_max=3, reset_seconds=60)
    seen: list[tuple[str, str]] = []
    breaker.on_transition(lambda old, new: seen.append((old, new)))
    flaky = Flaky()
    for _ in range(2):
        with pytest.raises(ConnectionError):  # the tier translates these; the breaker counts them
            breaker.call(flaky)
        assert breaker.state == CLOSED
    with caplog.at_level(logging.WARNING, logger="catfleet.cache"), pytest.raises(CacheUnavailable) as err:
        breaker.call(flaky)
    assert isinstance(err.value.__cause__, ConnectionError)  # the tripping call keeps its cause
    assert breaker.state == OPEN and seen == [(CLOSED, OPEN)]
    assert any(r.__dict__.get("new_state") == OPEN for r in caplog.records)
    for _ in range(5):
        with pytest.raises(CacheUnavailable):
            breaker.call(flaky)
    assert flaky.calls == 3  # while open nothing runs
    assert breaker.stats.snapshot() == {
        "calls": 3,
        "failures": 3,
        "rejected": 5,
        "transitions": {"closed->open": 1},
    }


def test_a_success_resets_the_consecutive_count() -> None:
    breaker = CacheBreaker(fail_max=2, reset_seconds=60)
    flaky = Flaky()
    for _ in range(3):
        flaky.healthy = False
        with pytest.raises(ConnectionError):
            breaker.call(flaky)
        flaky.healthy = True
        assert breaker.call(flaky) == "ok"
    assert breaker.state == CLOSED


def test_half_open_probe_closes_on_success_and_reopens_on_failure() -> None:
    breaker = CacheBreaker(fail_max=1, reset_seconds=0.05)
    seen: list[tuple[str, str]] = []
    breaker.on_transition(lambda old, new: seen.append((old, new)))
    flaky = Flaky()
    with pytest.raises(CacheUnavailable):
        breaker.call(flaky)
    time.sleep(0.1)
    with pytest.raises(CacheUnavailable):  # the probe fails: open again
        breaker.call(flaky)
    assert breaker.state == OPEN
    time.sleep(0.1)
    flaky.healthy = True
    assert breaker.call(flaky) == "ok"
    assert breaker.state == CLOSED
    assert seen == [
        (CLOSED, OPEN),
        (OPEN, HALF_OPEN),
        (HALF_OPEN, OPEN),
        (OPEN, HALF_OPEN),
        (HALF_OPEN, CLOSED),
    ]


def test_a_broken_hook_does_not_break_the_call() -> None:
    breaker = CacheBreaker(fail_max=1, reset_seconds=60)

    def broken(old: str, new: str) -> None:
        raise RuntimeError("metrics exporter down")

    breaker.on_transition(broken)
    with pytest.raises(CacheUnavailable):
        breaker.call(Flaky())
    assert breaker.state == OPEN
