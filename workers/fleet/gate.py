"""The pause gate of one worker process: the queues it must not take new messages from. The
presence middleware (``workers.middleware.presence``) refreshes it from the fleet's state on
every beat; each broker's consumer consults it before it fetches, and keeps handing out what it
already holds (a paused queue's prefetched messages still run)."""

from __future__ import annotations

import threading
import weakref
from collections import defaultdict
from collections.abc import Iterable

from dramatiq.common import q_name


class PauseGate:
    def __init__(self) -> None:
        self._paused: frozenset[str] = frozenset()
        self._lock = threading.Lock()
        self._events: defaultdict[str, weakref.WeakSet[threading.Event]] = defaultdict(weakref.WeakSet)

    def is_paused(self, queue_name: str) -> bool:
        """Is ``queue_name`` paused? A delay queue (``<q>.DQ``) never is: it keeps moving its due
        messages into its queue, where they wait while that one is paused."""
        return queue_name in self._paused

    @property
    def paused(self) -> frozenset[str]:
        return self._paused

    def wake_on_resume(self, queue_name: str, event: threading.Event) -> None:
        """Set ``event`` when ``queue_name`` is resumed (a paused consumer's wait ends at once);
        held weakly: a consumer that is gone drops out."""
        with self._lock:
            self._events[queue_name].add(event)

    def set(self, queues: Iterable[str]) -> None:
        new = frozenset(q_name(q) for q in queues)
        with self._lock:
            resumed = self._paused - new
            self._paused = new
            events = [e for q in resumed for e in self._events.get(q, ())]
        for event in events:
            event.set()
