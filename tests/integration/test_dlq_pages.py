"""Dead-letter pages at any depth, on the real brokers: RabbitMQ pages come from the dead-letter
index the consumer writes when it dead-letters (reconciled with each XQ's message count), never
from reading the XQ, and stay right after letters arrive, after replays and purges, and while a
replay holds the letters; a page after a cursor returns the rows offset paging did, ties and
filters included, on both brokers."""

from __future__ import annotations

import base64
import html
import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast
from uuid import uuid4

import dramatiq
import msgspec
import pika
import psycopg
import pytest
import redis

from tests.support.console import Console
from tests.support.services import run_catfleet, wait_for
from workers.backends import backend_for
from workers.backends.rabbitmq import RabbitmqDeadLetterStore
from workers.backends.redis import RedisKeys
from workers.dlq.base import DeadLetterFilter, DeadLetterStore, PostgresAuditLog
from workers.failures import FailureRecord, LazyDatabase
from workers.harness.processes import free_port
from workers.settings import Settings

RABBIT_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
ERRORS = ["InvalidMessage", "DatabaseConflict", "UnknownCategory"]


class Fleet:
    """One private queue on a real broker, its dead-letter store, and letters made as the
    workers make them: enqueued, consumed, nacked by the fleet's consumer, failure recorded."""

    def __init__(self, kind: str, settings: Settings):
        self.kind = kind
        self.queue = f"cftest_{uuid4().hex[:10]}"
        url = {"redis": settings.broker_url, "rabbitmq": RABBIT_URL, "memory": "memory://"}[kind]
        self.settings = msgspec.structs.replace(settings, broker_url=url)
        self.backend = backend_for(self.settings)
        self.broker = self.backend.build_broker([])
        self.broker.declare_queue(self.queue)
        self.database = LazyDatabase(settings.database_url, size=1)
        self.store: DeadLetterStore = self.backend.dead_letters(
            PostgresAuditLog(self.database), queues=[self.queue]
        )

    def kill(self, n: int, *, at_ms: list[int] | None = None, record_after: bool = False) -> list[str]:
        """``n`` dead letters (letter i: expense ids [i, 1000 + i], error ERRORS[i % 3], correlation
        id run-<i % 2>); their failures recorded before the nack (as a worker does), or after it
        (``record_after``), dead at ``at_ms[i]`` (default: now). Their message ids, in order."""
        messages = [
            dramatiq.Message(
                queue_name=self.queue, actor_name="categorize_batch",
                args=({"expense_ids": [i, 1000 + i], "correlation_id": f"run-{i % 2}"},), kwargs={}, options={},
            )
            for i in range(n)
        ]  # fmt: skip
        for m in messages:
            self.broker.enqueue(m)
        consumer = self.broker.consume(self.queue, prefetch=1, timeout=200)
        try:
            for i, m in enumerate(messages):
                got = cast(Any, wait_for(lambda: next(consumer), what="a message"))
                assert got.message_id == m.message_id
                if not record_after:
                    self.record(m.message_id, i, at_ms)
                consumer.nack(got)
                if record_after:
                    self.record(m.message_id, i, at_ms)
                time.sleep(0.002)
        finally:
            consumer.close()
        return [m.message_id for m in messages]

    def record(self, mid: str, i: int, at_ms: list[int] | None) -> None:
        self.backend.failures.record(
            FailureRecord(
                message_id=mid, queue_name=self.queue, actor_name="categorize_batch", retries=0,
                error_type=ERRORS[i % 3], error=f"error {i}", dead=True,
                at_ms=at_ms[i] if at_ms else int(time.time() * 1000),
            )
        )  # fmt: skip

    def xq_size(self) -> int:
        [stats] = self.backend.queue_stats([self.queue])
        return stats.dead

    def close(self) -> None:
        self.store.close()
        self.database.close()
        if self.kind == "rabbitmq":
            conn = pika.BlockingConnection(pika.URLParameters(RABBIT_URL))
            ch = conn.channel()
            for q in (self.queue, f"{self.queue}.DQ", f"{self.queue}.XQ"):
                ch.queue_delete(q)
            conn.close()
        self.backend.close()


@pytest.fixture
def rabbit(settings: Settings) -> Iterator[Fleet]:
    fleet = Fleet("rabbitmq", settings)
    yield fleet
    fleet.close()


@pytest.fixture(params=["memory", "redis", "rabbitmq"])
def fleet(request: pytest.FixtureRequest, settings: Settings) -> Iterator[Fleet]:
    f = Fleet(request.param, settings)
    yield f
    f.close()


