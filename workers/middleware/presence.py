"""Each worker process says what it is doing: a record in the fleet's state (host, pid, queues,
threads, the message each busy thread runs and since when, ruleset version, cache breaker,
started at, last beat), refreshed every ``beat_ms`` and expiring one heartbeat timeout after the
last beat, removed at once on a clean exit. The same beat reads the paused queues into the
process's pause gate (so a pause reaches every process within a beat) and adds the messages
finished since the last beat to the fleet's throughput buckets."""

from __future__ import annotations

import os
import socket
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import dramatiq
from dramatiq.common import q_name
from dramatiq.middleware import Middleware

from workers.fleet.gate import PauseGate
from workers.fleet.state import BusyThread, FleetState, ProcessRecord, now_ms

#: How many consecutive failed beats are logged before the log goes quiet until one succeeds.
LOGGED_FAILURES = 3


class FleetPresence(Middleware):
    def __init__(
        self,
        state: FleetState,
        *,
        beat_ms: int,
        describe: Callable[[], tuple[int | None, str | None]] = lambda: (None, None),
    ):
        self.state = state
        self.beat_ms = beat_ms
        #: () -> (ruleset version, cache breaker state) of this process
        self.describe = describe
        self.logger = dramatiq.logging.get_logger(__name__, type(self))
        self._lock = threading.Lock()
        self._busy: dict[int, BusyThread] = {}
        self._done: Counter[str] = Counter()
        self._processed = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._record: ProcessRecord | None = None
        self._gate: PauseGate | None = None
        self._failures = 0

    # the worker's life ----------------------------------------------------------------------

    def after_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        started = now_ms()
        host, pid = socket.gethostname(), os.getpid()
        consumed = sorted({q_name(q) for q in getattr(worker, "consumer_whitelist", None) or broker.queues})
        self._record = ProcessRecord(
            id=f"{host}:{pid}:{started}",
            host=host,
            pid=pid,
            queues=consumed,
            threads=int(getattr(worker, "worker_threads", 0)),
            busy=[],
            ruleset_version=None,
            breaker=None,
            paused=[],
            started_ms=started,
            beat_ms=started,
        )
        self._gate = getattr(broker, "pause_gate", None)
        self._stop.clear()
        self.beat()
        self._thread = threading.Thread(target=self._run, name="catfleet-presence", daemon=True)
        self._thread.start()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        self._stop.set()

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.beat_ms / 1000 * 2)
        if self._record is not None:
            try:
                self._flush_processed()
                self.state.remove(self._record.id)
            except Exception:
                self.logger.warning("Could not remove this process's record; it expires on its own")

    # what each thread runs ------------------------------------------------------------------

    def before_process_message(self, broker: dramatiq.Broker, message: Any) -> None:
        ids = (
            message.args[0].get("expense_ids") if message.args and isinstance(message.args[0], dict) else None
        )
        busy = BusyThread(
            message_id=message.message_id,
            actor=message.actor_name,
            queue=q_name(message.queue_name),
            expense_ids=len(ids) if isinstance(ids, list) else None,
            since_ms=now_ms(),
        )
        with self._lock:
            self._busy[threading.get_ident()] = busy

    def after_process_message(
        self, broker: dramatiq.Broker, message: Any, *, result: Any = None, exception: Any = None
    ) -> None:
        self._finished(message)

    def after_skip_message(self, broker: dramatiq.Broker, message: Any) -> None:
        self._finished(message)

    def _finished(self, message: Any) -> None:
        with self._lock:
            self._busy.pop(threading.get_ident(), None)
            self._done[q_name(message.queue_name)] += 1
            self._processed += 1

    # the beat -------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.wait(self.beat_ms / 1000):
            self.beat()

    def beat(self) -> None:
        """Read the pauses into the gate, publish the record, add the throughput. Never raises: a
        broker or database that is away only makes the record go stale."""
        record = self._record
        if record is None:
            return
        try:
            paused = set(self.state.paused())
            if self._gate is not None:
                self._gate.set(paused)
            version, breaker = self.describe()
            with self._lock:
                busy = sorted(self._busy.values(), key=lambda b: b.since_ms)
                processed = self._processed
            record.busy, record.ruleset_version, record.breaker = busy, version, breaker
            record.paused = sorted(paused & set(record.queues)) if self._gate is not None else []
            record.beat_ms, record.processed = now_ms(), processed
            self.state.publish(record)
            self._flush_processed()
        except Exception as exc:
            self._failures += 1
            if self._failures <= LOGGED_FAILURES:
                self.logger.warning(
                    "Could not publish this process's record: %s: %s", type(exc).__name__, exc
                )
            return
        if self._failures:
            self.logger.info("Publishing this process's record again after %d failed beat(s)", self._failures)
            self._failures = 0

    def _flush_processed(self) -> None:
        with self._lock:
            done, self._done = self._done, Counter()
        if done:
            try:
                self.state.add_processed(done, now_ms())
            except Exception:
                with self._lock:  # counted on the next beat instead
                    self._done.update(done)
                raise
