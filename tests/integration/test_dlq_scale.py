"""100,000 dead letters in Redis: every page, with any of the console's filters, and ``show`` cost
a bounded number of Redis commands (counted on the client), never ``KEYS``, never a whole XQ
hash or sorted set. Timings are not asserted here: they are measured separately (see the
README's Dead letters section)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from typing import Any
from uuid import uuid4

import msgspec
import psycopg
import pytest
import redis

from schemas import CATEGORIZE_QUEUE, LEARN_QUEUE
from workers.backends.redis import RedisDeadLetterStore, RedisFailureLog, RedisKeys
from workers.dlq import synthetic
from workers.dlq.base import DeadLetterFilter, PostgresAuditLog
from workers.failures import LazyDatabase
from workers.settings import Settings

LETTERS = 100_000
RUNS, ERRORS = synthetic.RUNS, synthetic.ERRORS  # 100 letters per correlation id, errors in turn
PAGE = 50
#: Commands one page may cost: the page's payloads (one HMGET per queue) and failure histories
#: (one LRANGE per letter) plus a fixed few (counts, ranges, the index's catch-up, validation).
MAX_COMMANDS = PAGE + 40
#: Commands that read a whole key or the whole keyspace.
FORBIDDEN = {"KEYS", "HGETALL", "HKEYS", "HVALS", "SMEMBERS", "ZRANGE"}


class CountingConnection(redis.Connection):
    """Counts every command it sends (also inside pipelines): name and arguments."""

    sent: list[tuple[Any, ...]] = []

    def pack_command(self, *args: Any) -> list[bytes | memoryview]:
        CountingConnection.sent.append(args)
        return super().pack_command(*args)


class Scale(msgspec.Struct):
    store: RedisDeadLetterStore
    mids: dict[int, str]
    indexing_s: float


@pytest.fixture(scope="module")
def scale(settings: Settings) -> Iterator[Scale]:
    namespace = f"cftest-scale-{uuid4().hex[:8]}"
    keys = RedisKeys(namespace)
    pool = redis.ConnectionPool.from_url(settings.broker_url, connection_class=CountingConnection)
    client = redis.Redis(connection_pool=pool)
    database = LazyDatabase(settings.database_url, size=2)
    store = RedisDeadLetterStore(
        client, keys, failures=RedisFailureLog(client, keys), audit=PostgresAuditLog(database)
    )
    try:
        mids = synthetic.fill(client, keys, LETTERS)  # as the fleet writes them, pipelined
        started = time.monotonic()
        store.catch_up([CATEGORIZE_QUEUE, LEARN_QUEUE])  # what the first filtered query does
        indexing_s = time.monotonic() - started
        print(f"\n{LETTERS} dead letters indexed in {indexing_s:.1f} s")
        yield Scale(store=store, mids=mids, indexing_s=indexing_s)
    finally:
        for batch in _chunks([k for k in client.scan_iter(keys.all_keys(), count=5_000)], 5_000):
            client.unlink(*batch)
        with psycopg.connect(settings.database_url, autocommit=True) as conn:
            conn.execute("DELETE FROM dead_letter_index WHERE space = %s", (namespace,))
            conn.execute("DELETE FROM dead_letter_index_marks WHERE space = %s", (namespace,))
        database.close()
        client.close()


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def counted(fn: Any) -> tuple[Any, Counter[str]]:
    CountingConnection.sent = []
    result = fn()
    sent = list(CountingConnection.sent)
    names = Counter(str(args[0]).upper() for args in sent)
    assert not FORBIDDEN & set(names), names
    for args in sent:
        name = str(args[0]).upper()
        if name in ("ZREVRANGEBYSCORE", "ZRANGEBYSCORE"):
            assert "LIMIT" in [str(a).upper() for a in args], args  # never a whole sorted set
        if name == "HMGET":
            assert len(args) - 2 <= PAGE + 1, len(args)  # only the page's payloads
    assert sum(names.values()) <= MAX_COMMANDS, names
    return result, names


FILTERS = {
    "none": DeadLetterFilter(),
    "queue": DeadLetterFilter(queue=LEARN_QUEUE),
    "age": DeadLetterFilter(older_than_s=86_400, newer_than_s=3 * 86_400),
    "actor": DeadLetterFilter(actor="categorize_batch"),
    "error_type": DeadLetterFilter(error_type="UnknownCategory"),
    "expense_id": DeadLetterFilter(expense_id=500_005),
    "correlation_id": DeadLetterFilter(correlation_id="run-7"),
    "combined": DeadLetterFilter(queue=CATEGORIZE_QUEUE, error_type="InvalidMessage", newer_than_s=86_400),
}


@pytest.mark.parametrize("name", list(FILTERS))
def test_a_page_costs_a_bounded_number_of_commands(scale: Scale, name: str) -> None:
    scale.store.queues()  # the queue list (one SCAN of the namespace) is reused for a few seconds
    page, _ = counted(lambda: scale.store.page(FILTERS[name], offset=10, limit=PAGE))
    expected = {
        "none": LETTERS,
        "queue": LETTERS // 10,
        "actor": LETTERS - LETTERS // 10,
        "error_type": LETTERS // 4,
        "expense_id": 1,
        "correlation_id": LETTERS // RUNS,
    }
    if name in expected:
        assert page.total == expected[name]
    if name == "expense_id":
        assert page.letters == []  # offset 10 of 1
        [letter] = scale.store.page(FILTERS[name]).letters
        assert letter.message_id == scale.mids[50_000] and 500_005 in (letter.expense_ids or [])
    else:
        assert len(page.letters) == PAGE
        times = [x.died_at_ms for x in page.letters]
        assert times == sorted(times, reverse=True)
        assert all(FILTERS[name].matches(x, int(time.time() * 1000)) for x in page.letters)


def test_the_first_page_is_the_newest_letters(scale: Scale) -> None:
    page, _ = counted(lambda: scale.store.page(DeadLetterFilter(), limit=3))
    assert [x.message_id for x in page.letters] == [scale.mids[LETTERS - n] for n in (1, 2, 3)]


def test_show_costs_a_bounded_number_of_commands(scale: Scale) -> None:
    mid = scale.mids[12_345]
    letter, names = counted(lambda: scale.store.show(mid))
    assert letter is not None and letter.message_id == mid and letter.history
    assert letter.expense_ids == synthetic.letter_of(12_345)[2]["ids"]
    assert sum(names.values()) <= 10, names
    missing, _ = counted(lambda: scale.store.show("no-such-id"))
    assert missing is None


def test_facets_cost_a_bounded_number_of_commands(scale: Scale) -> None:
    scale.store.queues()
    facets, names = counted(scale.store.facets)
    assert facets["queue"] == {CATEGORIZE_QUEUE: LETTERS - LETTERS // 10, LEARN_QUEUE: LETTERS // 10}
    assert facets["error_type"] == {e: LETTERS // len(ERRORS) for e in ERRORS}
    assert sum(facets["actor"].values()) == LETTERS
    assert sum(names.values()) <= 10, names