def ids(page: Any) -> list[str]:
    return [x.message_id for x in page.letters]


def rabbit_store(fleet: Fleet) -> RabbitmqDeadLetterStore:
    assert isinstance(fleet.store, RabbitmqDeadLetterStore)
    return fleet.store


def test_rabbitmq_pages_come_from_the_index_the_consumer_writes(rabbit: Fleet, settings: Settings) -> None:
    mids = rabbit.kill(9)
    store = rabbit_store(rabbit)
    newest = mids[::-1]
    q = rabbit.queue

    def page(**kw: Any) -> tuple[list[str], int]:
        got = store.page(
            DeadLetterFilter(queue=q, **{k: v for k, v in kw.items() if k != "limit"}),
            limit=kw.get("limit", 50),
        )
        return ids(got), got.total

    assert page() == (newest, 9)
    assert page(limit=4) == (newest[:4], 9)
    assert page(error_type="UnknownCategory") == ([mids[8], mids[5], mids[2]], 3)
    assert page(expense_id=1004) == ([mids[4]], 1)
    assert page(correlation_id="run-1", error_type="DatabaseConflict") == ([mids[7], mids[1]], 2)
    assert page(actor="learn_from_correction") == ([], 0)
    [letter] = store.page(DeadLetterFilter(queue=q, expense_id=6)).letters
    assert (letter.expense_ids, letter.error_type, letter.error, letter.correlation_id) == (
        [6, 1006], "InvalidMessage", "error 6", "run-0",
    )  # fmt: skip
    assert letter.payload is not None and letter.payload["message_id"] == mids[6]
    shown = store.show(mids[3])
    assert shown is not None and [r.error for r in shown.history] == ["error 3"]
    facets = store.facets()
    assert facets["queue"] == {q: 9} and facets["error_type"] == {e: 3 for e in ERRORS}
    # answered from PostgreSQL: the XQ was never read whole, its letters never left it
    assert store.rebuilds == 0 and rabbit.xq_size() == 9
    assert [x.message_id for x in store.find(DeadLetterFilter(queue=q))] == newest  # the XQ agrees
    with psycopg.connect(settings.database_url) as conn:
        [(rows, with_bodies)] = conn.execute(
            "SELECT count(*), count(body) FROM dead_letter_index WHERE space = 'amqp:/' AND queue_name = %s",
            (q,),
        ).fetchall()
    assert rows == with_bodies == 9


def test_rabbitmq_rows_written_before_their_failure_record_are_completed(rabbit: Fleet) -> None:
    mids = rabbit.kill(3, record_after=True)
    store = rabbit_store(rabbit)
    got = store.page(DeadLetterFilter(queue=rabbit.queue, error_type="DatabaseConflict"))
    assert (ids(got), got.total) == ([mids[1]], 1)
    assert store.rebuilds == 0


def test_rabbitmq_pages_are_right_after_replay_and_purge(rabbit: Fleet) -> None:
    mids = rabbit.kill(9)
    store, q = rabbit_store(rabbit), rabbit.queue
    replayed = store.replay(DeadLetterFilter(queue=q, error_type="InvalidMessage"), operator="tester")
    assert set(replayed.message_ids) == {mids[0], mids[3], mids[6]}
    purged = store.purge(DeadLetterFilter(ids=(mids[8], mids[1])), operator="tester")
    assert purged.done == 2
    left = [mids[i] for i in (7, 5, 4, 2)]
    got = store.page(DeadLetterFilter(queue=q))
    assert (ids(got), got.total) == (left, 4)
    assert store.page(DeadLetterFilter(queue=q, error_type="InvalidMessage")).total == 0
    assert ids(store.page(DeadLetterFilter(queue=q, correlation_id="run-1"))) == [mids[7], mids[5]]
    assert store.show(mids[0]) is None and store.show(mids[7]) is not None
    assert store.facets()["queue"] == {q: 4}
    assert store.rebuilds == 0 and rabbit.xq_size() == 4


