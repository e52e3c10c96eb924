"""catfleet's own Prometheus metrics: every domain metric object is defined here, in one place.

Per-actor metrics (latency, counts, errors, retries, dead letters) come from Dramatiq's own
``Prometheus`` middleware and are not repeated here. Queue depths are read from the broker at
scrape time (``workers.collector``). Everything lands on the one endpoint per host served by
``workers.exposition``.

Multiprocess rule: ``prometheus_client`` must be imported *after* ``PROMETHEUS_MULTIPROC_DIR``
is set, or the values stay in process memory and never reach the endpoint. ``catfleet worker``
sets it before it execs Dramatiq, and ``workers.boot`` sets it for a bare ``dramatiq`` run.

To add a metric: define it below with a bounded label set, list it in the README's metrics
table, and record it through a small function here so callers never touch label names.
Helpers elsewhere use:

- ``record_batch(report, actor_name=..., latency_s=...)``: the batch actor, once per batch;
- ``set_breaker_state(state)`` / ``count_breaker_transition(new_state)``, or
  ``BreakerMetricsListener()`` handed to ``pybreaker.CircuitBreaker(listeners=[...])``;
- ``count_skipped_pattern``: registered with ``pipeline.rules.on_skipped_pattern`` by the runtime;
- ``count_fallback_lookups(n)``: lookups sent to PostgreSQL because L2 was unavailable
  (``record_batch`` already counts the ``<tier>_error`` keys of a batch's cache stats);
- ``workers.queues.record_dead_letter_action(...)`` (called by ``catfleet dlq``) for replays and purges (stored in the
  broker's Redis so the count does not depend on which host ran the command);
- ``zero_series()``: the metrics server (``workers.exposition``) calls it once at start, so every
  labelled counter has all its known series at 0 from the first scrape on (a dashboard or an
  alert sees 0, not "No data", before the first error, retry or breaker transition).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pybreaker
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from pipeline.rules import SkippedPattern
from schemas import (
    CATEGORIZE_ACTOR,
    CATEGORIZE_BULK_ACTOR,
    CATEGORIZE_BULK_QUEUE,
    CATEGORIZE_QUEUE,
    LEARN_ACTOR,
    LEARN_QUEUE,
    PatternKind,
)

#: The registry of the metrics below (read directly only in single-process use, e.g. tests;
#: in a worker the values go to the multiprocess directory and the endpoint reads them there).
REGISTRY = CollectorRegistry(auto_describe=True)

#: The ``actor_name`` label values; any other name is labelled UNKNOWN_LABEL.
ACTORS = (CATEGORIZE_ACTOR, CATEGORIZE_BULK_ACTOR, LEARN_ACTOR)
UNKNOWN_LABEL = "unknown"
OUTCOMES = ("categorized", "suggested", "uncategorized", "missing", "user_kept")
CACHE_TIERS = ("l1", "l2", "l3")
CACHE_RESULTS = ("hit", "miss", "error")
BREAKER_STATES = ("closed", "half_open", "open")
CONFLICT_REASONS = ("user_owned", "unchanged")
#: The ``kind`` label of ``catfleet_patterns_skipped_total``: the kinds the rule set compiles
#: (merchant patterns are looked up, not compiled; token votes are not stored patterns).
PATTERN_KINDS = tuple(k.value for k in PatternKind if k not in (PatternKind.MERCHANT, PatternKind.TOKEN))
#: (queue, actor) of every fleet actor: the ``queue_name`` / ``actor_name`` pairs of Dramatiq's
#: per-actor metrics (its retries are enqueued on the delay queue, ``<queue>.DQ``, and counted there).
FLEET_ACTORS = (
    (CATEGORIZE_QUEUE, CATEGORIZE_ACTOR),
    (CATEGORIZE_BULK_QUEUE, CATEGORIZE_BULK_ACTOR),
    (LEARN_QUEUE, LEARN_ACTOR),
)

WORKER_PROCESSES = Gauge(
    "catfleet_worker_processes",
    "Live Dramatiq worker processes on this host (set at process boot, removed at shutdown).",
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
BATCH_SIZE = Histogram(
    "catfleet_batch_size",
    "Expense IDs per processed batch message.",
    ["actor_name"],
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000),
    registry=REGISTRY,
)
EXPENSES = Counter(
    "catfleet_expenses",
    "Expenses processed, by outcome (categorized, suggested, uncategorized, missing, user_kept).",
    ["outcome"],
    registry=REGISTRY,
)
ROWS_WRITTEN = Counter(
    "catfleet_categorizations_written",
    "Categorization rows inserted or changed by the upsert.",
    registry=REGISTRY,
)
WRITE_CONFLICTS = Counter(
    "catfleet_write_conflicts",
    "Rows not written: user_owned (the user chose the category) or unchanged (same result again).",
    ["reason"],
    registry=REGISTRY,
)
END_TO_END = Histogram(
    "catfleet_end_to_end_seconds",
    "From the message's enqueue (its timestamp) to the batch's commit, per batch.",
    buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
    registry=REGISTRY,
)
CACHE_LOOKUPS = Counter(
    "catfleet_cache_lookups",
    "Merchant-pattern lookups by cache tier (l1 in-process, l2 Redis Cluster, l3 PostgreSQL) and result.",
    ["tier", "result"],
    registry=REGISTRY,
)
FALLBACK_LOOKUPS = Counter(
    "catfleet_cache_fallback_lookups",
    "Lookups sent straight to PostgreSQL because the L2 cache was unavailable (breaker open or error).",
    registry=REGISTRY,
)
PATTERNS_SKIPPED = Counter(
    "catfleet_patterns_skipped",
    "Stored patterns a worker process could not compile into its rule set (e.g. a regex RE2 rejects,"
    " inserted around the save-time check), by kind; counted once per ruleset version and process.",
    ["kind"],
    registry=REGISTRY,
)
RATE_LIMIT_ADMITTED = Counter(
    "catfleet_rate_limit_admitted",
    "Units taken from a fleet-wide rate limit (expense ids of the bulk lane, corrections), by queue.",
    ["queue_name"],
    registry=REGISTRY,
)
RATE_LIMIT_HELD = Counter(
    "catfleet_rate_limit_wait_seconds",
    "Time consumers held fetched messages back for a fleet-wide rate limit, by queue.",
    ["queue_name"],
    registry=REGISTRY,
)
RATE_LIMIT_ERRORS = Counter(
    "catfleet_rate_limit_errors",
    "Times a rate limit's Redis failed: the queue's messages were admitted unlimited for a few seconds.",
    ["queue_name"],
    registry=REGISTRY,
)
BREAKER_STATE = Gauge(
    "catfleet_cache_breaker_state",
    "Worker processes whose L2 cache breaker is in this state (closed, half_open, open).",
    ["state"],
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
BREAKER_TRANSITIONS = Counter(
    "catfleet_cache_breaker_transitions",
    "L2 cache breaker state changes, by the state entered.",
    ["state"],
    registry=REGISTRY,
)


def _tier_result(key: str) -> tuple[str, str] | None:
    tier, _, result = key.partition("_")
    if tier in CACHE_TIERS and result in CACHE_RESULTS:
        return tier, result
    return None


def actor_label(actor_name: str) -> str:
    """The fleet's actor names as they are; anything else one fixed value (bounded labels)."""
    return actor_name if actor_name in ACTORS else UNKNOWN_LABEL


