"""L2 outages mid-run, on a real Redis Cluster and a real single Redis (one contract, two
backends): the breaker opens, every expense is still categorized, the results equal a healthy
run's, and after a restart the breaker closes and L2 fills again."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import pytest

from pipeline.cache import SharedTier
from pipeline.cache.breaker import CLOSED, OPEN
from pipeline.db import Database
from pipeline.settings import Settings
from tests.support import cache
from tests.support.cluster import LocalRedis, LocalRedisCluster, LocalRedisServers
from tests.support.services import WorkerProcess, wait_for
from workers.app import build_app
from workers.producer import Producer

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


def test_a_real_worker_uses_the_cluster_and_rides_out_its_outage(
    settings: Settings,
    redis_cluster: LocalRedisCluster,
    conn: psycopg.Connection[Any],
    cats: dict[str, int],
    ids: list[int],
    tmp_path: Path,
) -> None:
    worker_settings = msgspec.structs.replace(
        settings, cache_url=redis_cluster.url, breaker_fail_max=2, breaker_reset_seconds=1.0
    )
    worker = WorkerProcess(worker_settings, tmp_path / "worker.log")
    app = build_app(worker_settings)
    try:
        worker.wait_ready()
        producer = Producer(app.broker, batch_size=50)
        producer.enqueue(ids[:150])
        wait_for(lambda: len(cache.snapshot(conn)) == 150, what="first half categorized")
        assert redis_cluster.dbsize() > 0  # the worker back-filled L2 on the cluster
        redis_cluster.stop_all()
        producer.enqueue(ids[150:])
        wait_for(lambda: len(cache.snapshot(conn)) == len(ids), what="second half categorized")
        wait_for(lambda: "breaker_transition" in worker.log(), what="breaker log line")
    finally:
        app.broker.close()
        worker.stop()
    assert '"new_state":"open"' in worker.log().replace(" ", "")
