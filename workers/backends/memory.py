"""The in-memory backend, for fast tests and in-process use (``memory://``): Dramatiq's
``StubBroker`` with the fleet's batched enqueue, and the failure log, delivery counter, dead
letters and audit log in this process's memory. Separate processes share nothing: ``catfleet
worker`` needs a real broker."""

from __future__ import annotations

import itertools
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import dramatiq
import msgspec
from dramatiq.brokers.stub import StubBroker, _StubConsumer
from dramatiq.common import dq_name
from dramatiq.middleware import Middleware

from workers.backends.base import FLEET_QUEUES, Backend, Check, QueueStats
from workers.deliveries import DeliveryCounter
from workers.dlq.base import (
    Action,
    AuditEntry,
    AuditLog,
    DeadLetter,
    DeadLetterFilter,
    DeadLetterStore,
    Session,
    decode_payload,
    replay_payload,
)
from workers.failures import FailureLog, FailureRecord
from workers.fleet.gate import PauseGate
from workers.fleet.state import MemoryFleetState
from workers.settings import Settings


class _Dead(msgspec.Struct):
    rid: str
    raw: bytes
    died_at_ms: int


class MemoryBroker(StubBroker):
    """``StubBroker`` that also keeps each dead letter's bytes and time of death."""

    def __init__(self, middleware: list[Middleware] | None = None):
        super().__init__(middleware)
        self.lock = threading.Lock()
        self.dead: defaultdict[str, list[_Dead]] = defaultdict(list)
        self._rids = itertools.count(1)
        self.pause_gate = PauseGate()

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 100) -> _StubConsumer:
        super().consume(queue_name, prefetch, timeout)  # QueueNotFound for an undeclared queue
        return _MemoryConsumer(self, queue_name, prefetch, timeout)

    def enqueue_many(self, messages: list[dramatiq.Message[Any]]) -> None:
        for message in messages:
            self.enqueue(message)

    def add_dead_letter(self, queue_name: str, raw: bytes) -> None:
        """Put raw bytes in the dead letters of ``queue_name`` (what a broken producer leaves)."""
        with self.lock:
            self.dead[queue_name].append(_Dead(f"mem-{next(self._rids)}", raw, int(time.time() * 1000)))


class _MemoryConsumer(_StubConsumer):
    def __init__(self, broker: MemoryBroker, queue_name: str, prefetch: int, timeout: int):
        super().__init__(
            broker.queues[queue_name], broker.dead_letters_by_queue[queue_name], prefetch, timeout
        )
        self.broker = broker
        self.own_queue = queue_name
        self.queue_name = queue_name.removesuffix(".DQ")

    def __next__(self) -> Any:
        if self.broker.pause_gate.is_paused(self.own_queue):
            time.sleep(min(self.timeout, 100) / 1000)
            return None
        return super().__next__()

    def nack(self, message: Any) -> None:
        super().nack(message)
        self.broker.add_dead_letter(self.queue_name, message._message.encode())


class MemoryFailureLog(FailureLog):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: defaultdict[str, list[FailureRecord]] = defaultdict(list)

    def record(self, record: FailureRecord) -> None:
        with self._lock:
            self._records[record.message_id].append(record)

    def history(self, message_id: str) -> list[FailureRecord]:
        with self._lock:
            return list(self._records.get(message_id, []))

    def histories(self, message_ids: Iterable[str]) -> dict[str, list[FailureRecord]]:
        return {mid: self.history(mid) for mid in message_ids}


class MemoryDeliveryCounter(DeliveryCounter):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}

    def count(self, message_id: str) -> int:
        with self._lock:
            self._counts[message_id] = total = self._counts.get(message_id, 0) + 1
            return total

    def clear(self, message_id: str) -> None:
        with self._lock:
            self._counts.pop(message_id, None)


