"""One contract suite for the broker backends' dead-letter stores and queue statistics, run
against the in-memory backend and the real Redis and RabbitMQ brokers.

Dead letters are made the way Dramatiq makes them: enqueue, consume, nack."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any, cast
from uuid import uuid4

import dramatiq
import msgspec
import pika
import psycopg
import pytest
import redis
from dramatiq.brokers.rabbitmq import DEAD_MESSAGE_TTL

from schemas import CATEGORIZE_QUEUE
from tests.support.rabbit import rabbit_vhost
from tests.support.services import run_catfleet, wait_for
from workers.backends import backend_for
from workers.backends.base import QueueStats
from workers.backends.memory import MemoryBroker
from workers.backends.redis import RedisDeadLetterStore, RedisKeys
from workers.dlq.base import AUDIT_EVERY_S, DeadLetterFilter, PostgresAuditLog
from workers.failures import FailureRecord, LazyDatabase
from workers.harness.processes import ROOT, settings_env
from workers.settings import Settings

RABBIT_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
KINDS = ["memory", "redis", "rabbitmq"]


class Backend:
    """A broker backend with one private queue, and its dead-letter store in front of it (audited
    in the test database). With RabbitMQ the queue name is private on the shared vhost; a fleet
    queue name is private only on a vhost of the test's own (``rabbit_url``)."""

    def __init__(self, kind: str, settings: Settings, *, rabbit_url: str = RABBIT_URL, queue: str = ""):
        self.kind = kind
        self.queue = queue or f"cftest_{uuid4().hex[:10]}"
        self.rabbit_url = rabbit_url
        url = {"memory": "memory://", "redis": settings.broker_url, "rabbitmq": rabbit_url}[kind]
        self.settings = msgspec.structs.replace(settings, broker_url=url)
        self.backend = backend_for(self.settings)
        assert self.backend.kind == kind
        self.broker = self.backend.build_broker([])
        self.database = LazyDatabase(settings.database_url, size=1)
        self.store = self.backend.dead_letters(PostgresAuditLog(self.database), queues=[self.queue])
        self.broker.declare_queue(self.queue)
        self.failures = self.backend.failures

    def stats(self) -> QueueStats:
        [found] = self.backend.queue_stats([self.queue])
        assert found.queue == self.queue
        return found

    def replayed_count(self) -> int:
        """Replays counted for the metrics (kept in the broker's Redis; the others keep none)."""
        return self.stats().replayed

    def message(
        self, ids: list[int], actor: str = "categorize_batch", *, correlation_id: str | None = None
    ) -> dramatiq.Message[Any]:
        payload: dict[str, Any] = {"expense_ids": ids}
        if correlation_id is not None:
            payload["correlation_id"] = correlation_id
        return dramatiq.Message(
            queue_name=self.queue, actor_name=actor, args=(payload,), kwargs={}, options={}
        )

    def kill(
        self,
        message: dramatiq.Message[Any],
        error: str = "boom",
        *,
        record: bool = True,
        error_type: str = "DatabaseConflict",
    ) -> None:
        """Enqueue, fetch and nack: the message is now a dead letter; its failure is logged."""
        self.broker.enqueue(message)
        consumer = self.broker.consume(self.queue, prefetch=1, timeout=200)
        try:
            got = cast(Any, wait_for(lambda: next(consumer), what="the message"))
            assert got.message_id == message.message_id
            consumer.nack(got)
        finally:
            consumer.close()
        if record:
            self.failures.record(
                FailureRecord(
                    message_id=message.message_id,
                    queue_name=self.queue,
                    actor_name=message.actor_name,
                    retries=2,
                    error_type=error_type,
                    error=error,
                    dead=True,
                    at_ms=int(time.time() * 1000),
                )
            )

    def take(self) -> list[dramatiq.Message[Any]]:
        """Every message now in the live queue (consumed and acked)."""
        consumer = self.broker.consume(self.queue, prefetch=100, timeout=100)
        out = []
        try:
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline:
                got = next(consumer)
                if got is not None:
                    consumer.ack(got)
                    out.append(got._message)
        finally:
            consumer.close()
        return out

    def close(self) -> None:
        self.store.close()
        self.database.close()
        if self.kind == "rabbitmq":
            conn = pika.BlockingConnection(pika.URLParameters(self.rabbit_url))
            ch = conn.channel()
            for q in (self.queue, f"{self.queue}.DQ", f"{self.queue}.XQ"):
                ch.queue_delete(q)
            conn.close()
        self.backend.close()