def test_rabbitmq_a_letter_no_worker_indexed_is_found_by_the_message_count(rabbit: Fleet) -> None:
    mids = rabbit.kill(2)
    store, q = rabbit_store(rabbit), rabbit.queue
    conn = pika.BlockingConnection(pika.URLParameters(RABBIT_URL))
    conn.channel().basic_publish("", f"{q}.XQ", b"{not a message")  # by hand: no row
    conn.close()
    wait_for(lambda: rabbit.xq_size() == 3, what="the letter in the XQ")
    got = store.page(DeadLetterFilter(queue=q))
    assert got.total == 3 and set(mids) <= set(ids(got))
    assert store.rebuilds == 1  # one whole read, then the index has it
    [raw] = [x for x in got.letters if x.payload is None]
    assert raw.raw == "{not a message" and raw.unreplayable
    assert store.page(DeadLetterFilter(queue=q)).total == 3 and store.rebuilds == 1
    assert store.purge(DeadLetterFilter(ids=(raw.message_id,))).done == 1
    assert store.page(DeadLetterFilter(queue=q)).total == 2 and store.rebuilds == 1


def test_rabbitmq_a_page_while_a_replay_holds_the_letters_keeps_the_index(rabbit: Fleet) -> None:
    mids = rabbit.kill(4)
    store, q = rabbit_store(rabbit), rabbit.queue
    other = rabbit.backend.dead_letters(PostgresAuditLog(rabbit.database), queues=[q])
    try:
        with other.session() as holding:  # as a replay does: every letter taken, unacked
            assert len(holding.letters) == 4
            wait_for(lambda: rabbit.xq_size() == 0, what="the letters taken")
            got = store.page(DeadLetterFilter(queue=q))
            assert (ids(got), got.total) == (mids[::-1], 4)  # the index answers; not rebuilt empty
            assert store.rebuilds == 0
        wait_for(lambda: rabbit.xq_size() == 4, what="the letters back")
        assert store.page(DeadLetterFilter(queue=q)).total == 4 and store.rebuilds == 0
    finally:
        other.close()


def walk(store: DeadLetterStore, flt: DeadLetterFilter, size: int) -> tuple[list[str], list[int]]:
    """Every page by cursor: the message ids in order and each page's total."""
    out, totals, after = [], [], None
    while True:
        page = store.page(flt, limit=size, after=after)
        out += ids(page)
        totals.append(page.total)
        if page.next_cursor is None:
            return out, totals
        assert len(page.letters) == size
        after = page.next_cursor


