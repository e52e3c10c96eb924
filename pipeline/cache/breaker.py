"""The circuit breaker in front of L2: pybreaker, with its state and transitions observable.

pybreaker runs a guarded call under its lock, so in half-open exactly one probe is in flight
and the others wait for its verdict. While open, a call fails at once with CacheUnavailable
and the guarded function never runs: no L2 traffic at all.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

import pybreaker

from pipeline.errors import CacheUnavailable

log = logging.getLogger("catfleet.cache")
T = TypeVar("T")

CLOSED = pybreaker.STATE_CLOSED
OPEN = pybreaker.STATE_OPEN
HALF_OPEN = pybreaker.STATE_HALF_OPEN

#: ``callback(old_state, new_state)``: wire it to a metric (e.g. a Prometheus gauge/counter).
TransitionHook = Callable[[str, str], None]


class BreakerStats:
    """Counters a metrics exporter can read: calls, failures, rejections, transitions."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls = 0  # guarded calls that ran (succeeded or failed)
        self.failures = 0  # guarded calls that failed
        self.rejected = 0  # calls refused while open (no L2 traffic): the fallbacks to L3
        self.transitions: Counter[str] = Counter()  # "closed->open": n

    def count(self, field: str) -> None:
        with self._lock:
            setattr(self, field, getattr(self, field) + 1)

    def transition(self, old: str, new: str) -> None:
        with self._lock:
            self.transitions[f"{old}->{new}"] += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "calls": self.calls,
                "failures": self.failures,
                "rejected": self.rejected,
                "transitions": dict(self.transitions),
            }


class _Listener(pybreaker.CircuitBreakerListener):
    def __init__(self, owner: CacheBreaker) -> None:
        self.owner = owner

    def failure(self, cb: pybreaker.CircuitBreaker, exc: BaseException) -> None:
        self.owner.stats.count("failures")

    def state_change(
        self,
        cb: pybreaker.CircuitBreaker,
        old_state: pybreaker.CircuitBreakerState | None,
        new_state: pybreaker.CircuitBreakerState,
    ) -> None:
        self.owner._transition(old_state.name if old_state else CLOSED, new_state.name)


class CacheBreaker:
    """Guards calls to one cache tier: opens after ``fail_max`` consecutive failures, lets one
    probe through after ``reset_seconds``, closes when that probe succeeds."""

    def __init__(self, *, name: str = "l2", fail_max: int = 5, reset_seconds: float = 30.0) -> None:
        self.name = name
        self.stats = BreakerStats()
        self._hooks: list[TransitionHook] = []
        self._breaker = pybreaker.CircuitBreaker(
            fail_max=fail_max, reset_timeout=reset_seconds, name=name, listeners=[_Listener(self)]
        )

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half-open`` (an open breaker whose reset timeout has passed
        still says ``open`` until the next call probes)."""
        return self._breaker.current_state

    def on_transition(self, hook: TransitionHook) -> None:
        """Call ``hook(old, new)`` on every state change (after the log line)."""
        self._hooks.append(hook)

    def call(self, func: Callable[[], T]) -> T:
        """Run ``func`` through the breaker. Refused while open: CacheUnavailable, nothing runs.
        Exceptions of ``func`` count as failures and propagate unchanged (the caller translates
        them); the call that trips the breaker raises CacheUnavailable from the original error."""
        ran = False

        def guarded() -> T:
            nonlocal ran
            ran = True
            self.stats.count("calls")
            return func()

        try:
            return self._breaker.call(guarded)
        except pybreaker.CircuitBreakerError as exc:
            if not ran:
                self.stats.count("rejected")
                raise CacheUnavailable(f"{self.name} circuit breaker open") from exc
            cause = exc.__context__ or exc  # the error of the call that tripped it
            raise CacheUnavailable(f"{self.name} failed; circuit breaker opened: {cause}") from cause

    def _transition(self, old: str, new: str) -> None:
        self.stats.transition(old, new)
        level = logging.WARNING if new == OPEN else logging.INFO
        log.log(
            level,
            "cache breaker %s: %s -> %s",
            self.name,
            old,
            new,
            extra={"event": "breaker_transition", "tier": self.name, "old_state": old, "new_state": new},
        )
        for hook in self._hooks:
            try:
                hook(old, new)
            except Exception:  # a broken metrics hook must not break categorization
                log.exception("breaker transition hook failed")