class MemoryAuditLog(AuditLog):
    """Audit entries as dicts, in order (``entries``)."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def begin(
        self,
        *,
        broker: str,
        action: Action,
        filter: DeadLetterFilter,
        operator: str,
        limit: int | None = None,
        rate: float | None = None,
    ) -> int:
        flt = msgspec.to_builtins(filter)
        with self._lock:
            self.entries.append(
                {"broker": broker, "action": action, "filter": flt, "operator": operator}
                | {"count": 0, "message_ids": [], "limit": limit, "rate": rate}
                | {"id": len(self.entries) + 1, "at_ms": int(time.time() * 1000)}
            )
            return len(self.entries)

    def add(self, entry: int, message_ids: list[str]) -> None:
        with self._lock:
            row = self.entries[entry - 1]
            row["count"] += len(message_ids)
            row["message_ids"] = [*row["message_ids"], *message_ids]

    def trail(self, *, limit: int = 50, offset: int = 0) -> list[AuditEntry]:
        with self._lock:
            rows = self.entries[::-1][offset : offset + limit]
            return [_entry(row) for row in rows]

    def of_message(self, message_id: str) -> list[AuditEntry]:
        with self._lock:
            return [_entry(row) for row in self.entries if message_id in row["message_ids"]]


def _entry(row: dict[str, Any]) -> AuditEntry:
    flt = {k: v for k, v in row["filter"].items() if v not in (None, [], ())}
    return msgspec.convert({**row, "filter": flt, "message_ids": list(row["message_ids"])}, AuditEntry)


class MemoryDeadLetterStore(DeadLetterStore):
    broker = "memory"

    def __init__(self, broker: MemoryBroker, *, failures: FailureLog, audit: AuditLog):
        super().__init__(failures=failures, audit=audit)
        self.memory = broker

    @contextmanager
    def session(self) -> Iterator[Session]:
        yield _MemorySession(self)

    def queues(self) -> list[str]:
        with self.memory.lock:
            return sorted(q for q, entries in self.memory.dead.items() if entries)


class _MemorySession(Session):
    def __init__(self, store: MemoryDeadLetterStore):
        self.broker = store.memory
        with self.broker.lock:
            found = [(q, d) for q, entries in self.broker.dead.items() for d in entries]
        payloads = [decode_payload(d.raw) for _, d in found]
        ids = [str(p["message_id"]) if p else d.rid for (_, d), p in zip(found, payloads, strict=True)]
        histories = store.failures.histories(ids)
        self.entries: dict[int, tuple[str, _Dead]] = {}
        self.letters = []
        for (q, d), payload, mid in zip(found, payloads, ids, strict=True):
            letter = store.describe(mid, q, payload, d.died_at_ms, histories.get(mid, []), d.raw)
            self.entries[id(letter)] = (q, d)
            self.letters.append(letter)

    def _take(self, letter: DeadLetter) -> bool:
        queue, dead = self.entries[id(letter)]
        with self.broker.lock:
            entries = self.broker.dead[queue]
            if not any(d is dead for d in entries):
                return False
            entries[:] = [d for d in entries if d is not dead]
            return True

    def replay(self, letter: DeadLetter) -> bool:
        assert letter.payload is not None
        if not self._take(letter):
            return False
        fields = msgspec.json.decode(replay_payload(letter.payload), type=dict[str, Any])
        message: dramatiq.Message[Any] = dramatiq.Message(**{**fields, "args": tuple(fields["args"])})
        self.broker.declare_queue(message.queue_name)
        self.broker.enqueue(message)
        return True

    def purge(self, letter: DeadLetter) -> bool:
        return self._take(letter)


class MemoryBackend(Backend):
    kind = "memory"

    def __init__(self, settings: Settings):
        super().__init__(settings)
        self._failures = MemoryFailureLog()
        self._deliveries = MemoryDeliveryCounter()
        self._fleet_state = MemoryFleetState(ttl_ms=settings.broker_heartbeat_timeout_ms)

    def fleet_state(self) -> MemoryFleetState:
        return self._fleet_state

    @property
    def failures(self) -> MemoryFailureLog:
        return self._failures

    @property
    def deliveries(self) -> MemoryDeliveryCounter:
        return self._deliveries

    def _make_broker(self, middleware: list[Middleware]) -> dramatiq.Broker:
        return MemoryBroker(middleware)

    @property
    def memory_broker(self) -> MemoryBroker:
        """The broker (one without middleware if none was built: nothing to show yet)."""
        broker = self._broker or self.build_broker([])
        assert isinstance(broker, MemoryBroker)
        return broker

    def dead_letters(self, audit: AuditLog, *, queues: Sequence[str] = FLEET_QUEUES) -> MemoryDeadLetterStore:
        return MemoryDeadLetterStore(self.memory_broker, failures=self._failures, audit=audit)

    def queue_stats(self, queues: Sequence[str] = FLEET_QUEUES) -> list[QueueStats]:
        broker = self.memory_broker
        out = []
        for q in queues:
            live, delay = broker.queues.get(q), broker.queues.get(dq_name(q))
            ready = live.qsize() if live else 0
            delayed = delay.qsize() if delay else 0
            held = sum(x.unfinished_tasks - x.qsize() for x in (live, delay) if x is not None)
            with broker.lock:
                dead = len(broker.dead.get(q, ()))
            out.append(
                QueueStats(
                    queue=q, ready=ready, delayed=delayed, in_flight=held, dead=dead, oldest_age_s=None
                )
            )
        return out

    def stray_queues(self) -> list[QueueStats] | None:
        """Declared queues beyond the fleet's that hold messages (ready, delayed or dead)."""
        broker = self.memory_broker
        fleet = set(FLEET_QUEUES) | {dq_name(q) for q in FLEET_QUEUES}
        with broker.lock:
            names = {q.removesuffix(".DQ") for q in broker.queues} | set(broker.dead)
        stats = self.queue_stats(sorted(names - fleet))
        return [s for s in stats if s.ready or s.delayed or s.dead or s.in_flight]

    def check(self) -> Check:
        return Check(ok=True)

    def flush(self, queues: Sequence[str] = FLEET_QUEUES) -> None:
        broker = self.memory_broker
        for q in queues:
            if q in broker.queues:
                broker.flush(q)
                broker.flush(dq_name(q))
        with broker.lock:
            for q in queues:
                broker.dead.pop(q, None)


__all__ = ["MemoryAuditLog", "MemoryBackend", "MemoryBroker", "MemoryDeadLetterStore"]