@pytest.mark.parametrize("flt", ["queue", "error_type", "correlation_id"])
def test_pages_after_a_cursor_are_the_rows_offset_paging_gave(fleet: Fleet, flt: str) -> None:
    n = 23
    now = int(time.time() * 1000)
    at_ms = [now - 60_000 + (i // 6) * 1000 for i in range(n)]  # sixes die in the same millisecond
    mids = fleet.kill(n, at_ms=at_ms)
    if fleet.kind == "redis":  # Dramatiq scores the XQ by its own clock: give ties there too
        client = redis.Redis.from_url(fleet.settings.broker_url)
        keys = RedisKeys(fleet.settings.broker_namespace)
        rids = {
            json.loads(raw)["message_id"]: rid
            for rid, raw in client.hgetall(keys.dead_messages(fleet.queue)).items()
        }
        client.zadd(keys.dead(fleet.queue), {rids[m]: at_ms[i] for i, m in enumerate(mids)})
        client.close()
    f = {
        "queue": DeadLetterFilter(queue=fleet.queue),
        "error_type": DeadLetterFilter(queue=fleet.queue, error_type="DatabaseConflict"),
        "correlation_id": DeadLetterFilter(queue=fleet.queue, correlation_id="run-0", newer_than_s=3600),
    }[flt]
    whole = fleet.store.page(f, limit=1000)
    expected = {"queue": n, "error_type": 8, "correlation_id": 12}[flt]
    assert whole.total == len(whole.letters) == expected and whole.next_cursor is None
    times = [x.died_at_ms for x in whole.letters]
    assert times == sorted(times, reverse=True) and len(set(times)) < len(times)  # with ties
    for size in (1, 2, 5):
        got, totals = walk(fleet.store, f, size)
        assert got == ids(whole) and set(totals) == {expected}
        by_offset = [
            m for o in range(0, expected, size) for m in ids(fleet.store.page(f, offset=o, limit=size))
        ]
        assert by_offset == got
    # a cursor and an offset together: the offset counts from the cursor
    first = fleet.store.page(f, limit=3)
    assert first.next_cursor is not None
    assert ids(fleet.store.page(f, limit=2, offset=1, after=first.next_cursor)) == ids(whole)[4:6]


def test_cli_list_after_a_cursor(settings: Settings) -> None:
    """Over the Redis store (the CLI's RabbitMQ store looks at the fleet's queue names)."""
    fleet = Fleet("redis", settings)
    try:
        _cli_list_after_a_cursor(fleet)
    finally:
        fleet.close()


def _cli_list_after_a_cursor(fleet: Fleet) -> None:
    mids = fleet.kill(5)
    first = run_catfleet(fleet.settings, "dlq", "list", "--queue", fleet.queue, "--limit", "2", "--json")
    doc = json.loads(first.stdout)
    assert [r["message_id"] for r in doc["letters"]] == mids[:2:-1] and doc["total"] == 5
    text = run_catfleet(
        fleet.settings, "dlq", "list", "--queue", fleet.queue, "--limit", "2", "--after", doc["next_cursor"]
    )
    assert text.returncode == 0, text.stderr
    assert [line.split()[0] for line in text.stdout.splitlines()[1:3]] == [mids[2], mids[1]]
    assert text.stdout.splitlines()[-1] == "2 of 5 dead letter(s), older than the cursor"
    assert text.stderr.startswith("next page: --after ")
    bad = run_catfleet(fleet.settings, "dlq", "list", "--after", "nonsense")
    assert bad.returncode == 2 and "not a page cursor" in bad.stderr


def test_console_pages_older_by_cursor(settings: Settings, tmp_path: Path) -> None:
    fleet = Fleet("redis", settings)
    own = msgspec.structs.replace(fleet.settings, console_users="ann:ann-pw:admin")
    console = Console(own, tmp_path / "console.log", free_port())
    try:
        mids = fleet.kill(5)[::-1]

        def get(path: str) -> tuple[int, str]:
            request = urllib.request.Request(console.url + path)
            request.add_header("Authorization", "Basic " + base64.b64encode(b"ann:ann-pw").decode())
            try:
                with urllib.request.urlopen(request, timeout=10) as r:
                    return r.status, r.read().decode()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read().decode()

        q = fleet.queue
        status, body = get(f"/api/dead-letters?queue={q}&limit=2")
        first = json.loads(body)
        assert status == 200 and [x["message_id"] for x in first["letters"]] == mids[:2]
        status, body = get(
            f"/api/dead-letters?queue={q}&limit=2&after={urllib.parse.quote(first['next_cursor'])}"
        )
        second = json.loads(body)
        assert [x["message_id"] for x in second["letters"]] == mids[2:4] and second["total"] == 5
        status, page = get(f"/dead-letters?queue={q}&limit=2")
        older = re.search(r'href="([^"]+)" id="older"', page)
        assert status == 200 and older is not None
        status, page = get(html.unescape(older.group(1)))
        assert status == 200 and [m for m in mids if m in page] == mids[2:4] and 'id="newest"' in page
        status, body = get(f"/api/dead-letters?queue={q}&after=nonsense")
        assert status == 400 and "not a page cursor" in body
    finally:
        console.stop()
        fleet.close()


def test_rabbitmq_bytes_the_consumer_cannot_take_are_indexed_as_it_dead_letters_them(
    settings: Settings,
) -> None:
    """A body Dramatiq cannot decode and one over the size limit: dead-lettered by the consumer
    itself, indexed by it too (no whole read of the XQ to find them)."""
    fleet = Fleet("rabbitmq", msgspec.structs.replace(settings, max_message_bytes=2_000))
    try:
        store, q = rabbit_store(fleet), fleet.queue
        big = dramatiq.Message(
            queue_name=q, actor_name="categorize_batch", args=({"expense_ids": list(range(1, 600))},),
            kwargs={}, options={},
        )  # fmt: skip
        fleet.broker.enqueue(big)  # declares the queue too
        conn = pika.BlockingConnection(pika.URLParameters(RABBIT_URL))
        conn.channel().basic_publish("", q, b"{not json")
        conn.close()
        consumer = fleet.broker.consume(q, prefetch=1, timeout=200)
        try:

            def both_dead() -> bool:
                assert next(consumer) is None  # it dead-letters what it cannot take, hands out nothing
                return fleet.xq_size() == 2

            wait_for(both_dead, what="both dead-lettered")
        finally:
            consumer.close()
        got = store.page(DeadLetterFilter(queue=q))
        assert got.total == 2 and store.rebuilds == 0
        by_payload = {x.payload is None: x for x in got.letters}
        assert by_payload[True].raw == "{not json"
        assert (
            by_payload[False].message_id == big.message_id
            and by_payload[False].error_type == "MessageTooLarge"
        )
    finally:
        fleet.close()
