"""Bounded crash recovery for the Redis broker (added to the fleet's middleware by the Redis backend).

Dramatiq re-queues a dead process's unacked messages only in a maintenance pass that runs on a
random fraction of broker calls, for the queue of that call, and a process refreshes its
heartbeat only when it calls the broker (a process whose prefetch is full of long batches does
not). This middleware runs one thread per worker process that, every ``interval_ms``, calls the
broker for each consumed queue (and its delay queue) with maintenance on. So:

* a live process's heartbeat is never older than ``interval_ms``;
* a killed process's messages are back in their queue at most ``heartbeat_timeout`` +
  ``interval_ms`` after its last heartbeat (then the next fetch, <= 1 s idle polling, runs them).

A process whose threads are all stuck must not keep its messages by heartbeating: when every
worker thread has been on its current message for longer than ``stall_ms``
(``stall_bound_ms``: three connection-failure bounds, 30 s by default), the process abandons
its broker id (``SafeRedisBroker.abandon_broker_id``, once per stall). The old id's heartbeat
stops, so its unacked messages, the prefetched ones and those stuck in flight, go back to the
queue for the other hosts after the heartbeat timeout; the process carries on under a new id.
A message it finishes late is written again by the idempotent upsert (no change).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import dramatiq
from dramatiq.middleware import Middleware

from pipeline.settings import KEEPALIVE_COUNT, KEEPALIVE_INTERVAL_S
from workers.backends.redis.broker import SafeRedisBroker
from workers.settings import Settings

#: The in-call attempts of a database call (``pipeline.db.IN_CALL_ATTEMPTS``), each bounded by
#: the connection-failure bound: a thread stuck longer than that many bounds is not waiting on a
#: connection that keepalives and the user timeout will break.
STALL_BOUNDS = 3


def connection_failure_bound_ms(*, keepalive_s: int, user_timeout_ms: int) -> int:
    """How long a connection to a vanished peer can block a call: the user timeout for data sent
    and not acknowledged, keepalive idle + the probes for a wait on a reply (10 s by default)."""
    probes_s = KEEPALIVE_COUNT * KEEPALIVE_INTERVAL_S
    return max(user_timeout_ms, (keepalive_s + probes_s) * 1000)


def stall_bound_ms(*, keepalive_s: int, user_timeout_ms: int) -> int:
    """How long every worker thread may be on one message before the process counts as stuck."""
    return STALL_BOUNDS * connection_failure_bound_ms(
        keepalive_s=keepalive_s, user_timeout_ms=user_timeout_ms
    )


class BrokerMaintenance(Middleware):
    def __init__(self, *, interval_ms: int, stall_ms: int | None = None):
        self.interval_ms = interval_ms
        #: None: never abandon the broker id for a stall.
        self.stall_ms = stall_ms
        self.logger = dramatiq.logging.get_logger(__name__, type(self))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._threads = 0
        #: worker thread id -> when it started its current message (monotonic s).
        self._busy: dict[int, float] = {}
        self._busy_lock = threading.Lock()
        #: The start time of the last thread that got stuck, in the stall last acted on.
        self._stall_seen: float | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> BrokerMaintenance:
        return cls(
            interval_ms=settings.broker_maintenance_interval_ms,
            stall_ms=stall_bound_ms(
                keepalive_s=settings.tcp_keepalive_s, user_timeout_ms=settings.tcp_user_timeout_ms
            ),
        )

    def after_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        if not isinstance(broker, SafeRedisBroker):
            return
        self._threads = int(getattr(worker, "worker_threads", 0))
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, args=(broker,), name="catfleet-broker-maintenance", daemon=True
        )
        self._thread.start()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        self._stop.set()

    # progress of the worker threads ---------------------------------------------------------

    def before_process_message(self, broker: dramatiq.Broker, message: Any) -> None:
        with self._busy_lock:
            self._busy[threading.get_ident()] = time.monotonic()

    def after_process_message(
        self, broker: dramatiq.Broker, message: Any, *, result: Any = None, exception: Any = None
    ) -> None:
        self._idle()

    def after_skip_message(self, broker: dramatiq.Broker, message: Any) -> None:
        self._idle()

    def _idle(self) -> None:
        with self._busy_lock:
            self._busy.pop(threading.get_ident(), None)

    def stalled_since(self, now: float) -> float | None:
        """When the last worker thread got stuck, if every thread has been on its current
        message for longer than ``stall_ms``; None otherwise."""
        if self.stall_ms is None or self._threads <= 0:
            return None
        with self._busy_lock:
            starts = list(self._busy.values())
        if len(starts) < self._threads:
            return None
        latest = max(starts)
        return latest if now - latest > self.stall_ms / 1000 else None

    # the maintenance thread -----------------------------------------------------------------

    def _run(self, broker: SafeRedisBroker) -> None:
        while not self._stop.wait(self.interval_ms / 1000):
            self.tick(broker)

    def tick(self, broker: SafeRedisBroker) -> None:
        """One pass: let go of the broker id in a new stall, then heartbeat and maintenance."""
        stalled = self.stalled_since(time.monotonic())
        if stalled is not None and stalled != self._stall_seen:
            self._stall_seen = stalled
            self.logger.warning(
                "Every worker thread (%d) has been on one message for over %d ms: giving up broker id %s"
                " so that the other hosts take its messages",
                self._threads,
                self.stall_ms,
                broker.broker_id,
            )
            broker.abandon_broker_id(TimeoutError(f"worker threads stuck for over {self.stall_ms} ms"))
        try:
            broker.run_maintenance()
        except Exception:
            self.logger.warning(
                "Broker maintenance failed; retrying in %d ms", self.interval_ms, exc_info=True
            )
