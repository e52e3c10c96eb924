"""What the console shows and does, on one long-lived backend, database pool and dead-letter
store, through the same functions the CLI calls: ``collect_status`` (``catfleet status``), the
fleet state (``catfleet queue``), the dead-letter store (``catfleet dlq``) and ``PatternAdmin``
(``catfleet patterns``). The live snapshot is read once per refresh interval however many pages
are open (``LiveFeed``), so an open console costs the broker a bounded number of commands."""

from __future__ import annotations

import threading
import time
from typing import Any

import cachetools
import msgspec

from pipeline.db import Database
from pipeline.patterns import PatternAdmin, PatternRow
from workers.backends import backend_for
from workers.backends.base import FLEET_QUEUES
from workers.dlq.base import (
    ActionReport,
    AuditEntry,
    DeadLetter,
    DeadLetterFilter,
    DeadLetterStore,
    Page,
    PostgresAuditLog,
)
from workers.failures import LazyDatabase
from workers.fleet import service as queues
from workers.fleet.state import BUCKET_S, ProcessRecord, QueueAction
from workers.settings import Settings
from workers.status import Status, collect_status

#: Most dead letters or patterns on one page.
MAX_PAGE = 200
#: The filter drop-downs' counts (per queue, actor, error type) are reused this long (s): they
#: are a GROUP BY over the dead-letter index, the costliest part of a dead-letters page.
FACETS_TTL_S = 10.0


class Overview(msgspec.Struct, kw_only=True):
    status: Status
    #: per queue, messages finished per bucket over the last hour (oldest first)
    throughput: dict[str, list[int]]
    bucket_s: int
    #: per queue, messages per second over the last full minute
    rate: dict[str, float]
    #: breaker state -> worker processes in it (from their records)
    breakers: dict[str, int]
    read_at_ms: int


class Console:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.backend = backend_for(settings)
        self.state = self.backend.fleet_state()
        self.db = Database.connect(settings.database_url, size=4)
        self.audit_db = LazyDatabase(settings.database_url, size=2)
        self.audit = PostgresAuditLog(self.audit_db)
        self.dead: DeadLetterStore = self.backend.dead_letters(self.audit)
        self.patterns = PatternAdmin(self.db)
        self._facets_lock = threading.Lock()
        self._facets: cachetools.TTLCache[str, dict[str, dict[str, int]]] = cachetools.TTLCache(
            maxsize=1, ttl=FACETS_TTL_S
        )

    def close(self) -> None:
        self.dead.close()
        self.state.close()
        self.backend.close()
        self.audit_db.close()
        self.db.close()

    # fleet -----------------------------------------------------------------------------------

    def overview(self) -> Overview:
        status = collect_status(self.settings, None, backend=self.backend, database=self.db)
        series = self.state.throughput(FLEET_QUEUES)
        per_minute = 60 // BUCKET_S
        rate = {q: sum(v[-1 - per_minute : -1]) / 60 for q, v in series.items()}
        breakers: dict[str, int] = {}
        for p in status.processes:
            state = p.get("breaker") or "unknown"
            breakers[state] = breakers.get(state, 0) + 1
        return Overview(
            status=status,
            throughput=series,
            bucket_s=BUCKET_S,
            rate=rate,
            breakers=breakers,
            read_at_ms=int(time.time() * 1000),
        )

    def processes(self) -> list[ProcessRecord]:
        return self.state.processes()

    def pause(self, queue: str, operator: str) -> bool:
        return queues.pause(self.backend, queue, operator)

    def resume(self, queue: str, operator: str) -> bool:
        return queues.resume(self.backend, queue, operator)

    def queue_actions(self, limit: int = 50) -> list[QueueAction]:
        return self.state.actions(limit=limit)

    # dead letters ----------------------------------------------------------------------------

    def dead_letters(
        self, filter: DeadLetterFilter, *, offset: int = 0, limit: int = 50, after: str | None = None
    ) -> Page:
        """One page, newest first: after the cursor ``after`` (a page's ``next_cursor``), if given."""
        return self.dead.page(filter, offset=max(offset, 0), limit=min(max(limit, 1), MAX_PAGE), after=after)

    @cachetools.cachedmethod(lambda self: self._facets, lock=lambda self: self._facets_lock)
    def facets(self) -> dict[str, dict[str, int]]:
        """Counts for the filter drop-downs, at most ``FACETS_TTL_S`` old."""
        return self.dead.facets()

    def dead_letter(self, message_id: str) -> DeadLetter | None:
        return self.dead.show(message_id)

    def act(
        self,
        action: str,
        filter: DeadLetterFilter,
        *,
        dry_run: bool,
        operator: str,
        limit: int | None = None,
        rate: float | None = None,
    ) -> ActionReport:
        if not dry_run:
            self._facets.clear()  # the counts move with the letters
        if action == "replay":
            return self.dead.replay(filter, dry_run=dry_run, limit=limit, rate=rate, operator=operator)
        if action == "purge":
            return self.dead.purge(filter, dry_run=dry_run, limit=limit, operator=operator)
        raise ValueError(f"unknown action {action!r}")

    def dead_letter_audit(self, *, limit: int = 50, offset: int = 0) -> list[AuditEntry]:
        return self.audit.trail(limit=limit, offset=offset)

    # patterns --------------------------------------------------------------------------------

    def pattern_page(self, *, offset: int = 0, limit: int = 50, **filters: Any) -> list[PatternRow]:
        return self.patterns.list(offset=max(offset, 0), limit=min(max(limit, 1), MAX_PAGE), **filters)

    def set_pattern(self, pattern_id: int, active: bool) -> None:
        self.patterns.set_active(pattern_id, active)


class LiveFeed:
    """The overview (with the process records), read at most once per ``refresh_s`` whoever asks:
    every open page's server-sent events share one read."""

    def __init__(self, console: Console, refresh_s: float):
        self.console = console
        self.refresh_s = refresh_s
        self._lock = threading.Lock()
        self._read_at = 0.0
        self._value: Overview | None = None
        self.reads = 0

    def invalidate(self) -> None:
        """After an action: the next read is fresh (a page shows what it just did)."""
        with self._lock:
            self._value = None

    def get(self) -> Overview:
        with self._lock:
            now = time.monotonic()
            if self._value is None or now - self._read_at >= self.refresh_s * 0.9:
                self._value = self.console.overview()
                self._read_at = now
                self.reads += 1
            return self._value
