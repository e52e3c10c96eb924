"""Bounded crash recovery for the Redis broker (added to the fleet's middleware by the Redis backend).

Dramatiq re-queues a dead process's unacked messages only in a maintenance pass that runs on a
random fraction of broker calls, for the queue of that call, and a process refreshes its
heartbeat only when it calls the broker (a process whose prefetch is full of long batches does
not). This middleware runs one thread per worker process that, every ``interval_ms``, calls the
broker for each consumed queue (and its delay queue) with maintenance on. So:

* a live process's heartbeat is never older than ``interval_ms``;
* a killed process's messages are back in their queue at most ``heartbeat_timeout`` +
  ``interval_ms`` after its last heartbeat (then the next fetch, <= 1 s idle polling, runs them).
"""

from __future__ import annotations

import threading
from typing import Any

import dramatiq
from dramatiq.middleware import Middleware

from workers.backends.redis.broker import SafeRedisBroker


class BrokerMaintenance(Middleware):
    def __init__(self, *, interval_ms: int):
        self.interval_ms = interval_ms
        self.logger = dramatiq.logging.get_logger(__name__, type(self))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def after_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        if not isinstance(broker, SafeRedisBroker):
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, args=(broker,), name="catfleet-broker-maintenance", daemon=True
        )
        self._thread.start()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        self._stop.set()

    def _run(self, broker: SafeRedisBroker) -> None:
        while not self._stop.wait(self.interval_ms / 1000):
            try:
                broker.run_maintenance()
            except Exception:
                self.logger.warning(
                    "Broker maintenance failed; retrying in %d ms", self.interval_ms, exc_info=True
                )
