"""The circuit breaker in front of L2: pybreaker, with its state and transitions observable.

pybreaker 1.4.1 runs the guarded function while holding its (per-breaker) lock, so calling L2
through ``CircuitBreaker.call`` would serialize every L2 call of a process: one slow cache node
would stall every worker thread. Here pybreaker still owns the state machine (consecutive
failure count, trip, half-open, close, listeners), but the network call runs outside any lock:

1. admission, under a short lock: closed lets the call through; open refuses it (CacheUnavailable,
   the guarded function never runs: no L2 traffic at all) until the reset timeout has passed,
   then moves pybreaker to half-open and lets exactly **one** probe through; every other call
   is refused while the probe is in flight (it falls back to L3 at once instead of waiting);
2. the guarded function runs, unlocked and concurrently with the other threads' calls;
3. its outcome is replayed into pybreaker, under the same short lock, through
   ``CircuitBreaker.call`` with a function that returns or raises at once: pybreaker counts the
   failure or success and makes the transition. The outcome of a call admitted while closed
   that finishes after the breaker has left closed is not replayed (it cannot trip an open
   breaker again nor pass for the probe), and a probe that never reports back (its thread
   interrupted) stops holding the half-open slot after another reset timeout.

Time comes from an injectable ``clock`` (``time.monotonic`` by default; tests pass a fake one).
pybreaker's own reset-timeout check (``CircuitOpenState.before_call``, on ``datetime.now``) is
never consulted: admission decides when the timeout has elapsed, on ``clock``, and moves
pybreaker to half-open itself before the probe runs, and an outcome is only replayed into
pybreaker while it is closed or half-open, never open.
"""

from __future__ import annotations

import logging
import threading
import time
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

    def state_change(
        self,
        cb: pybreaker.CircuitBreaker,
        old_state: pybreaker.CircuitBreakerState | None,
        new_state: pybreaker.CircuitBreakerState,
    ) -> None:
        self.owner._transition(old_state.name if old_state else CLOSED, new_state.name)


def _replay(error: BaseException | None) -> None:
    """The outcome of a guarded call that already ran, for pybreaker to count."""
    if error is not None:
        raise error


class CacheBreaker:
    """Guards calls to one cache tier: opens after ``fail_max`` consecutive failures, lets one
    probe through after ``reset_seconds``, closes when that probe succeeds. Calls run
    concurrently; only the bookkeeping around them is serialized."""

    def __init__(
        self,
        *,
        name: str = "l2",
        fail_max: int = 5,
        reset_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._clock = clock  # seconds, monotonic: decides when the reset timeout has elapsed
        self.stats = BreakerStats()
        self._hooks: list[TransitionHook] = []
        # Held only for admission and for replaying an outcome into pybreaker, never around a
        # guarded call; every pybreaker call happens under it.
        self._gate = threading.Lock()
        self._probe: object | None = None  # the token of the half-open probe in flight
        self._probe_since = 0.0
        self._opened_at = clock()  # when the breaker last opened (set by _transition)
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
        """Run ``func`` through the breaker. Refused while open (and while a half-open probe is
        in flight): CacheUnavailable, nothing runs. Exceptions of ``func`` count as failures and
        propagate unchanged (the caller translates them); the call that trips the breaker
        raises CacheUnavailable from the original error."""
        probe = self._admit()
        try:
            self.stats.count("calls")
            result = func()
        except BaseException as exc:
            self.stats.count("failures")
            if self._settle(probe, exc):
                raise CacheUnavailable(f"{self.name} failed; circuit breaker opened: {exc}") from exc
            raise
        self._settle(probe, None)
        return result

    def _admit(self) -> object | None:
        """Let a call through (its probe token in half-open, else None) or raise CacheUnavailable."""
        with self._gate:
            state = self._breaker.current_state
            if state == CLOSED:
                return None
            now = self._clock()
            reset = self._breaker.reset_timeout
            # A probe that never settled (its thread was interrupted) stops counting after the
            # reset timeout, so the breaker cannot stay half-open for good.
            probing = self._probe is not None and now - self._probe_since < reset
            if probing or (state == OPEN and now - self._opened_at < reset):
                self.stats.count("rejected")
                raise CacheUnavailable(f"{self.name} circuit breaker open")
            if state == OPEN:
                self._breaker.half_open()
            self._probe, self._probe_since = object(), now
            return self._probe

    def _settle(self, probe: object | None, error: BaseException | None) -> bool:
        """Replay a finished call's outcome into pybreaker; True if its failure opened the breaker."""
        traceback = error.__traceback__ if error is not None else None
        with self._gate:
            is_probe = probe is not None and probe is self._probe
            try:
                if not is_probe and self._breaker.current_state != CLOSED:
                    return False  # it outlived the closed state it was admitted in: not counted
                self._breaker.call(_replay, error)
            except pybreaker.CircuitBreakerError:
                return True
            except BaseException as exc:
                if exc is not error:
                    raise
            finally:
                if is_probe:
                    self._probe = None
                if error is not None:
                    error.__traceback__ = traceback  # without the replay's frames
            return False

    def _transition(self, old: str, new: str) -> None:
        if new == OPEN:
            self._opened_at = self._clock()
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
