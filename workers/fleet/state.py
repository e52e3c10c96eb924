"""What the fleet says about itself: one record per live worker process, the queues an operator
paused, and the messages processed per 10-second bucket over the last hour. Each broker backend
keeps them where it keeps its other records (``Backend.fleet_state``): Redis in the broker's
Redis, RabbitMQ in PostgreSQL, the memory broker in memory. ``catfleet status``, ``catfleet
queue`` and the console read them through this contract only."""

from __future__ import annotations

import abc
import threading
import time
from collections.abc import Mapping, Sequence

import msgspec

#: Width of a throughput bucket (s) and how many are kept (one hour).
BUCKET_S = 10
BUCKETS = 360


class BusyThread(msgspec.Struct, kw_only=True):
    """One worker thread and the message it runs."""

    message_id: str
    actor: str
    queue: str
    #: IDs in the batch (None: not a batch).
    expense_ids: int | None
    since_ms: int


class ProcessRecord(msgspec.Struct, kw_only=True):
    """One worker process as it last described itself."""

    id: str  # host:pid:started_ms
    host: str
    pid: int
    queues: list[str]
    threads: int
    busy: list[BusyThread]
    ruleset_version: int | None
    breaker: str | None  # the L2 cache breaker: closed | open | half_open; None: not known yet
    paused: list[str]  # queues this process has stopped taking messages from
    started_ms: int
    beat_ms: int
    processed: int = 0  # messages finished since the process started


class PauseEntry(msgspec.Struct, kw_only=True):
    queue: str
    operator: str
    at_ms: int


class QueueAction(msgspec.Struct, kw_only=True):
    """A pause or resume, for the audit trail."""

    at_ms: int
    operator: str
    action: str  # pause | resume
    queue: str


def now_ms() -> int:
    return int(time.time() * 1000)


def bucket_of(at_ms: int) -> int:
    """The start (s) of the throughput bucket holding ``at_ms``."""
    return (at_ms // 1000) // BUCKET_S * BUCKET_S


class FleetState(abc.ABC):
    """Process records live ``ttl_ms`` after their last beat; pauses until resumed."""

    def __init__(self, *, ttl_ms: int):
        self.ttl_ms = ttl_ms

    @abc.abstractmethod
    def publish(self, record: ProcessRecord) -> None:
        """Write (or refresh) a process's record; it disappears ``ttl_ms`` after this beat."""

    @abc.abstractmethod
    def remove(self, record_id: str) -> None:
        """A process exiting cleanly takes its record with it."""

    @abc.abstractmethod
    def processes(self) -> list[ProcessRecord]:
        """Every fresh record, by host then pid."""

    @abc.abstractmethod
    def paused(self) -> dict[str, PauseEntry]:
        """Paused queue -> who paused it and when."""

    @abc.abstractmethod
    def _set_pause(self, entry: PauseEntry, *, paused: bool) -> bool:
        """Pause (or resume) the queue and audit it; False when it already was (nothing done)."""

    @abc.abstractmethod
    def actions(self, *, limit: int = 50) -> list[QueueAction]:
        """The newest pauses and resumes first."""

    @abc.abstractmethod
    def add_processed(self, counts: Mapping[str, int], at_ms: int) -> None:
        """Messages finished per queue since the last call, counted in ``at_ms``'s bucket."""

    @abc.abstractmethod
    def throughput(self, queues: Sequence[str], now: int | None = None) -> dict[str, list[int]]:
        """Per queue, the messages finished in each of the last ``BUCKETS`` buckets (oldest first;
        the last one is the bucket in progress)."""

    def pause(self, queue: str, operator: str) -> bool:
        return self._set_pause(PauseEntry(queue=queue, operator=operator, at_ms=now_ms()), paused=True)

    def resume(self, queue: str, operator: str) -> bool:
        return self._set_pause(PauseEntry(queue=queue, operator=operator, at_ms=now_ms()), paused=False)

    def close(self) -> None:  # noqa: B027 - optional
        """Release connections this store opened itself."""


def bucket_starts(now: int) -> list[int]:
    last = bucket_of(now)
    return [last - BUCKET_S * i for i in range(BUCKETS - 1, -1, -1)]


class MemoryFleetState(FleetState):
    """For the memory broker (one process: tests and the in-memory demo)."""

    def __init__(self, *, ttl_ms: int):
        super().__init__(ttl_ms=ttl_ms)
        self._lock = threading.Lock()
        self._records: dict[str, ProcessRecord] = {}
        self._paused: dict[str, PauseEntry] = {}
        self._actions: list[QueueAction] = []
        self._counts: dict[tuple[str, int], int] = {}

    def publish(self, record: ProcessRecord) -> None:
        with self._lock:
            self._records[record.id] = record

    def remove(self, record_id: str) -> None:
        with self._lock:
            self._records.pop(record_id, None)

    def processes(self) -> list[ProcessRecord]:
        fresh_after = now_ms() - self.ttl_ms
        with self._lock:
            live = [r for r in self._records.values() if r.beat_ms > fresh_after]
        return sorted(live, key=lambda r: (r.host, r.pid))

    def paused(self) -> dict[str, PauseEntry]:
        with self._lock:
            return dict(self._paused)

    def _set_pause(self, entry: PauseEntry, *, paused: bool) -> bool:
        with self._lock:
            if (entry.queue in self._paused) == paused:
                return False
            if paused:
                self._paused[entry.queue] = entry
            else:
                del self._paused[entry.queue]
            action = "pause" if paused else "resume"
            self._actions.append(
                QueueAction(at_ms=entry.at_ms, operator=entry.operator, action=action, queue=entry.queue)
            )
            return True

    def actions(self, *, limit: int = 50) -> list[QueueAction]:
        with self._lock:
            return list(reversed(self._actions))[:limit]

    def add_processed(self, counts: Mapping[str, int], at_ms: int) -> None:
        with self._lock:
            for queue, n in counts.items():
                key = (queue, bucket_of(at_ms))
                self._counts[key] = self._counts.get(key, 0) + n

    def throughput(self, queues: Sequence[str], now: int | None = None) -> dict[str, list[int]]:
        starts = bucket_starts(now or now_ms())
        with self._lock:
            return {q: [self._counts.get((q, s), 0) for s in starts] for q in queues}
