"""L2 outages mid-run, on a real Redis Cluster and a real single Redis (one contract, two
backends): the breaker opens, every expense is still categorized, the results equal a healthy
run's, and after a restart the breaker closes and L2 fills again."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import msgspec
import psycopg
import pytest

from pipeline.cache import SharedTier
from pipeline.cache.breaker import CLOSED, OPEN
from pipeline.db import Database
from tests.support import cache, data
from tests.support.cluster import LocalRedis, LocalRedisCluster, LocalRedisServers
from tests.support.scrape import Scrape, answers, get_json, scrape
from tests.support.services import WorkerProcess, wait_for
from workers.app import build_app
from workers.producer import Producer
from workers.settings import Settings

pytestmark = pytest.mark.fault


@pytest.fixture
def db(settings: Settings) -> Iterator[Database]:
    database = Database.connect(settings.database_url, size=2)
    yield database
    database.close()


@pytest.fixture
def ids(conn: psycopg.Connection[Any], cats: dict[str, int]) -> list[int]:
    return cache.seed_mixed(conn, cats, n=300)


def run(db: Database, tier: SharedTier, ids: list[int], *, on_batch: Any = None) -> Counter[str]:
    """Categorize ``ids`` in batches of 50 (an L1 that holds nothing: every batch asks L2)."""
    totals: Counter[str] = Counter()
    categorizer = cache.categorizer(db, [cache.tiny_l1(), tier])
    for n, batch in enumerate(cache.batches(ids)):
        if on_batch is not None:
            on_batch(n)
        report = categorizer.categorize(batch)
        totals.update(report.cache)
        totals.update({f"out_{k}": v for k, v in report.outcomes.items()})
    return totals


class OutageContract:
    @pytest.fixture
    def server(self) -> LocalRedisServers:
        raise NotImplementedError

    @pytest.fixture
    def tier(self, server: LocalRedisServers, settings: Settings) -> Iterator[SharedTier]:
        t = cache.l2(settings, server.url, breaker_fail_max=2, breaker_reset_seconds=1.0)
        yield t
        t.close()

    @pytest.fixture
    def healthy(
        self, db: Database, tier: SharedTier, ids: list[int], conn: psycopg.Connection[Any], server: Any
    ) -> list[tuple[Any, ...]]:
        """A healthy run's decisions; then the rows are removed for the run under test."""
        totals = run(db, tier, ids)
        assert totals["l2_error"] == 0 and server.dbsize() > 0
        rows = cache.snapshot(conn)
        assert len(rows) == len(ids)
        conn.execute("DELETE FROM categorizations")
        return rows

    def check_outage(
        self,
        stop: Any,
        db: Database,
        tier: SharedTier,
        ids: list[int],
        conn: psycopg.Connection[Any],
        healthy: list[tuple[Any, ...]],
    ) -> None:
        calls_at_open: list[int] = []

        def on_batch(n: int) -> None:
            if n == 2:
                stop()
            if tier.breaker.state == OPEN and not calls_at_open:
                calls_at_open.append(tier.breaker.stats.calls)

        totals = run(db, tier, ids, on_batch=on_batch)
        assert tier.breaker.state == OPEN
        assert tier.breaker.stats.transitions["closed->open"] == 1
        assert calls_at_open and tier.breaker.stats.calls == calls_at_open[0]  # open: no L2 calls
        assert tier.breaker.stats.rejected > 0 and totals["l2_error"] > 0
        assert cache.snapshot(conn) == healthy  # every expense, the same decisions

    @pytest.mark.parametrize("outage", ["stop_one", "stop_all"], ids=["one node down", "whole cache down"])
    def test_outage_mid_run(
        self,
        outage: str,
        server: LocalRedisServers,
        db: Database,
        tier: SharedTier,
        ids: list[int],
        conn: psycopg.Connection[Any],
        healthy: list[tuple[Any, ...]],
    ) -> None:
        self.check_outage(getattr(server, outage), db, tier, ids, conn, healthy)

    def test_restart_closes_the_breaker_and_l2_fills_again(
        self,
        server: LocalRedisServers,
        db: Database,
        tier: SharedTier,
        ids: list[int],
        conn: psycopg.Connection[Any],
        healthy: list[tuple[Any, ...]],
    ) -> None:
        server.stop_all()
        run(db, tier, ids[:100])
        assert tier.breaker.state == OPEN
        server.start_all()  # comes back empty (no persistence)
        assert server.dbsize() == 0
        # after the reset timeout the next lookup probes, succeeds and closes the breaker
        wait_for(lambda: run(db, tier, ids[:50]) and tier.breaker.state == CLOSED, timeout=10, interval=0.2)
        run(db, tier, ids)
        assert server.dbsize() > 0  # back-filled from L3
        totals = run(db, tier, ids)  # a third pass: served by L2
        assert totals["l2_hit"] > 0 and totals["l2_miss"] == 0 and totals["l2_error"] == 0
        assert cache.snapshot(conn) == healthy
        assert tier.breaker.stats.transitions == {
            "closed->open": 1,
            "open->half-open": 1,
            "half-open->closed": 1,
        }