def record_batch(report: Any, *, actor_name: str, latency_s: float | None) -> None:
    """Count one ``pipeline.categorize.BatchReport`` (duck-typed: keeps this module Dramatiq-free)."""
    BATCH_SIZE.labels(actor_label(actor_name)).observe(report.requested)
    for outcome, n in report.outcomes.items():
        if outcome in OUTCOMES and n:
            EXPENSES.labels(outcome).inc(n)
    if report.written:
        ROWS_WRITTEN.inc(report.written)
    user_kept = report.outcomes.get("user_kept", 0)
    if user_kept:
        WRITE_CONFLICTS.labels("user_owned").inc(user_kept)
    if report.unchanged:
        WRITE_CONFLICTS.labels("unchanged").inc(report.unchanged)
    record_cache_stats(report.cache)
    if latency_s is not None:
        END_TO_END.observe(max(latency_s, 0.0))


def record_cache_stats(stats: Mapping[str, int]) -> None:
    """Count ``{'<tier>_<hit|miss|error>': n}``; a tier's errors are lookups that fell back."""
    for key, n in stats.items():
        parsed = _tier_result(key)
        if parsed is None or not n:
            continue  # unknown keys are ignored: label values stay bounded
        CACHE_LOOKUPS.labels(*parsed).inc(n)
        if parsed[1] == "error" and parsed[0] != "l3":
            FALLBACK_LOOKUPS.inc(n)