@pytest.fixture(params=KINDS)
def backend(request: pytest.FixtureRequest, settings: Settings) -> Iterator[Backend]:
    b = Backend(request.param, settings)
    yield b
    b.close()


def audit_rows(settings: Settings, since_id: int = 0) -> list[tuple[Any, ...]]:
    with psycopg.connect(settings.database_url) as conn:
        return conn.execute(
            "SELECT id, broker, action, filter, dry_run, count, message_ids FROM dead_letter_actions"
            " WHERE id > %s ORDER BY id",
            (since_id,),
        ).fetchall()


def last_audit_id(settings: Settings) -> int:
    with psycopg.connect(settings.database_url) as conn:
        return conn.execute("SELECT coalesce(max(id), 0) FROM dead_letter_actions").fetchone()[0]  # type: ignore[index]


def test_list_is_newest_first_with_the_final_error(backend: Backend) -> None:
    first, second = backend.message([1, 2, 3]), backend.message([4])
    backend.kill(first, "first failure")
    time.sleep(0.01)
    backend.kill(second, "second failure")
    letters = backend.store.find(DeadLetterFilter(queue=backend.queue))
    assert [x.message_id for x in letters] == [second.message_id, first.message_id]
    newest = letters[0]
    assert (newest.actor_name, newest.expense_ids, newest.error_type, newest.error) == (
        "categorize_batch",
        [4],
        "DatabaseConflict",
        "second failure",
    )
    assert abs(newest.died_at_ms - time.time() * 1000) < 60_000
    assert (letters[1].expense_ids, letters[1].expense_count) == ([1, 2, 3], 3)


def test_filters_by_actor_error_and_age(backend: Backend) -> None:
    a = backend.message([1], actor="categorize_batch")
    b = backend.message([2], actor="learn_from_correction")
    backend.kill(a, "deadlock detected")
    backend.kill(b, "unknown category 'x'")
    q = backend.queue
    assert [
        x.message_id for x in backend.store.find(DeadLetterFilter(queue=q, actor="learn_from_correction"))
    ] == [b.message_id]
    assert [x.message_id for x in backend.store.find(DeadLetterFilter(queue=q, error="DEADLOCK"))] == [
        a.message_id
    ]
    assert backend.store.find(DeadLetterFilter(queue=q, older_than_s=3600)) == []
    assert len(backend.store.find(DeadLetterFilter(queue=q, newer_than_s=3600))) == 2
    assert backend.store.find(DeadLetterFilter(queue="no-such-queue")) == []


def test_show_has_the_whole_message_and_its_history(backend: Backend) -> None:
    m = backend.message([7, 8])
    backend.kill(m, "the end")
    letter = backend.store.show(m.message_id)
    assert letter is not None and letter.payload is not None
    assert letter.payload["args"] == [{"expense_ids": [7, 8]}]
    assert [(r.error, r.dead) for r in letter.history] == [("the end", True)]
    assert backend.store.show("no-such-id") is None


def test_replay_by_id_resets_retries_keeps_ids_and_is_audited(backend: Backend, settings: Settings) -> None:
    keep, back = backend.message([1]), backend.message([2])
    backend.kill(keep)
    backend.kill(back.copy(options={"retries": 3, "traceback": "Traceback ...", "max_retries": 4}))
    since = last_audit_id(settings)
    before = backend.replayed_count()

    report = backend.store.replay(DeadLetterFilter(ids=(back.message_id,)), operator="tester")

    assert (report.matched, report.done, report.message_ids) == (1, 1, [back.message_id])
    [again] = backend.take()
    assert again.message_id == back.message_id and again.message_timestamp == back.message_timestamp
    assert again.queue_name == backend.queue and again.args == back.args
    assert "retries" not in again.options and "traceback" not in again.options and "eta" not in again.options
    assert again.options["max_retries"] == 4
    assert [x.message_id for x in backend.store.find(DeadLetterFilter(queue=backend.queue))] == [
        keep.message_id
    ]
    [row] = audit_rows(settings, since)
    assert row[1:3] == (backend.store.broker, "replay") and row[4:] == (False, 1, [back.message_id])
    assert row[3]["ids"] == [back.message_id]
    assert backend.replayed_count() == before + (1 if backend.kind == "redis" else 0)
    assert backend.stats().dead == 1


