"""Fleet-wide rate limits (``CATFLEET_BULK_WRITES_PER_S``, ``CATFLEET_LEARN_PER_S``) with real
workers on Redis and RabbitMQ, the limit's state in the cache Redis (a single one and a Redis
Cluster). What is checked is the limit itself, read from the rows' ``categorized_at``: no second
of the run holds more than the limit allows (its burst included), however fast the machine; the
interactive lane is not held back; a dead limiter Redis does not stop the fleet."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec
import psycopg
import pytest

from schemas import CATEGORIZE_BULK_QUEUE, LANE_BULK, LEARN_QUEUE
from tests.support import data
from tests.support.cluster import LocalRedisCluster
from tests.support.learning import fix
from tests.support.rabbit import rabbit_vhost
from tests.support.scrape import scrape
from tests.support.services import WorkerProcess, flush_namespace, wait_for
from workers.app import build_app
from workers.harness.processes import free_port
from workers.limits import Admission, FleetLimits, message_weight
from workers.producer import Producer
from workers.settings import Settings

LIMIT = 1_000  # expenses per second, fleet-wide
BATCH = 100
EXPENSES = 4_000  # 4 s at the limit, after its first second's burst


def most_in_one_second(stamps: list[datetime]) -> int:
    """The most rows any one-second window of the run holds."""
    ts = sorted(s.timestamp() for s in stamps)
    most, lo = 0, 0
    for hi, t in enumerate(ts):
        while t - ts[lo] >= 1.0:
            lo += 1
        most = max(most, hi - lo + 1)
    return most


@pytest.fixture(params=["redis", "rabbitmq"])
def limited(request: pytest.FixtureRequest, settings: Settings, cats: dict[str, int]) -> Iterator[Settings]:
    with ExitStack() as stack:
        own: dict[str, Any] = {
            "bulk_writes_per_s": LIMIT,
            "batch_size": BATCH,
            "cache_prefix": f"rl{uuid.uuid4().hex[:10]}",
            "metrics_port": free_port(),
        }
        if request.param == "rabbitmq":
            own["broker_url"] = stack.enter_context(rabbit_vhost())
        s = msgspec.structs.replace(settings, **own)
        flush_namespace(s)
        yield s


def test_the_bulk_lane_is_held_to_the_fleets_limit_and_interactive_is_not(
    limited: Settings, tmp_path: Path, conn: psycopg.Connection[Any]
) -> None:
    s = limited
    ids = data.bulk_expenses(conn, EXPENSES)
    urgent = data.add_expenses(conn, ["SQ *STARBUCKS"])
    worker = WorkerProcess(s, tmp_path / "w.log", processes=2, threads=2)  # two processes, one limit
    app = build_app(s)
    try:
        worker.wait_ready()
        Producer(app.broker, batch_size=BATCH).enqueue(ids, lane=LANE_BULK)
        wait_for(lambda: data.count_rows(conn) >= EXPENSES // 4, timeout=60, what="a quarter done")
        Producer(app.broker, batch_size=BATCH).enqueue(urgent)  # interactive: not limited
        wait_for(lambda: data.count_rows(conn) == EXPENSES + 1, timeout=120, what="every expense")
        metrics = scrape(s.metrics_port)
    finally:
        app.close()
        worker.stop()

    bulk = [
        r[0]
        for r in conn.execute("SELECT categorized_at FROM categorizations WHERE expense_id = ANY(%s)", (ids,))
    ]
    assert len(bulk) == EXPENSES
    # GCRA: a second's worth at once, then the rate; one batch of slack for the window's edges
    assert most_in_one_second(bulk) <= 2 * LIMIT + BATCH
    span = (max(bulk) - min(bulk)).total_seconds()
    assert span >= (EXPENSES - LIMIT - BATCH) / LIMIT - 0.5, span
    [[urgent_at]] = conn.execute("SELECT categorized_at FROM categorizations WHERE expense_id = %s", urgent)
    assert urgent_at < max(bulk), "the interactive expense waited for the limited backfill"
    assert metrics.total("catfleet_rate_limit_admitted_total", queue_name=CATEGORIZE_BULK_QUEUE) == EXPENSES
    assert metrics.total("catfleet_rate_limit_wait_seconds_total", queue_name=CATEGORIZE_BULK_QUEUE) > 0


def test_learning_is_held_to_its_limit(
    settings: Settings, tmp_path: Path, conn: psycopg.Connection[Any], cats: dict[str, int]
) -> None:
    per_s, corrections = 4, 16
    s = msgspec.structs.replace(settings, learn_per_s=per_s, cache_prefix=f"rl{uuid.uuid4().hex[:10]}")
    ids = data.add_expenses(conn, [f"CORNER BOUTIQUE {i}" for i in range(corrections)])
    app = build_app(s)
    worker = WorkerProcess(s, tmp_path / "w.log", processes=1, threads=4)
    try:
        worker.wait_ready()
        producer = Producer(app.broker, batch_size=BATCH)
        for expense_id in ids:
            producer.send_correction(fix(expense_id, "dining"))
        wait_for(lambda: learned(conn) == corrections, timeout=60, what="every correction learned")
    finally:
        app.close()
        worker.stop()
    stamps = [r[0] for r in conn.execute("SELECT created_at FROM corrections")]
    assert most_in_one_second(stamps) <= 2 * per_s + 1
    assert (max(stamps) - min(stamps)).total_seconds() >= (corrections - per_s - 1) / per_s - 0.5


def learned(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT count(*) FROM corrections").fetchone()
    return int(row[0]) if row else 0


def test_a_limiter_whose_redis_is_gone_admits_and_counts_it() -> None:
    def refuse() -> Any:
        raise ConnectionError("connection refused")

    limits = FleetLimits({CATEGORIZE_BULK_QUEUE: 10}, connect=refuse, prefix="x")
    batch = SimpleNamespace(args=({"expense_ids": list(range(50))},))
    assert limits.wait_s(CATEGORIZE_BULK_QUEUE, batch) == 0.0  # admitted: the fleet goes on
    assert limits.wait_s(CATEGORIZE_BULK_QUEUE, batch) == 0.0  # the breaker is open: not even tried
    assert limits.wait_s(LEARN_QUEUE, batch) == 0.0  # no limit on this queue


def test_message_weight_takes_any_shape() -> None:
    assert message_weight(SimpleNamespace(args=({"expense_ids": [1, 2, 3]},))) == 3
    for args in ((), ("nope",), ({"expense_ids": "nope"},), ({"expense_ids": []},), ({},), None):
        assert message_weight(SimpleNamespace(args=args)) == 1
    assert message_weight(object()) == 1


def test_no_limit_set_costs_nothing(settings: Settings) -> None:
    assert type(FleetLimits.from_settings(settings)) is Admission


def test_the_limit_is_shared_through_a_redis_cluster(redis_cluster: LocalRedisCluster) -> None:
    """Two processes' limiters on one Redis Cluster share one budget: at 100/s, two limiters asking
    for 50 at a time are admitted 100 at once (the burst), then 50 every half second."""
    s = msgspec.structs.replace(
        Settings(), cache_url=redis_cluster.url, cache_prefix=f"rl{uuid.uuid4().hex[:10]}"
    )
    one, two = (
        FleetLimits.from_settings(msgspec.structs.replace(s, bulk_writes_per_s=100)) for _ in range(2)
    )
    assert isinstance(one, FleetLimits) and isinstance(two, FleetLimits)
    batch = SimpleNamespace(args=({"expense_ids": list(range(50))},))
    try:
        admitted = [lim.wait_s(CATEGORIZE_BULK_QUEUE, batch) == 0.0 for _ in range(3) for lim in (one, two)]
        assert admitted.count(True) == 2, admitted
    finally:
        one.close()
        two.close()
