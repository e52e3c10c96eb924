"""Fleet-wide rate limits on what the workers take from a queue: the bulk lane's expenses per
second (``CATFLEET_BULK_WRITES_PER_S``) and corrections learned per second
(``CATFLEET_LEARN_PER_S``), both off by default.

The limit is shared by every worker process of the fleet: a GCRA state (pyrate-limiter's
``StateBucket`` over ``RedisStateStore``: one small hash, one Lua call per admission) in the
cache Redis (``CATFLEET_CACHE_URL``, a single Redis or the Redis Cluster, whichever broker the
fleet uses), under ``<CATFLEET_CACHE_PREFIX>:limit:<queue>``.

Admission happens on the broker's consumer thread, before a fetched message is handed to the
worker threads (``Admission.wait_s``): a message over the limit is held by the consumer, which
keeps serving its connection meanwhile, so the worker threads stay free for the interactive lane
instead of sleeping on the limit. A message weighs what it writes: the expense ids of a batch, 1
for a correction; a batch heavier than one second of the limit takes a whole second's worth.
When the limiter's Redis cannot be reached the fleet is not stopped: messages are admitted
unlimited for ``OPEN_S`` seconds (a breaker), counted in ``catfleet_rate_limit_errors_total``."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

import pybreaker

from schemas import CATEGORIZE_BULK_QUEUE, LEARN_QUEUE

log = logging.getLogger(__name__)

#: How long the limits are skipped after their Redis failed (then one call tries again).
OPEN_S = 5.0
#: The longest a consumer holds a message before it serves its connection again.
MAX_WAIT_S = 0.2
MIN_WAIT_S = 0.005


def message_weight(message: Any) -> int:
    """The expense ids a batch message carries (1 for anything else: a correction, a message whose
    payload is not a batch: those are dead-lettered by the actor, not here)."""
    try:
        ids = message.args[0]["expense_ids"]
    except (AttributeError, IndexError, KeyError, TypeError):
        return 1
    return max(1, len(ids)) if isinstance(ids, list) else 1


class Admission:
    """No limits: every message is admitted at once (the default, and for producers)."""

    def wait_s(self, queue_name: str, message: Any) -> float:
        """0 when ``message`` may be handed to the workers now (its weight is then taken from the
        limit); otherwise how long to wait before asking again."""
        return 0.0

    def close(self) -> None:
        """Release the limiter's connections."""


class FleetLimits(Admission):
    """The fleet-wide limits of ``per_s`` (queue -> units per second; queues not named are
    unlimited), kept in the Redis that ``connect()`` opens (lazily, on the first admission)."""

    def __init__(self, per_s: Mapping[str, int], *, connect: Callable[[], Any], prefix: str):
        self.per_s = {q: n for q, n in per_s.items() if n > 0}
        self._connect = connect
        self._prefix = prefix
        self._client: Any = None
        self._limiters: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._breaker = pybreaker.CircuitBreaker(fail_max=1, reset_timeout=OPEN_S)

    @classmethod
    def from_settings(cls, settings: Any) -> Admission:
        """The settings' limits, or ``Admission()`` when none is set."""
        per_s = {CATEGORIZE_BULK_QUEUE: settings.bulk_writes_per_s, LEARN_QUEUE: settings.learn_per_s}
        if not any(n > 0 for n in per_s.values()):
            return Admission()
        from pipeline.cache.client import open_client

        def connect() -> Any:
            return open_client(
                settings.cache_url,
                timeout_s=settings.cache_timeout_ms / 1000,
                keepalive_s=settings.tcp_keepalive_s,
                user_timeout_ms=settings.tcp_user_timeout_ms,
            )

        return cls(per_s, connect=connect, prefix=settings.cache_prefix)

    def key(self, queue_name: str) -> str:
        return f"{self._prefix}:limit:{queue_name}"

    def _limiter(self, queue_name: str, per_s: int) -> Any:
        from pyrate_limiter import GCRA, Duration, Limiter, Rate, RedisStateStore, StateBucket

        with self._lock:
            if self._client is None:
                self._client = self._connect()
            limiter = self._limiters.get(queue_name)
            if limiter is None:
                store = RedisStateStore(self._client, self.key(queue_name))
                bucket = StateBucket([Rate(per_s, Duration.SECOND)], GCRA(), store)
                limiter = self._limiters[queue_name] = Limiter(bucket)
            return limiter

    def wait_s(self, queue_name: str, message: Any) -> float:
        per_s = self.per_s.get(queue_name)
        if per_s is None:
            return 0.0
        from workers.metrics import RATE_LIMIT_ADMITTED, RATE_LIMIT_ERRORS, RATE_LIMIT_HELD

        weight = min(message_weight(message), per_s)
        try:
            admitted = self._breaker.call(self._try, queue_name, per_s, weight)
        except pybreaker.CircuitBreakerError:
            admitted = True  # the limiter's Redis failed a moment ago: unlimited until OPEN_S
        except Exception as exc:  # any failure of the limiter must not stop the fleet
            RATE_LIMIT_ERRORS.labels(queue_name=queue_name).inc()
            log.warning(
                "rate limit of queue %r not applied for %.0f s: its Redis failed: %s: %s",
                queue_name, OPEN_S, type(exc).__name__, exc,
            )  # fmt: skip
            admitted = True
        if admitted:
            RATE_LIMIT_ADMITTED.labels(queue_name=queue_name).inc(weight)
            return 0.0
        wait = min(MAX_WAIT_S, max(MIN_WAIT_S, weight / per_s / 2))
        RATE_LIMIT_HELD.labels(queue_name=queue_name).inc(wait)
        return wait

    def _try(self, queue_name: str, per_s: int, weight: int) -> bool:
        return bool(self._limiter(queue_name, per_s).try_acquire(queue_name, weight=weight, blocking=False))

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
            self._limiters.clear()
        if client is not None:
            client.close()
