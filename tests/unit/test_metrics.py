"""Domain metrics and readiness logic, in one process (no multiprocess directory)."""

from __future__ import annotations

import pytest
from prometheus_client.core import GaugeMetricFamily

from pipeline.categorize import BatchReport
from workers import metrics
from workers.backends.memory import MemoryBackend
from workers.health import Check, breaker_states
from workers.settings import Settings


def value(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_batch_report_is_counted_with_bounded_labels() -> None:
    before = {
        "cat": value("catfleet_expenses_total", outcome="categorized"),
        "kept": value("catfleet_write_conflicts_total", reason="user_owned"),
        "same": value("catfleet_write_conflicts_total", reason="unchanged"),
        "l2err": value("catfleet_cache_lookups_total", tier="l2", result="error"),
        "fallback": value("catfleet_cache_fallback_lookups_total"),
        "written": value("catfleet_categorizations_written_total"),
        "e2e": value("catfleet_end_to_end_seconds_count"),
    }
    report = BatchReport(
        requested=10,
        outcomes={"categorized": 5, "user_kept": 2, "missing": 1, "bogus": 99},
        written=4,
        unchanged=1,
        ruleset_version=3,
        cache={"l1_hit": 3, "l2_error": 4, "l3_hit": 4, "weird_key": 7, "l9_hit": 1},
        categories={},
        duration_ms=1.0,
    )
    metrics.record_batch(report, actor_name="categorize_batch", latency_s=0.5)
    assert value("catfleet_expenses_total", outcome="categorized") == before["cat"] + 5
    assert value("catfleet_expenses_total", outcome="bogus") == 0  # unknown outcome: not a label
    assert value("catfleet_write_conflicts_total", reason="user_owned") == before["kept"] + 2
    assert value("catfleet_write_conflicts_total", reason="unchanged") == before["same"] + 1
    assert value("catfleet_cache_lookups_total", tier="l2", result="error") == before["l2err"] + 4
    assert value("catfleet_cache_fallback_lookups_total") == before["fallback"] + 4
    assert value("catfleet_categorizations_written_total") == before["written"] + 4
    assert value("catfleet_end_to_end_seconds_count") == before["e2e"] + 1
    assert value("catfleet_cache_lookups_total", tier="l9", result="hit") == 0


def test_breaker_state_and_transitions() -> None:
    before = value("catfleet_cache_breaker_transitions_total", state="half_open")
    metrics.count_breaker_transition("half-open")  # pybreaker's spelling
    assert value("catfleet_cache_breaker_state", state="half_open") == 1
    assert value("catfleet_cache_breaker_state", state="open") == 0
    assert value("catfleet_cache_breaker_transitions_total", state="half_open") == before + 1
    metrics.set_breaker_state("closed")
    assert value("catfleet_cache_breaker_state", state="closed") == 1
    with pytest.raises(ValueError):
        metrics.set_breaker_state("melted")


def test_breaker_states_sums_processes_per_state() -> None:
    family = GaugeMetricFamily("catfleet_cache_breaker_state", "", labels=["state"])
    family.add_metric(["open"], 1)
    family.add_metric(["closed"], 2)
    family.add_metric(["open"], 1)
    other = GaugeMetricFamily("catfleet_queue_messages", "", labels=["queue"])
    other.add_metric(["categorize"], 5)
    assert breaker_states([family, other]) == {"open": 2, "closed": 2}


def test_an_open_breaker_degrades_and_a_dead_database_makes_unready(monkeypatch: pytest.MonkeyPatch) -> None:
    from workers import health

    family = GaugeMetricFamily("catfleet_cache_breaker_state", "", labels=["state"])
    family.add_metric(["open"], 1)
    backend = MemoryBackend(Settings(broker_url="memory://"))
    monkeypatch.setattr(health, "check_database", lambda settings: Check(ok=True))
    assert health.readiness(Settings(), backend, [family]).status == "degraded"
    assert health.readiness(Settings(), backend, []).status == "ready"
    monkeypatch.setattr(health, "check_database", lambda settings: Check(ok=False, error="down"))
    r = health.readiness(Settings(), backend, [family])
    assert (r.status, r.ready) == ("unready", False)


def test_every_known_counter_series_exists_at_zero_before_any_event() -> None:
    """What the metrics server does at start: every bounded label combination of every labelled
    counter is a series from the first scrape (0, not "No data"); nothing for unknown values."""
    metrics.zero_series()
    metrics.zero_series()  # idempotent
    expected = [
        *[("catfleet_expenses_total", {"outcome": o}) for o in metrics.OUTCOMES],
        *[("catfleet_write_conflicts_total", {"reason": r}) for r in metrics.CONFLICT_REASONS],
        *[
            ("catfleet_cache_lookups_total", {"tier": t, "result": r})
            for t in metrics.CACHE_TIERS
            for r in metrics.CACHE_RESULTS
        ],
        *[("catfleet_patterns_skipped_total", {"kind": k}) for k in metrics.PATTERN_KINDS],
        *[("catfleet_cache_breaker_transitions_total", {"state": s}) for s in metrics.BREAKER_STATES],
        ("catfleet_batch_size_count", {"actor_name": "categorize_batch"}),
    ]
    missing = [(n, labels) for n, labels in expected if metrics.REGISTRY.get_sample_value(n, labels) is None]
    assert missing == []
    assert set(metrics.PATTERN_KINDS) == {"keyword", "description", "regex", "amount_range", "time"}
    assert metrics.REGISTRY.get_sample_value("catfleet_expenses_total", {"outcome": "unknown"}) is None
    assert metrics.REGISTRY.get_sample_value("catfleet_batch_size_count", {"actor_name": "unknown"}) is None


def test_readiness_names_the_failing_dependency_and_error_class_only(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """/readyz is unauthenticated: no host, port or DSN in its body; the process log has them."""
    import msgspec

    from workers import health

    detail = 'connection to server at "10.1.2.3", port 6543 failed: FATAL: database "secretdb" does not exist'
    monkeypatch.setattr(health, "check_database", lambda settings: Check.failed(OSError(detail)))
    backend = MemoryBackend(Settings(broker_url="memory://"))
    monkeypatch.setattr(
        backend, "check", lambda: Check.failed(ConnectionError("Error 111 connecting to 10.9.9.9:6380."))
    )
    with caplog.at_level("WARNING", logger="workers.health"):
        r = health.readiness(Settings(), backend, [])
    body = msgspec.json.encode(r).decode()
    assert (r.status, r.failing) == ("unready", ["broker", "database"])
    assert r.database == Check(ok=False, error="OSError")
    assert r.broker == Check(ok=False, error="ConnectionError")
    for secret in ("10.1.2.3", "6543", "secretdb", "10.9.9.9", "6380"):
        assert secret not in body
    assert "6543" in caplog.text and "10.9.9.9:6380" in caplog.text