def count_fallback_lookups(n: int = 1) -> None:
    FALLBACK_LOOKUPS.inc(n)


def count_skipped_pattern(skipped: SkippedPattern, version: int) -> None:
    """A ``pipeline.rules.on_skipped_pattern`` hook."""
    PATTERNS_SKIPPED.labels(skipped.pattern.kind.value).inc()


def set_breaker_state(state: str) -> None:
    """This process's breaker is now in ``state`` (closed, half_open or open)."""
    state = state.replace("-", "_")
    if state not in BREAKER_STATES:
        raise ValueError(f"unknown breaker state {state!r}")
    for s in BREAKER_STATES:
        BREAKER_STATE.labels(s).set(1 if s == state else 0)


def count_breaker_transition(new_state: str) -> None:
    set_breaker_state(new_state)
    BREAKER_TRANSITIONS.labels(new_state.replace("-", "_")).inc()


class BreakerMetricsListener(pybreaker.CircuitBreakerListener):
    """Hand to ``pybreaker.CircuitBreaker(listeners=[...])``: state and transitions, recorded."""

    def state_change(self, cb: pybreaker.CircuitBreaker, old_state: Any, new_state: Any) -> None:
        count_breaker_transition(str(new_state.name))


def _dramatiq_counters() -> dict[str, Counter]:
    """Dramatiq's per-actor counters as its ``Prometheus`` middleware defines them in each worker
    process (same names, help and labels), in a private registry: in multiprocess mode a series
    is a name and its labels in the host's directory, whichever process wrote it."""
    registry = CollectorRegistry()
    labels = ["queue_name", "actor_name"]
    helps = {
        "dramatiq_messages_total": "The total number of messages processed.",
        "dramatiq_message_errors_total": "The total number of errored messages.",
        "dramatiq_message_retries_total": "The total number of retried messages.",
        "dramatiq_message_rejects_total": "The total number of dead-lettered messages.",
    }
    return {name: Counter(name, text, labels, registry=registry) for name, text in helps.items()}


def zero_series() -> None:
    """Create every known series of every labelled counter, at 0 (``.labels(...)`` makes the
    child): catfleet's (outcomes, write conflicts, cache tiers and results, pattern kinds,
    breaker states) and Dramatiq's per-actor counters for the fleet's (queue, actor) pairs
    (retries on the delay queue). Only these bounded sets: the ``unknown`` label value and
    made-up names appear only if something is counted under them. Idempotent."""
    for outcome in OUTCOMES:
        EXPENSES.labels(outcome)
    for reason in CONFLICT_REASONS:
        WRITE_CONFLICTS.labels(reason)
    for tier in CACHE_TIERS:
        for result in CACHE_RESULTS:
            CACHE_LOOKUPS.labels(tier, result)
    for kind in PATTERN_KINDS:
        PATTERNS_SKIPPED.labels(kind)
    for state in BREAKER_STATES:
        BREAKER_TRANSITIONS.labels(state)
    BATCH_SIZE.labels(CATEGORIZE_ACTOR)  # the one batch actor: its histogram's buckets at 0
    dramatiq = _dramatiq_counters()
    for queue, actor in FLEET_ACTORS:
        for name, counter in dramatiq.items():
            counter.labels(f"{queue}.DQ" if name == "dramatiq_message_retries_total" else queue, actor)