def test_replay_dry_run_limit_and_rate(backend: Backend) -> None:
    msgs = [backend.message([i]) for i in range(1, 5)]
    for m in msgs:
        backend.kill(m)
    flt = DeadLetterFilter(queue=backend.queue)
    dry = backend.store.replay(flt, dry_run=True)
    assert (dry.matched, dry.done, len(dry.message_ids)) == (4, 0, 4)
    assert len(backend.store.find(flt)) == 4 and backend.take() == []

    report = backend.store.replay(flt, limit=3, rate=1000)
    assert report.done == 3
    assert set(report.message_ids) == {m.message_id for m in msgs[1:]}  # the newest three
    assert {m.message_id for m in backend.take()} == set(report.message_ids)
    assert [x.message_id for x in backend.store.find(flt)] == [msgs[0].message_id]


def test_purge_by_filter_is_audited(backend: Backend, settings: Settings) -> None:
    a, b = backend.message([1]), backend.message([2])
    backend.kill(a, "bad data")
    backend.kill(b, "other")
    since = last_audit_id(settings)
    report = backend.store.purge(DeadLetterFilter(queue=backend.queue, error="bad data"), operator="tester")
    assert (report.done, report.message_ids) == (1, [a.message_id])
    assert [x.message_id for x in backend.store.find(DeadLetterFilter(queue=backend.queue))] == [b.message_id]
    assert backend.take() == []
    [row] = audit_rows(settings, since)
    assert row[2] == "purge" and row[5] == 1


def test_undecodable_dead_letter_is_listed_and_purgeable_not_replayable(backend: Backend) -> None:
    if backend.kind == "redis":
        client = redis.Redis.from_url(backend.settings.broker_url)
        keys = RedisKeys(backend.settings.broker_namespace)
        client.zadd(keys.dead(backend.queue), {"rid-bad": time.time() * 1000})
        client.hset(keys.dead_messages(backend.queue), "rid-bad", b"{not json")
        client.close()
    elif backend.kind == "memory":
        assert isinstance(backend.broker, MemoryBroker)
        backend.broker.add_dead_letter(backend.queue, b"{not json")
    else:
        conn = pika.BlockingConnection(pika.URLParameters(backend.rabbit_url))
        channel = conn.channel()
        channel.queue_declare(
            f"{backend.queue}.XQ", durable=True, arguments={"x-message-ttl": DEAD_MESSAGE_TTL}
        )
        channel.basic_publish("", f"{backend.queue}.XQ", b"{not json")
        conn.close()
    flt = DeadLetterFilter(queue=backend.queue)
    [letter] = wait_for(lambda: backend.store.find(flt), what="the raw dead letter")
    assert letter.payload is None
    report = backend.store.replay(flt)
    assert report.done == 0 and list(report.skipped.values()) == ["not a readable message: purge it instead"]
    assert backend.store.purge(flt).done == 1
    assert backend.store.find(flt) == []


@pytest.fixture
def redis_backend(settings: Settings) -> Iterator[Backend]:
    b = Backend("redis", settings)
    yield b
    b.close()


def test_cli_list_show_replay_purge_json(redis_backend: Backend) -> None:
    """The CLI over the Redis store (the RabbitMQ store looks at the fleet's fixed queue names)."""
    backend = redis_backend

    a, b = backend.message([5, 6]), backend.message([9])
    backend.kill(a, "cli error a")
    backend.kill(b, "cli error b")
    env = settings_env(backend.settings)
    q = backend.queue

    def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "workers", "dlq", *args],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            input=stdin,
        )

    out = run("list", "--queue", q, "--json")
    assert out.returncode == 0, out.stderr
    listed = json.loads(out.stdout)
    rows = listed["letters"]
    assert [r["message_id"] for r in rows] == [b.message_id, a.message_id] and listed["total"] == 2
    assert rows[1]["expense_ids"] == [5, 6] and rows[1]["error"] == "cli error a"
    shown = json.loads(run("show", a.message_id, "--json").stdout)
    assert (
        shown["payload"]["args"] == [{"expense_ids": [5, 6]}]
        and shown["history"][0]["error"] == "cli error a"
    )
    assert run("replay").returncode != 0  # neither ids, filter nor --all
    dry = json.loads(run("replay", "--queue", q, "--dry-run", "--json").stdout)
    assert dry["matched"] == 2 and dry["done"] == 0
    replayed = json.loads(run("replay", a.message_id, "--json").stdout)
    assert replayed["message_ids"] == [a.message_id]
    refused = run("purge", "--queue", q, stdin="n\n")
    assert refused.returncode == 1 and "nothing purged" in refused.stdout
    purged = json.loads(run("purge", "--queue", q, "--yes", "--json").stdout)
    assert purged["message_ids"] == [b.message_id]
    assert backend.store.find(DeadLetterFilter(queue=q)) == []
    # its XQ is gone with its last letter: not a fleet queue, no dead-letter queue
    gone = run("list", "--queue", q)
    assert gone.returncode == 2 and gone.stdout == "" and "no queue" in gone.stderr


