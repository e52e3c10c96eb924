"""The relay against failures: the broker down while requests are written, and a relay
process killed with SIGKILL between its enqueue and its commit."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import pytest
import redis

from pipeline import outbox
from schemas import CATEGORIZE_QUEUE
from tests.support import data
from tests.support.broker import queued_messages
from tests.support.servers import RedisServer
from tests.support.services import RelayProcess, WorkerProcess, wait_for
from workers.backends.redis.keys import RedisKeys
from workers.harness.processes import free_port
from workers.settings import Settings

pytestmark = pytest.mark.fault

#: Held by the test; the relay's UPDATE (mark sent) waits for it.
BLOCK_KEY = 724_007


@pytest.fixture
def requests_table(conn: psycopg.Connection[Any], cats: dict[str, int]) -> Iterator[None]:
    conn.execute("TRUNCATE categorization_requests RESTART IDENTITY")
    yield
    conn.execute("DROP TRIGGER IF EXISTS test_block_mark ON categorization_requests")
    conn.execute("DROP FUNCTION IF EXISTS test_block_mark()")
    conn.execute("TRUNCATE categorization_requests RESTART IDENTITY")


def count(conn: psycopg.Connection[Any], query: str) -> int:
    row = conn.execute(query.encode()).fetchone()
    assert row is not None
    return int(row[0])


def test_requests_written_while_the_broker_is_down_are_all_categorized(
    conn: psycopg.Connection[Any], requests_table: None, settings: Settings, tmp_path: Path
) -> None:
    port = free_port()
    down = msgspec.structs.replace(settings, broker_url=f"redis://127.0.0.1:{port}/0")
    relay = RelayProcess(down, tmp_path / "relay.log")
    server: RedisServer | None = None
    worker: WorkerProcess | None = None
    try:
        relay.wait_listening(settings.database_url)
        ids = data.add_expenses(conn, ["PAYPAL *STARBUCKS 402935", "UBER *TRIP", "WALMART"] * 100)
        for chunk in (ids[i : i + 30] for i in range(0, len(ids), 30)):  # 10 host transactions
            with conn.transaction():
                outbox.request(conn, chunk, "while-down")
        wait_for(lambda: '"stage":"broker"' in relay.log().replace(" ", ""), what="a failed enqueue")
        assert outbox.backlog(conn).pending == 300 and relay.alive()

        server = RedisServer(tmp_path / "redis", port=port)
        server.start()
        worker = WorkerProcess(down, tmp_path / "worker.log")
        worker.wait_ready()
        wait_for(
            lambda: count(conn, "SELECT count(*) FROM categorizations") == 300, timeout=60, what="300 rows"
        )
        assert outbox.backlog(conn).pending == 0
        assert count(conn, "SELECT count(*) FROM categorizations WHERE correlation_id = 'while-down'") == 300
    finally:
        if worker:
            worker.stop()
        relay.stop()
        if server:
            server.stop(signal.SIGKILL)


def test_relay_killed_between_enqueue_and_commit_loses_nothing(
    conn: psycopg.Connection[Any], requests_table: None, settings: Settings, tmp_path: Path
) -> None:
    # Make the relay's "mark sent" wait on a lock this test holds: the kill then lands exactly
    # after its messages are in the broker and before its transaction commits.
    conn.execute(
        "CREATE FUNCTION test_block_mark() RETURNS trigger LANGUAGE plpgsql AS $$"
        f" BEGIN PERFORM pg_advisory_xact_lock({BLOCK_KEY}); RETURN NULL; END $$"
    )
    conn.execute(
        "CREATE TRIGGER test_block_mark BEFORE UPDATE ON categorization_requests"
        " FOR EACH STATEMENT EXECUTE FUNCTION test_block_mark()"
    )
    ids = data.add_expenses(conn, ["SQ *STARBUCKS", "SHELL FUEL", "JOE'S PIZZA", "WALMART"] * 300)
    outbox.request(conn, ids)
    small = msgspec.structs.replace(settings, relay_claim_size=500, batch_size=100)
    relay = RelayProcess(small, tmp_path / "relay.log")
    with psycopg.connect(settings.database_url, autocommit=True) as blocker:
        blocker.execute("SELECT pg_advisory_lock(%s)", (BLOCK_KEY,))
        try:
            wait_for(lambda: len(queued_messages(settings)) == 5, what="the first claim's 5 messages")
            stuck = wait_for(
                lambda: conn.execute(
                    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND objid = %s",
                    (BLOCK_KEY,),
                ).fetchone(),
                what="relay waiting to mark",
            )
            first_sent = {m["message_id"] for m in queued_messages(settings)}
            relay.stop(signal.SIGKILL)
            # The server notices the lost client when it next reads from it; end it now, as
            # a timeout or TCP keepalive would.
            conn.execute("SELECT pg_terminate_backend(%s)", stuck)
        finally:
            blocker.execute("SELECT pg_advisory_unlock(%s)", (BLOCK_KEY,))
    wait_for(lambda: not conn.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", stuck).fetchone())
    conn.execute("DROP TRIGGER test_block_mark ON categorization_requests")
    assert outbox.backlog(conn).pending == 1200  # the killed relay's claim rolled back

    worker = WorkerProcess(settings, tmp_path / "worker.log")
    second = RelayProcess(settings, tmp_path / "relay2.log")
    try:
        worker.wait_ready()
        wait_for(lambda: count(conn, "SELECT count(*) FROM categorizations") == 1200, timeout=60, what="1200")
        wait_for(lambda: outbox.backlog(conn).pending == 0, what="all marked")
        marked = {r[0] for r in conn.execute("SELECT DISTINCT message_id FROM categorization_requests")}
        assert not marked & first_sent  # the first 500 were sent again by the second relay
        wait_for(
            lambda: all(m in worker.log() for m in first_sent), what="the orphaned messages processed too"
        )
        assert count(conn, "SELECT count(DISTINCT expense_id) FROM categorizations") == 1200
        client = redis.Redis.from_url(settings.broker_url)
        assert (
            client.zcard(RedisKeys(settings.broker_namespace).dead(CATEGORIZE_QUEUE)) == 0
        )  # nothing dead-lettered
        client.close()
    finally:
        second.stop()
        worker.stop()