class TestRedisClusterOutage(OutageContract):
    @pytest.fixture
    def server(self, redis_cluster: LocalRedisCluster) -> LocalRedisServers:
        return redis_cluster


class TestSingleRedisOutage(OutageContract):
    @pytest.fixture
    def server(self, redis_single: LocalRedis) -> LocalRedisServers:
        return redis_single


def breaker_gauge(s: Scrape) -> dict[str, float | None]:
    return {
        state: s.value("catfleet_cache_breaker_state", state=state)
        for state in ("closed", "half_open", "open")
    }


def transitions(s: Scrape) -> dict[str, float]:
    return {
        state: s.value("catfleet_cache_breaker_transitions_total", state=state) or 0
        for state in ("closed", "half_open", "open")
    }


def test_a_real_worker_uses_the_cluster_and_rides_out_its_outage(
    settings: Settings,
    redis_cluster: LocalRedisCluster,
    conn: psycopg.Connection[Any],
    cats: dict[str, int],
    ids: list[int],
    tmp_path: Path,
) -> None:
    """The breaker as an operator sees it: /metrics and /readyz of the worker's host follow it
    open (degraded, still ready) while the cluster is down, and closed again after its restart."""
    worker_settings = msgspec.structs.replace(
        settings, cache_url=redis_cluster.url, breaker_fail_max=2, breaker_reset_seconds=1.0
    )
    port = worker_settings.metrics_port
    worker = WorkerProcess(worker_settings, tmp_path / "worker.log")
    app = build_app(worker_settings)
    try:
        worker.wait_ready()
        wait_for(lambda: answers(port), what="metrics server")
        producer = Producer(app.broker, batch_size=50)
        producer.enqueue(ids[:150])
        wait_for(lambda: len(cache.snapshot(conn)) == 150, what="first half categorized")
        assert redis_cluster.dbsize() > 0  # the worker back-filled L2 on the cluster
        assert breaker_gauge(scrape(port)) == {"closed": 1, "half_open": 0, "open": 0}
        code, body = get_json(port, "/readyz")
        assert (code, body["status"], body["cache_breaker"]) == (
            200,
            "ready",
            {"closed": 1, "half_open": 0, "open": 0},
        )
        redis_cluster.stop_all()
        producer.enqueue(ids[150:])
        wait_for(lambda: len(cache.snapshot(conn)) == len(ids), what="second half categorized")
        wait_for(lambda: "breaker_transition" in worker.log(), what="breaker log line")
        down = wait_for(
            lambda: (s := scrape(port)).value("catfleet_cache_breaker_state", state="open") == 1 and s,
            what="breaker open on /metrics",
        )
        assert breaker_gauge(down) == {"closed": 0, "half_open": 0, "open": 1}
        moved = transitions(down)
        assert moved["open"] >= 1 and moved["closed"] == 0
        assert (down.value("catfleet_cache_fallback_lookups_total") or 0) > 0
        # Degraded, not unready: the worker goes on (PostgreSQL answers every lookup).
        code, body = get_json(port, "/readyz")
        assert (code, body["status"], body["cache_breaker"]["open"]) == (200, "degraded", 1)
        assert body["broker"] == {"ok": True} and body["database"] == {"ok": True}
        redis_cluster.start_all()

        def closed_again() -> Scrape | None:
            # a merchant no tier has seen: L1 misses, so L2 is asked (the breaker's probe)
            producer.enqueue(data.add_expenses(conn, [f"RECOVERED {uuid4().hex[:12].upper()} LLC"]))
            s = scrape(port)
            # the gauge and the transition counter are two writes: wait for both
            closed = s.value("catfleet_cache_breaker_state", state="closed") == 1
            return s if closed and transitions(s)["closed"] >= 1 else None

        up = wait_for(closed_again, timeout=30, interval=0.5, what="breaker closed after the restart")
        assert breaker_gauge(up) == {"closed": 1, "half_open": 0, "open": 0}
        moved = transitions(up)
        assert moved["closed"] == 1 and moved["half_open"] >= 1 and moved["open"] >= 1
        code, body = get_json(port, "/readyz")
        assert (code, body["status"], body["cache_breaker"]) == (
            200,
            "ready",
            {"closed": 1, "half_open": 0, "open": 0},
        )
    finally:
        app.close()
        worker.stop()
    log = worker.log().replace(" ", "")
    assert '"new_state":"open"' in log and '"new_state":"closed"' in log
