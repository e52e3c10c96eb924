"""The L2 circuit breaker (pybreaker underneath), as a pure unit with a failing callable."""

from __future__ import annotations

import inspect
import logging
import threading
import time
from collections.abc import Callable

import pytest

from pipeline.cache.breaker import CLOSED, HALF_OPEN, OPEN, CacheBreaker
from pipeline.errors import CacheUnavailable


class FakeClock:
    """Monotonic seconds that only move when a test advances them."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


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
    clock = FakeClock()
    breaker = CacheBreaker(fail_max=1, reset_seconds=30, clock=clock)
    seen: list[tuple[str, str]] = []
    breaker.on_transition(lambda old, new: seen.append((old, new)))
    flaky = Flaky()
    with pytest.raises(CacheUnavailable):
        breaker.call(flaky)
    clock.advance(29.5)
    with pytest.raises(CacheUnavailable):  # the reset timeout has not elapsed: refused, not run
        breaker.call(flaky)
    assert flaky.calls == 1 and breaker.state == OPEN
    clock.advance(0.5)  # exactly the reset timeout: one probe goes through
    with pytest.raises(CacheUnavailable) as err:  # the probe fails: open again
        breaker.call(flaky)
    assert isinstance(err.value.__cause__, ConnectionError)
    assert flaky.calls == 2 and breaker.state == OPEN
    clock.advance(29.5)  # the new timeout counts from the re-opening, not the first opening
    with pytest.raises(CacheUnavailable):
        breaker.call(flaky)
    assert flaky.calls == 2
    clock.advance(0.5)
    flaky.healthy = True
    assert breaker.call(flaky) == "ok"
    assert flaky.calls == 3 and breaker.state == CLOSED
    assert breaker.stats.snapshot() == {
        "calls": 3,
        "failures": 2,
        "rejected": 2,
        "transitions": {
            "closed->open": 1,
            "open->half-open": 2,
            "half-open->open": 1,
            "half-open->closed": 1,
        },
    }
    assert seen == [
        (CLOSED, OPEN),
        (OPEN, HALF_OPEN),
        (HALF_OPEN, OPEN),
        (OPEN, HALF_OPEN),
        (HALF_OPEN, CLOSED),
    ]


def test_the_default_clock_is_monotonic_time() -> None:
    """Production breakers measure the reset timeout on time.monotonic (no wall-clock jumps)."""
    assert inspect.signature(CacheBreaker).parameters["clock"].default is time.monotonic
    breaker = CacheBreaker(fail_max=1, reset_seconds=3600)
    with pytest.raises(CacheUnavailable):
        breaker.call(Flaky())
    with pytest.raises(CacheUnavailable):  # an hour has not passed on the real clock
        breaker.call(lambda: "not run")


def test_a_broken_hook_does_not_break_the_call() -> None:
    breaker = CacheBreaker(fail_max=1, reset_seconds=60)

    def broken(old: str, new: str) -> None:
        raise RuntimeError("metrics exporter down")

    breaker.on_transition(broken)
    with pytest.raises(CacheUnavailable):
        breaker.call(Flaky())
    assert breaker.state == OPEN


# Concurrency: one worker process runs several threads, all sharing one breaker.

THREADS = 4


def _run_in_threads(n: int, target: Callable[[], object]) -> list[object]:
    """Start ``n`` threads at once on ``target``; each one's result or exception, in order."""
    outcomes: list[object] = [None] * n
    start = threading.Barrier(n)

    def run(i: int) -> None:
        start.wait()
        try:
            outcomes[i] = target()
        except BaseException as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
        assert not t.is_alive()
    return outcomes


def test_calls_from_many_threads_run_at_the_same_time() -> None:
    """pybreaker's own ``call`` holds its lock around the guarded function; the L2 calls of a
    worker's threads must not queue behind one another (a slow node would stall them all)."""
    breaker = CacheBreaker(fail_max=5, reset_seconds=60)
    all_in = threading.Barrier(THREADS, timeout=5)  # passes only if every call is in flight at once
    duration = 0.3

    def slow() -> str:
        all_in.wait()
        time.sleep(duration)
        return "ok"

    started = time.perf_counter()
    outcomes = _run_in_threads(THREADS, lambda: breaker.call(slow))
    elapsed = time.perf_counter() - started
    assert outcomes == ["ok"] * THREADS
    assert elapsed < 2 * duration  # about one call's duration, not THREADS x
    assert breaker.state == CLOSED and breaker.stats.snapshot()["calls"] == THREADS


def test_slow_failing_calls_overlap_and_still_trip_the_breaker() -> None:
    breaker = CacheBreaker(fail_max=THREADS, reset_seconds=60)
    all_in = threading.Barrier(THREADS, timeout=5)

    def timing_out() -> str:
        all_in.wait()
        time.sleep(0.1)
        raise TimeoutError("cache node slow")

    outcomes = _run_in_threads(THREADS, lambda: breaker.call(timing_out))
    assert sum(isinstance(o, TimeoutError) for o in outcomes) == THREADS - 1
    tripped = [o for o in outcomes if isinstance(o, CacheUnavailable)]
    assert len(tripped) == 1 and isinstance(tripped[0].__cause__, TimeoutError)
    assert breaker.state == OPEN
    assert breaker.stats.snapshot()["failures"] == THREADS


