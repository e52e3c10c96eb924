"""The console's service functions on every backend (memory, Redis, RabbitMQ): the numbers are the
CLI's (``collect_status``), pauses and records go through the fleet state, throughput buckets
give the rate and the chart, patterns filter and switch, dead letters page."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import msgspec
import psycopg
import pytest

from tests.support.rabbit import rabbit_vhost
from workers.console.service import Console, LiveFeed
from workers.dlq.base import DeadLetterFilter
from workers.fleet.state import BUCKET_S, BUCKETS, BusyThread, ProcessRecord, now_ms
from workers.settings import Settings
from workers.status import collect_status


@pytest.fixture(params=["memory", "redis", "rabbitmq"])
def console(request: pytest.FixtureRequest, settings: Settings, cats: dict[str, int]) -> Iterator[Console]:
    with ExitStack() as stack:
        url = {"memory": "memory://", "redis": settings.broker_url}.get(request.param)
        if url is None:
            url = stack.enter_context(rabbit_vhost())
        with psycopg.connect(settings.database_url, autocommit=True) as c:
            c.execute("TRUNCATE fleet_processes, queue_pauses, queue_actions, fleet_throughput")
        c_ = Console(msgspec.structs.replace(settings, broker_url=url, metrics_port=0))
        stack.callback(c_.close)
        assert c_.backend.kind == request.param
        c_.backend.flush()
        yield c_


def record(pid: int, *, busy: int = 0) -> ProcessRecord:
    at = now_ms()
    return ProcessRecord(
        id=f"h:{pid}:{at}",
        host="h",
        pid=pid,
        queues=["categorize", "learn"],
        threads=4,
        busy=[
            BusyThread(
                message_id=f"m{pid}-{i}",
                actor="categorize_batch",
                queue="categorize",
                expense_ids=500,
                since_ms=at,
            )
            for i in range(busy)
        ],
        ruleset_version=3,
        breaker="closed",
        paused=[],
        started_ms=at,
        beat_ms=at,
    )


def test_overview_is_what_status_prints_and_shows_records_pauses_and_throughput(console: Console) -> None:
    state = console.state
    state.publish(record(11, busy=2))
    state.publish(record(12))
    console.pause("learn", "ops@test")
    now = now_ms()
    # a full minute before the bucket in progress: 60 s of 30 messages per 10 s bucket
    for i in range(1, 7):
        state.add_processed({"categorize": 30}, now - i * BUCKET_S * 1000)
    state.add_processed({"categorize": 5, "learn": 1}, now)

    o = console.overview()
    # what `catfleet status --json` computes, on a backend of its own (the memory broker is one
    # process's: there, on the console's)
    own = console.backend if console.backend.kind == "memory" else None
    cli = collect_status(console.settings, None, backend=own)
    strip = ("oldest_age_s",)
    assert [{k: v for k, v in q.items() if k not in strip} for q in o.status.queues] == [
        {k: v for k, v in q.items() if k not in strip} for q in cli.queues
    ]
    assert o.status.processes == cli.processes and o.status.paused == cli.paused
    assert [p["pid"] for p in o.status.processes] == [11, 12]
    assert sum(len(p["busy"]) for p in o.status.processes) == 2
    assert o.status.paused["learn"]["operator"] == "ops@test"
    assert o.breakers == {"closed": 2}
    series = o.throughput["categorize"]
    assert len(series) == BUCKETS and series[-1] == 5 and sum(series) == 185
    assert o.rate["categorize"] == pytest.approx(180 / 60)
    assert o.throughput["learn"][-1] == 1

    assert console.resume("learn", "ops@test") is True
    assert console.resume("learn", "ops@test") is False  # already running: nothing audited
    assert [a.action for a in console.queue_actions()] == ["resume", "pause"]
    state.remove(record(12).id)


def test_live_feed_reads_once_per_refresh_whoever_asks(console: Console) -> None:
    feed = LiveFeed(console, refresh_s=30)
    first = feed.get()
    assert all(feed.get() is first for _ in range(20))
    assert feed.reads == 1


def test_patterns_filter_and_switch(console: Console, conn: psycopg.Connection[Any]) -> None:
    rows = console.pattern_page(kind="keyword")
    assert rows and all(r.kind == "keyword" for r in rows)
    target = rows[0]
    console.set_pattern(target.id, False)
    [off] = console.pattern_page(active=False)
    assert off.id == target.id and not off.active
    console.set_pattern(target.id, True)
    assert console.pattern_page(active=False) == []
    assert [r.id for r in console.pattern_page(search=target.value.upper())] == [target.id]
    assert len(console.pattern_page(limit=1)) == 1 and console.pattern_page(offset=10_000) == []


def test_dead_letters_page_on_an_empty_queue(console: Console) -> None:
    page = console.dead_letters(DeadLetterFilter(), limit=10_000)
    assert (page.total, page.letters, page.limit) == (0, [], 200)  # capped at MAX_PAGE
    assert console.dead_letter("nope") is None
    assert isinstance(console.dead_letter_audit(), list)  # the run shares its database
