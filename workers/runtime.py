"""The per-process resources a worker needs, opened after the worker process boots (after the
fork) and closed when it shuts down."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol

import dramatiq
from dramatiq.middleware import Middleware

from pipeline import rules
from pipeline.cache import CacheBreaker, LocalTier, SharedTier
from pipeline.categorize import Categorizer
from pipeline.db import Database
from pipeline.learning import Learner
from pipeline.matcher import Thresholds
from pipeline.resolver import PatternResolver
from pipeline.stores import CandidateStore, CategorizationStore, ExpenseStore, PatternStore
from workers.settings import Settings

log = logging.getLogger(__name__)


class ActorRuntime(Protocol):
    """What the actors use of a worker process's resources."""

    categorizer: Categorizer
    learner: Learner

    def close(self) -> None: ...


class Runtime:
    """Database pools, caches and the categorizer of one worker process."""

    def __init__(self, settings: Settings, *, wait: bool = False):
        self.settings = settings
        self.db = Database.connect(
            settings.database_url,
            size=settings.pool_size,
            read_dsn=settings.database_read_url,
            wait=wait,
            keepalive_s=settings.tcp_keepalive_s,
            user_timeout_ms=settings.tcp_user_timeout_ms,
        )
        self.l1 = LocalTier(max_entries=settings.l1_max_entries, ttl_seconds=settings.l1_ttl_seconds)
        self.l2 = shared_tier(settings)
        self._observe_breaker()
        self.resolver = PatternResolver(PatternStore(self.db), [self.l1, self.l2])
        self.expenses = ExpenseStore(self.db)
        self.categorizer = Categorizer(
            expenses=self.expenses,
            resolver=self.resolver,
            writer=CategorizationStore(self.db),
            thresholds=Thresholds(auto=settings.auto_threshold, suggest=settings.suggest_threshold),
            candidates=CandidateStore(self.db),
        )
        self.learner = Learner(self.db)

    def _observe_breaker(self) -> None:
        from workers import metrics  # after boot: the multiprocess directory is set by then

        metrics.set_breaker_state("closed")
        self.l2.breaker.on_transition(lambda old, new: metrics.count_breaker_transition(new))
        rules.on_skipped_pattern(metrics.count_skipped_pattern)

    def close(self) -> None:
        self.l2.close()
        self.db.close()


def shared_tier(settings: Settings) -> SharedTier:
    """L2 on ``cache_url`` behind its circuit breaker (connects lazily, on the first lookup)."""
    breaker = CacheBreaker(
        name="l2", fail_max=settings.breaker_fail_max, reset_seconds=settings.breaker_reset_seconds
    )
    return SharedTier(
        url=settings.cache_url,
        prefix=settings.cache_prefix,
        ttl_seconds=settings.cache_ttl_seconds,
        timeout_s=settings.cache_timeout_ms / 1000,
        breaker=breaker,
        keepalive_s=settings.tcp_keepalive_s,
        user_timeout_ms=settings.tcp_user_timeout_ms,
    )


class RuntimeHolder(Middleware):
    """Opens the runtime in each worker process and hands it to the actors. ``open_runtime``:
    how (default: a ``Runtime`` on the settings' PostgreSQL and cache; tests pass in-memory ones)."""

    def __init__(self, settings: Settings, *, open_runtime: Callable[[], ActorRuntime] | None = None):
        self.settings = settings
        self._open: Callable[[], ActorRuntime] = open_runtime or (lambda: Runtime(settings))
        self._runtime: ActorRuntime | None = None
        self._lock = threading.Lock()
        #: The ruleset version of this process's last categorized batch (None: none yet).
        self.ruleset_version: int | None = None

    @property
    def runtime(self) -> ActorRuntime:
        runtime = self._runtime
        if runtime is None:
            with self._lock:  # first use in this process: open it once
                if self._runtime is None:
                    self._runtime = self._open()
                runtime = self._runtime
        return runtime

    def describe(self) -> tuple[int | None, str | None]:
        """This process's ruleset version and L2 cache breaker state (for its fleet record)."""
        l2 = getattr(self._runtime, "l2", None)
        breaker = getattr(l2, "breaker", None)
        return self.ruleset_version, (breaker.state if breaker is not None else None)

    def after_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        self.runtime  # noqa: B018 - open the pools now, not on the first message

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        if self._runtime is not None:
            self._runtime.close()
            self._runtime = None