def _opened(reset_seconds: float, clock: FakeClock) -> tuple[CacheBreaker, list[tuple[str, str]]]:
    """A breaker opened by one failure, its reset timeout just elapsed on ``clock``."""
    breaker = CacheBreaker(fail_max=1, reset_seconds=reset_seconds, clock=clock)
    seen: list[tuple[str, str]] = []
    breaker.on_transition(lambda old, new: seen.append((old, new)))
    with pytest.raises(CacheUnavailable):
        breaker.call(Flaky())
    clock.advance(reset_seconds)
    return breaker, seen


@pytest.mark.parametrize("probe_succeeds", [True, False])
def test_half_open_lets_exactly_one_probe_through_under_concurrency(probe_succeeds: bool) -> None:
    clock = FakeClock()
    breaker, seen = _opened(30, clock)
    in_probe, release = threading.Event(), threading.Event()
    ran: list[str] = []

    def probe() -> str:
        ran.append(threading.current_thread().name)
        in_probe.set()
        assert release.wait(timeout=5)
        if not probe_succeeds:
            raise ConnectionError("still down")
        return "ok"

    def caller() -> object:
        return breaker.call(probe)

    def release_when_all_refused() -> None:
        assert in_probe.wait(timeout=5)
        deadline = time.monotonic() + 5
        while breaker.stats.snapshot()["rejected"] < THREADS - 1 and time.monotonic() < deadline:
            time.sleep(0.005)
        release.set()

    releaser = threading.Thread(target=release_when_all_refused)
    releaser.start()
    outcomes = _run_in_threads(THREADS, caller)
    releaser.join(timeout=10)
    assert len(ran) == 1  # one probe ran; the others were refused at once, without waiting
    refused = [o for o in outcomes if isinstance(o, CacheUnavailable) and o.__cause__ is None]
    assert len(refused) == THREADS - 1
    assert breaker.stats.snapshot()["rejected"] == THREADS - 1
    if probe_succeeds:
        assert outcomes.count("ok") == 1 and breaker.state == CLOSED
        assert seen[1:] == [(OPEN, HALF_OPEN), (HALF_OPEN, CLOSED)]
    else:
        assert breaker.state == OPEN
        assert seen[1:] == [(OPEN, HALF_OPEN), (HALF_OPEN, OPEN)]
        clock.advance(29.9)
        with pytest.raises(CacheUnavailable):  # open again for a full reset timeout
            breaker.call(lambda: "not run")
        assert len(ran) == 1
        clock.advance(0.1)
        assert breaker.call(lambda: "ok") == "ok" and breaker.state == CLOSED


def test_only_the_probe_decides_a_straggler_does_not() -> None:
    """A call let through while closed that returns after the breaker opened is not counted:
    its success does not close a half-open breaker, its failure does not re-open it."""
    clock = FakeClock()
    breaker = CacheBreaker(fail_max=1, reset_seconds=30, clock=clock)
    straggler_in, straggler_go = threading.Event(), threading.Event()
    probe_in, probe_go = threading.Event(), threading.Event()

    def straggler() -> str:
        straggler_in.set()
        assert straggler_go.wait(timeout=5)
        return "late"

    def failing_probe() -> str:
        probe_in.set()
        assert probe_go.wait(timeout=5)
        raise ConnectionError("still down")

    late: list[object] = []
    t1 = threading.Thread(target=lambda: late.append(breaker.call(straggler)))
    t1.start()
    assert straggler_in.wait(timeout=5)
    with pytest.raises(CacheUnavailable):  # another thread's failure opens it
        breaker.call(Flaky())
    clock.advance(30)
    probed: list[object] = []

    def probe_call() -> None:
        try:
            breaker.call(failing_probe)
        except CacheUnavailable as exc:
            probed.append(exc)

    t2 = threading.Thread(target=probe_call)
    t2.start()
    assert probe_in.wait(timeout=5)
    straggler_go.set()
    t1.join(timeout=5)
    assert late == ["late"]  # the caller still gets its result
    assert breaker.state == HALF_OPEN  # but it did not close the breaker
    probe_go.set()
    t2.join(timeout=5)
    assert len(probed) == 1 and breaker.state == OPEN


def test_a_probe_that_never_reports_back_does_not_hold_half_open_forever() -> None:
    clock = FakeClock()
    breaker, _ = _opened(30, clock)
    lost = breaker._admit()  # a probe admitted whose thread then died
    assert lost is not None and breaker.state == HALF_OPEN
    clock.advance(29.9)
    with pytest.raises(CacheUnavailable):
        breaker.call(lambda: "refused while that probe counts")
    assert breaker.stats.snapshot()["rejected"] == 1
    clock.advance(0.1)  # a reset timeout after it was admitted, the lost probe stops counting
    assert breaker.call(lambda: "ok") == "ok"
    assert breaker.state == CLOSED
    assert breaker.stats.snapshot()["transitions"] == {
        "closed->open": 1,
        "open->half-open": 1,
        "half-open->closed": 1,
    }


def test_an_exception_keeps_its_own_traceback() -> None:
    breaker = CacheBreaker(fail_max=5, reset_seconds=60)
    with pytest.raises(ConnectionError) as err:
        breaker.call(Flaky())
    frames = [f.name for f in err.traceback]
    assert frames[-1] == "__call__" and "_replay" not in frames