def test_the_dead_letter_gauge_counts_them_on_every_broker(backend: Backend) -> None:
    """``catfleet_queue_dead_letters`` is read from ``queue_stats`` at scrape time: the Redis XQ's
    size, the RabbitMQ XQ's message count (a passive-equivalent declare), the memory list."""
    msgs = [backend.message([i]) for i in (1, 2, 3)]
    for m in msgs:
        backend.kill(m)

    def dead() -> int:
        return backend.stats().dead

    wait_for(lambda: dead() == 3, what="three dead letters counted")
    backend.store.purge(DeadLetterFilter(ids=(msgs[0].message_id,)))
    wait_for(lambda: dead() == 2, what="two after a purge")


@pytest.mark.parametrize("kind", ["redis", "rabbitmq"])
def test_a_replay_killed_halfway_leaves_its_audit_entry_up_to_date(kind: str, settings: Settings) -> None:
    """``catfleet dlq replay`` paced at 10/s, killed (SIGKILL) once its audit entry has grown:
    the entry names only messages that really moved, at most one update behind; the rerun's
    entry has the rest; every message is back in its queue."""
    n, rate = 20, 10
    with ExitStack() as stack:
        if kind == "rabbitmq":  # the CLI's RabbitMQ store looks at the fleet's queue names
            url = stack.enter_context(rabbit_vhost())
            backend = Backend(kind, settings, rabbit_url=url, queue=CATEGORIZE_QUEUE)
        else:
            backend = Backend(kind, settings)
        stack.callback(backend.close)
        msgs = [backend.message([i]) for i in range(1, n + 1)]
        for m in msgs:
            backend.kill(m)
        everything = {m.message_id for m in msgs}
        flt = DeadLetterFilter(queue=backend.queue)
        since = last_audit_id(settings)
        env = settings_env(backend.settings)
        argv = [sys.executable, "-m", "workers", "dlq", "replay", "--queue", backend.queue]
        first = subprocess.Popen([*argv, "--rate", str(rate)], env=env, cwd=ROOT, stdout=subprocess.PIPE)
        wait_for(lambda: [r for r in audit_rows(settings, since) if r[5] > 0], timeout=30, what="entry grown")
        first.kill()
        first.communicate()

        def stats() -> tuple[int, int]:
            found = backend.stats()
            return found.ready, found.dead

        # RabbitMQ hands the killed session's unacked dead letters back to the XQ on its own time
        wait_for(lambda: sum(stats()) >= n, what="every message in the queue or the XQ")
        left = {x.message_id for x in backend.store.find(flt)}
        moved = everything - left
        [entry] = audit_rows(settings, since)
        _, broker, action, _, dry_run, count, ids = entry
        assert (broker, action, dry_run) == (backend.store.broker, "replay", False)
        assert count == len(ids) and set(ids) <= moved, (count, ids, moved)
        assert 0 < count <= len(moved) < n  # killed halfway, after its entry had grown
        assert len(moved) - count <= rate * AUDIT_EVERY_S + 1  # at most one update behind

        out = subprocess.run([*argv, "--json"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert set(json.loads(out.stdout)["message_ids"]) == left
        [_, rerun] = audit_rows(settings, since)
        assert rerun[5] == len(left) and set(rerun[6]) == left
        back = [m.message_id for m in backend.take()]
        assert set(back) == everything  # nothing lost
        # Redis moves each one atomically; RabbitMQ may duplicate the one published, not yet acked
        assert len(back) == n if kind == "redis" else n <= len(back) <= n + 1
        print(f"\n{kind}: replay killed after {len(moved)}/{n} moves, its audit entry had {count}")


# --- The service the console calls (page, facets, the new filters) and the CLI's answers ---


def fill(backend: Backend) -> dict[str, dramatiq.Message[Any]]:
    """Five letters of two actors, three error types, two correlation ids, overlapping batches."""
    made = {
        "a": backend.message([1, 2, 3], correlation_id="run-1"),
        "b": backend.message([3, 4], correlation_id="run-1"),
        "c": backend.message([5], actor="learn_from_correction", correlation_id="run-2"),
        "d": backend.message([6, 7]),
        "e": backend.message([3, 8], correlation_id="run-2"),
    }
    kinds = {"a": "DatabaseConflict", "b": "InvalidMessage", "c": "UnknownCategory", "d": "InvalidMessage"}
    for name, m in made.items():
        backend.kill(m, f"error of {name}", error_type=kinds.get(name, "DatabaseConflict"))
        time.sleep(0.005)  # distinct times of death: newest first is e, d, c, b, a
    return made


def ids_of(letters: list[Any]) -> list[str]:
    return [x.message_id for x in letters]


def test_page_filters_by_error_type_expense_id_correlation_id_and_counts(backend: Backend) -> None:
    m = fill(backend)
    q, store = backend.queue, backend.store

    def page(offset: int = 0, limit: int = 50, **kw: Any) -> tuple[list[str], int]:
        got = store.page(DeadLetterFilter(queue=q, **kw), offset=offset, limit=limit)
        assert (got.offset, got.limit) == (offset, limit)
        return ids_of(got.letters), got.total

    everything = [m[k].message_id for k in "edcba"]
    assert page() == (everything, 5)
    assert page(offset=1, limit=2) == (everything[1:3], 5)
    assert page(offset=9) == ([], 5)
    assert page(error_type="InvalidMessage") == ([m["d"].message_id, m["b"].message_id], 2)
    assert page(error_type="Invalid") == ([], 0)  # exact, not a substring
    assert page(expense_id=3) == ([m["e"].message_id, m["b"].message_id, m["a"].message_id], 3)
    assert page(expense_id=3, limit=1, offset=1) == ([m["b"].message_id], 3)
    assert page(correlation_id="run-2") == ([m["e"].message_id, m["c"].message_id], 2)
    assert page(correlation_id="run-1", expense_id=4) == ([m["b"].message_id], 1)
    assert page(actor="learn_from_correction") == ([m["c"].message_id], 1)
    assert page(error="ERROR OF D") == ([m["d"].message_id], 1)
    assert page(older_than_s=3600) == ([], 0)
    assert page(newer_than_s=3600, error_type="DatabaseConflict") == (
        [m["e"].message_id, m["a"].message_id],
        2,
    )
    assert page(expense_id=999) == ([], 0)
    [first] = store.page(DeadLetterFilter(queue=q, expense_id=8)).letters
    assert (first.expense_ids, first.expense_count, first.correlation_id) == ([3, 8], 2, "run-2")
    assert first.error == "error of e"


def test_facets_count_queues_actors_and_error_types(backend: Backend) -> None:
    fill(backend)
    facets = backend.store.facets()
    assert facets["queue"][backend.queue] == 5
    assert facets["actor"]["categorize_batch"] >= 4 and facets["actor"]["learn_from_correction"] >= 1
    assert facets["error_type"]["InvalidMessage"] >= 2 and facets["error_type"]["UnknownCategory"] >= 1


def test_replay_and_purge_take_the_new_filters(backend: Backend) -> None:
    m = fill(backend)
    q, store = backend.queue, backend.store
    dry = store.replay(DeadLetterFilter(queue=q, expense_id=3), dry_run=True)
    assert set(dry.message_ids) == {m[k].message_id for k in "abe"}
    report = store.replay(DeadLetterFilter(queue=q, correlation_id="run-2"), operator="tester")
    assert set(report.message_ids) == {m["c"].message_id, m["e"].message_id}
    assert {x.message_id for x in backend.take()} == set(report.message_ids)
    purged = store.purge(DeadLetterFilter(queue=q, error_type="InvalidMessage"), operator="tester")
    assert set(purged.message_ids) == {m["b"].message_id, m["d"].message_id}
    assert ids_of(store.find(DeadLetterFilter(queue=q))) == [m["a"].message_id]
    # what left the dead-letter queue is not found by any filter any more
    assert store.page(DeadLetterFilter(queue=q, expense_id=3)).total == 1
    assert store.page(DeadLetterFilter(queue=q, correlation_id="run-2")).total == 0


def test_unknown_ids_are_reported_and_the_known_ones_done(backend: Backend) -> None:
    keep = backend.message([1])
    backend.kill(keep)
    report = backend.store.purge(DeadLetterFilter(ids=(keep.message_id, "no-such-id")), operator="tester")
    assert (report.done, report.message_ids, report.unknown) == (1, [keep.message_id], ["no-such-id"])
    dry = backend.store.replay(DeadLetterFilter(ids=("nope-1", "nope-2")), dry_run=True)
    assert (dry.matched, dry.unknown) == (0, ["nope-1", "nope-2"])


def test_the_audit_records_limit_and_rate_and_show_tells_the_replay(
    backend: Backend, settings: Settings
) -> None:
    m = backend.message([4, 2])
    backend.kill(m, "first death")
    since = last_audit_id(settings)
    report = backend.store.replay(DeadLetterFilter(ids=(m.message_id,)), limit=5, rate=100, operator="tester")
    assert report.done == 1
    [again] = backend.take()
    with psycopg.connect(settings.database_url) as conn:
        row = conn.execute(
            "SELECT limit_n, rate FROM dead_letter_actions WHERE id > %s ORDER BY id", (since,)
        ).fetchone()
    assert row == (5, 100.0)
    [entry] = [e for e in backend.store.audit.trail(limit=10) if e.id > since]
    assert (entry.action, entry.operator, entry.limit, entry.rate, entry.count) == (
        "replay",
        "tester",
        5,
        100.0,
        1,
    )
    assert entry.message_ids == [m.message_id] and entry.filter == {"ids": [m.message_id]}
    backend.kill(again, "second death")  # replayed, then dead again
    letter = backend.store.show(m.message_id)
    assert letter is not None and letter.error == "second death"
    assert [(e.id, e.action, e.operator) for e in letter.actions] == [(entry.id, "replay", "tester")]


def test_show_of_an_undecodable_letter_has_its_raw_body(backend: Backend) -> None:
    body = b'{"not": "a message"'
    if backend.kind == "redis":
        client = redis.Redis.from_url(backend.settings.broker_url)
        keys = RedisKeys(backend.settings.broker_namespace)
        client.zadd(keys.dead(backend.queue), {"rid-raw": time.time() * 1000})
        client.hset(keys.dead_messages(backend.queue), "rid-raw", body)
        client.close()
    elif backend.kind == "memory":
        assert isinstance(backend.broker, MemoryBroker)
        backend.broker.add_dead_letter(backend.queue, body)
    else:
        conn = pika.BlockingConnection(pika.URLParameters(backend.rabbit_url))
        channel = conn.channel()
        channel.queue_declare(
            f"{backend.queue}.XQ", durable=True, arguments={"x-message-ttl": DEAD_MESSAGE_TTL}
        )
        channel.basic_publish("", f"{backend.queue}.XQ", body)
        conn.close()
    flt = DeadLetterFilter(queue=backend.queue)
    [listed] = wait_for(lambda: backend.store.find(flt), what="the raw dead letter")
    shown = backend.store.show(listed.message_id)
    assert shown is not None and shown.payload is None and shown.raw == body.decode()
    assert shown.expense_ids is None and shown.unreplayable


def test_redis_index_rows_of_letters_gone_behind_its_back_are_skipped_and_pruned(settings: Settings) -> None:
    backend = Backend("redis", settings)
    try:
        a, b = backend.message([11]), backend.message([11])
        backend.kill(a)
        backend.kill(b)
        store = backend.store
        flt = DeadLetterFilter(queue=backend.queue, expense_id=11)
        assert isinstance(store, RedisDeadLetterStore)
        assert store.page(flt).total == 2  # both indexed now
        client = redis.Redis.from_url(backend.settings.broker_url)
        keys = RedisKeys(backend.settings.broker_namespace)
        [rid_a] = [
            rid
            for rid, raw in client.hgetall(keys.dead_messages(backend.queue)).items()
            if json.loads(raw)["message_id"] == a.message_id
        ]
        client.zrem(keys.dead(backend.queue), rid_a)  # removed behind the store's back
        client.hdel(keys.dead_messages(backend.queue), rid_a)
        client.close()
        got = store.page(flt)
        assert ids_of(got.letters) == [b.message_id]
        assert store.page(flt).total == 1  # the stale row was deleted when the page met it
        with psycopg.connect(settings.database_url) as conn:
            left = conn.execute(
                "SELECT message_id FROM dead_letter_index WHERE space = %s AND queue_name = %s",
                (store.keys.namespace, backend.queue),
            ).fetchall()
        assert left == [(b.message_id,)]
    finally:
        backend.close()


def test_redis_index_follows_a_letter_that_dies_again_with_another_error(settings: Settings) -> None:
    backend = Backend("redis", settings)
    try:
        m = backend.message([21])
        backend.kill(m, error_type="DatabaseConflict")
        store, q = backend.store, backend.queue
        assert store.page(DeadLetterFilter(queue=q, error_type="DatabaseConflict")).total == 1
        # replayed by someone else (no index row removed), then dead with another error
        client = redis.Redis.from_url(backend.settings.broker_url)
        keys = RedisKeys(backend.settings.broker_namespace)
        [rid] = cast("list[bytes]", client.zrange(keys.dead(q), 0, -1))
        client.zadd(keys.dead(q), {rid: time.time() * 1000 + 5})
        client.close()
        backend.failures.record(
            FailureRecord(
                message_id=m.message_id,
                queue_name=q,
                actor_name=m.actor_name,
                retries=0,
                error_type="InvalidMessage",
                error="bad",
                dead=True,
                at_ms=int(time.time() * 1000) + 5,
            )
        )
        assert ids_of(store.page(DeadLetterFilter(queue=q, error_type="InvalidMessage")).letters) == [
            m.message_id
        ]
        assert store.page(DeadLetterFilter(queue=q, error_type="DatabaseConflict")).total == 0
    finally:
        backend.close()


def test_redis_index_rows_expire_with_the_dead_message_ttl(settings: Settings) -> None:
    backend = Backend("redis", settings)
    try:
        m = backend.message([31])
        backend.kill(m)
        store = backend.store
        assert isinstance(store, RedisDeadLetterStore)
        assert store.page(DeadLetterFilter(queue=backend.queue, expense_id=31)).total == 1
        store.dead_message_ttl_ms = 1  # Dramatiq's maintenance would drop the XQ entry too
        time.sleep(0.01)
        store.catch_up([backend.queue])
        with psycopg.connect(settings.database_url) as conn:
            left = conn.execute(
                "SELECT count(*) FROM dead_letter_index WHERE space = %s AND queue_name = %s",
                (store.keys.namespace, backend.queue),
            ).fetchone()
        assert left == (0,)
    finally:
        backend.close()


def test_cli_answers_pages_unknowns_and_the_audit(redis_backend: Backend, settings: Settings) -> None:
    backend, q = redis_backend, redis_backend.queue
    big = backend.message(list(range(1, 31)), correlation_id="run-cli")
    backend.kill(big, "big batch", error_type="InvalidMessage")
    for i in range(55):
        backend.kill(backend.message([1000 + i]), f"small {i}")
    client = redis.Redis.from_url(backend.settings.broker_url)
    keys = RedisKeys(backend.settings.broker_namespace)
    client.zadd(keys.dead(q), {"rid-raw": time.time() * 1000})
    client.hset(keys.dead_messages(q), "rid-raw", b"\x00raw bytes, not json")
    client.close()

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return run_catfleet(backend.settings, "dlq", *args)

    default = run("list", "--queue", q)
    assert default.returncode == 0, default.stderr
    lines = default.stdout.splitlines()
    assert len(lines) == 1 + 50 + 1  # header, the default 50, the count
    assert lines[-1] == "50 of 57 dead letter(s), newest first; 7 more: --limit 57 or --all"
    assert (
        run("list", "--queue", q, "--limit", "2").stdout.splitlines()[-1].startswith("2 of 57 dead letter(s)")
    )
    assert run("list", "--queue", q, "--all").stdout.splitlines()[-1] == "57 dead letter(s)"
    by_expense = json.loads(run("list", "--queue", q, "--expense-id", "7", "--json").stdout)
    assert [r["message_id"] for r in by_expense["letters"]] == [big.message_id] and by_expense["total"] == 1
    by_type = json.loads(run("list", "--queue", q, "--error-type", "InvalidMessage", "--json").stdout)
    by_run = json.loads(run("list", "--correlation-id", "run-cli", "--json").stdout)
    assert by_type["total"] == by_run["total"] == 1

    shown = run("show", big.message_id)
    assert "expense ids 30: 1, 2, 3," in shown.stdout and "20, ... (10 more)" in shown.stdout
    assert "correlation run-cli" in shown.stdout
    raw = run("show", "rid-raw")
    assert raw.returncode == 0 and "raw bytes, not json" in raw.stdout and "not a readable" in raw.stdout

    replayed = run("replay", big.message_id, "no-such-id", "--rate", "50", "--limit", "5")
    assert replayed.returncode == 1 and "replayed 1 of 1" in replayed.stdout
    assert replayed.stderr.strip() == "catfleet dlq replay: no dead letter with message id no-such-id"
    purged = run("purge", "no-such-id", "--yes")
    assert purged.returncode == 1 and "no-such-id" in purged.stderr
    for argv in (["list"], ["replay", "--dry-run"], ["purge", "--yes"]):
        wrong = run(*argv, "--queue", "nosuch")
        assert wrong.returncode == 2 and wrong.stdout == "", wrong
        assert wrong.stderr.count("\n") == 1 and "no queue 'nosuch'" in wrong.stderr
    gone = run("show", big.message_id)  # replayed, not a dead letter now: where it went
    assert gone.returncode == 1 and "replayed at" in gone.stderr and "audit entry" in gone.stderr

    [again] = [m for m in backend.take() if m.message_id == big.message_id]
    backend.kill(again, "dead again")
    history = run("show", big.message_id).stdout.split("message:")[0]
    assert "replayed by tester" not in history and "replayed by " in history and "dead again" in history
    entries = json.loads(run("audit", "--json").stdout)
    mine = [e for e in entries if big.message_id in e["message_ids"]]
    assert [(e["action"], e["limit"], e["rate"], e["count"]) for e in mine] == [("replay", 5, 50.0, 1)]
    text = run("audit", "--limit", "3").stdout.splitlines()
    assert text[0].split()[:5] == ["id", "at", "(UTC)", "operator", "action"] and len(text) <= 5


def test_cli_on_rabbitmq_prints_no_driver_logs(settings: Settings) -> None:
    with rabbit_vhost() as url:
        backend = Backend("rabbitmq", settings, rabbit_url=url, queue=CATEGORIZE_QUEUE)
        try:
            m = backend.message([3, 4])
            backend.kill(m, "rabbit error")
            env = msgspec.structs.replace(backend.settings, log_level="DEBUG")
            listed = run_catfleet(env, "dlq", "list")
            assert listed.returncode == 0 and listed.stderr == "", listed.stderr
            assert m.message_id in listed.stdout
            shown = run_catfleet(env, "dlq", "show", m.message_id)
            assert shown.returncode == 0 and shown.stderr == "" and "expense ids 2: 3, 4" in shown.stdout
            missing = run_catfleet(env, "dlq", "show", "no-such-id")
            assert missing.returncode == 1 and missing.stderr.count("\n") == 1
        finally:
            backend.close()


@pytest.mark.parametrize(
    "argv", [["audit"], ["show", "some-id"], ["list", "--actor", "x"], ["replay", "--all"]]
)
def test_cli_without_postgresql_answers_in_one_line(settings: Settings, argv: list[str]) -> None:
    """The audit trail (and with Redis the dead-letter index) is in PostgreSQL: without it, one
    line and exit 2 within the connect timeout, not the pool's retries and warnings."""
    away = msgspec.structs.replace(settings, database_url="postgresql://postgres@127.0.0.1:1/nodb")
    out = run_catfleet(away, "dlq", *argv)
    assert out.returncode == 2 and out.stdout == "" and out.stderr.count("\n") == 1, out.stderr
    assert "connection" in out.stderr
    assert run_catfleet(away, "dlq", "list").returncode == 0  # a list by queue and age needs only Redis
