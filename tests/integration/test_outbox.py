"""The transactional outbox and the relay, on the real PostgreSQL and Redis broker."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import pytest

from pipeline import outbox
from pipeline.errors import BrokerUnavailable
from tests.support import data
from tests.support.broker import queued_messages
from tests.support.scrape import Scrape, scrape
from tests.support.services import RelayProcess, WorkerProcess, wait_for
from workers.app import App
from workers.harness.processes import free_port
from workers.producer import Producer
from workers.relay import Relay
from workers.settings import Settings


@pytest.fixture
def requests_table(conn: psycopg.Connection[Any], cats: dict[str, int]) -> Iterator[None]:
    conn.execute("TRUNCATE categorization_requests RESTART IDENTITY")
    yield
    conn.execute("SELECT catfleet_drop_outbox_triggers()")
    conn.execute("TRUNCATE categorization_requests RESTART IDENTITY")


@pytest.fixture
def make_relay(app: App) -> Iterator[Callable[..., Relay]]:
    """In-process relays (their connections closed at the end)."""
    made: list[Relay] = []

    def make(*, claim_size: int = 100, batch_size: int = 10) -> Relay:
        producer = Producer(app.broker, batch_size=batch_size)
        made.append(Relay(app.settings.database_url, producer, claim_size=claim_size, poll_seconds=1.0))
        return made[-1]

    yield make
    for relay in made:
        relay.close()


def requests(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT expense_id, correlation_id, sent_at IS NOT NULL, message_id FROM categorization_requests ORDER BY id"
    ).fetchall()


def sent_ids(settings: Settings) -> Counter[int]:
    return Counter(i for m in queued_messages(settings) for i in m["args"][0]["expense_ids"])


def scalar(conn: psycopg.Connection[Any], query: str) -> Any:
    row = conn.execute(query.encode()).fetchone()
    assert row is not None
    return row[0]


def test_triggers_request_inserted_and_changed_expenses(
    conn: psycopg.Connection[Any], requests_table: None
) -> None:
    conn.execute("SELECT catfleet_install_outbox_triggers()")
    [a, b] = data.add_expenses(conn, ["STARBUCKS", "WALMART"])
    conn.execute(
        "INSERT INTO expenses (user_id, merchant_name, amount, transaction_date, deleted_at)"
        " SELECT 1, 'BULK ' || g, 9.5, '2026-03-14', CASE WHEN g = 3 THEN now() END FROM generate_series(1, 4) g"
    )
    assert [r[0] for r in requests(conn)] == [a, b, b + 1, b + 2, b + 4]  # live ones only, in id order
    conn.execute("UPDATE expenses SET merchant_name = 'UBER *TRIP' WHERE id = %s", (a,))
    conn.execute("UPDATE expenses SET merchant_name = merchant_name, deleted_at = now() WHERE id = %s", (b,))
    conn.execute("UPDATE expenses SET amount = 20 WHERE id = %s", (b,))  # deleted: not requested
    assert [r[0] for r in requests(conn)][5:] == [a]
    conn.execute("SELECT catfleet_drop_outbox_triggers()")
    data.add_expenses(conn, ["SHELL"])
    assert len(requests(conn)) == 6


def test_relay_sends_committed_requests_and_marks_them(
    conn: psycopg.Connection[Any], make_relay: Callable[..., Relay], requests_table: None, settings: Settings
) -> None:
    ids = list(range(1, 26))
    with conn.transaction():
        outbox.request(conn, ids, "batch-a")
        outbox.request(conn, [5, 5, 7], None)  # the same expense twice goes once per message
    with conn.transaction():
        outbox.request(conn, [999], "rolled-back")
        raise psycopg.Rollback()
    relay = make_relay(claim_size=12, batch_size=10)
    assert relay.drain() == 28
    assert relay.drain() == 0
    rows = requests(conn)
    assert all(sent for _, _, sent, _ in rows) and 999 not in [r[0] for r in rows]
    messages = {m["message_id"]: m for m in queued_messages(settings)}
    for expense_id, correlation_id, _, message_id in rows:  # each request names the message that carried it
        payload = messages[message_id]["args"][0]
        assert expense_id in payload["expense_ids"] and payload.get("correlation_id") == correlation_id
    assert sorted(sent_ids(settings).elements()) == sorted([*ids, 5, 7])
    assert all(len(m["args"][0]["expense_ids"]) <= 10 for m in messages.values())
    assert outbox.backlog(conn) == outbox.Backlog(pending=0, oldest_age=0.0)


def test_broker_failure_rolls_back_the_claim(
    conn: psycopg.Connection[Any], make_relay: Callable[..., Relay], requests_table: None, settings: Settings
) -> None:
    outbox.request(conn, [1, 2, 3])
    relay = make_relay()

    def broken(messages: list[Any]) -> None:
        raise ConnectionError("broker gone")

    relay.producer.send = broken  # type: ignore[method-assign]
    with pytest.raises(BrokerUnavailable, match="broker gone"):
        relay.relay_batch()
    assert [r[2] for r in requests(conn)] == [False] * 3
    assert outbox.backlog(conn).pending == 3
    relay.producer = make_relay().producer
    assert relay.drain() == 3


def test_relay_killed_after_enqueue_before_mark_sends_again(
    conn: psycopg.Connection[Any], make_relay: Callable[..., Relay], requests_table: None, settings: Settings
) -> None:
    """The window a crash can hit: messages in the broker, rows not marked. The transaction
    dies with the relay (here: an exception in place of mark_sent), so the rows stay pending
    and the next relay sends them again: at least once, never lost."""
    outbox.request(conn, range(1, 31))
    relay = make_relay(claim_size=20)

    class Killed(BaseException):
        pass

    def die(*args: Any) -> None:
        raise Killed

    original = outbox.mark_sent
    outbox.mark_sent = die  # type: ignore[assignment]
    try:
        with pytest.raises(Killed):
            relay.relay_batch()
    finally:
        outbox.mark_sent = original  # type: ignore[assignment]
    assert sum(sent_ids(settings).values()) == 20 and outbox.backlog(conn).pending == 30
    assert make_relay(claim_size=20).drain() == 30
    assert sent_ids(settings) == Counter(
        {**dict.fromkeys(range(1, 21), 2), **dict.fromkeys(range(21, 31), 1)}
    )


def relay_metrics(port: int) -> Scrape | None:
    """A relay's /metrics, None while it does not answer yet."""
    try:
        return scrape(port)
    except OSError:
        return None


def test_two_relays_never_send_the_same_request_twice(
    conn: psycopg.Connection[Any], requests_table: None, settings: Settings, tmp_path: Path
) -> None:
    ports = [free_port(), free_port()]
    relays = [
        RelayProcess(
            msgspec.structs.replace(settings, relay_claim_size=50, batch_size=20, relay_metrics_port=port),
            tmp_path / f"relay{i}.log",
        )
        for i, port in enumerate(ports)
    ]
    try:
        for r in relays:
            r.wait_listening(settings.database_url)
        n = 0
        for _ in range(100):  # 100 host transactions while both relays run
            with conn.transaction():
                outbox.request(conn, range(n + 1, n + 101))
            n += 100
        wait_for(lambda: outbox.backlog(conn).pending == 0, timeout=60, what="all sent")
        counts = sent_ids(settings)
        assert len(counts) == n and set(counts.values()) == {1}
        senders = scalar(conn, "SELECT count(DISTINCT message_id) FROM categorization_requests")
        assert senders == len(queued_messages(settings))
        # Both did part of the work, and together exactly all of it: nothing sent twice.
        metrics = [wait_for(lambda p=p: relay_metrics(p), what="relay metrics") for p in ports]
        sent = [m.value("catfleet_relay_requests_sent_total") or 0 for m in metrics]
        messages = [m.value("catfleet_relay_messages_sent_total") or 0 for m in metrics]
        print(f"\ntwo relays: requests sent {sent}, messages {messages}")
        assert all(x > 0 for x in sent) and sum(sent) == n
        assert all(x > 0 for x in messages) and sum(messages) == len(queued_messages(settings))
        # every error stage is exported at 0 before any error (dashboards show 0, not "No data")
        for m in metrics:
            assert [m.value("catfleet_relay_errors_total", stage=s) for s in ("broker", "database")] == [0, 0]
    finally:
        for r in relays:
            r.stop()
    assert all(r.proc.returncode == 0 for r in relays)  # SIGTERM: a clean stop


def test_relay_is_woken_by_notify_not_the_poll(
    conn: psycopg.Connection[Any], requests_table: None, settings: Settings, tmp_path: Path
) -> None:
    port = free_port()
    slow_poll = msgspec.structs.replace(settings, relay_poll_seconds=600.0, relay_metrics_port=port)
    relay = RelayProcess(slow_poll, tmp_path / "relay.log")
    try:
        relay.wait_listening(settings.database_url)
        wait_for(lambda: '"relay_start"' in relay.log(), what="relay start")
        outbox.request(conn, [42])
        wait_for(
            lambda: outbox.backlog(conn).pending == 0, timeout=30, what="sent long before the 600 s poll"
        )
        assert sent_ids(settings) == Counter({42: 1})
        metrics = wait_for(
            lambda: (m := relay_metrics(port)) and m.value("catfleet_relay_lag_seconds") is not None and m,
            what="metrics",
        )
        assert metrics.value("catfleet_relay_requests_sent_total") == 1
        assert metrics.value("catfleet_relay_messages_sent_total") == 1
        assert metrics.value("catfleet_relay_pending_requests") == 0
        assert metrics.value("catfleet_relay_delay_seconds_count") == 1
    finally:
        relay.stop()


BURST = 50_000


def test_burst_of_inserted_expenses_is_drained_and_categorized(
    conn: psycopg.Connection[Any],
    requests_table: None,
    worker: WorkerProcess,
    settings: Settings,
    tmp_path: Path,
) -> None:
    """One bulk INSERT with the triggers installed: the relay drains it, the worker categorizes
    it, one row per expense. Prints the end-to-end rate and the relay's lag (database clock)."""
    conn.execute("SELECT catfleet_install_outbox_triggers()")
    port = free_port()
    relay = RelayProcess(msgspec.structs.replace(settings, relay_metrics_port=port), tmp_path / "relay.log")
    try:
        relay.wait_listening(settings.database_url)
        merchants = ["PAYPAL *STARBUCKS 402935", "TST* WALMART STORE #4567", "UBER *TRIP", "JOE'S PIZZA"]
        started = time.monotonic()
        conn.execute(
            "INSERT INTO expenses (user_id, merchant_name, amount, transaction_date)"
            " SELECT 1 + g %% 50, (%s::text[])[1 + g %% 4], 10 + g %% 90, '2026-03-14'"
            " FROM generate_series(1, %s) g",
            (merchants, BURST),
        )
        committed = time.monotonic()
        wait_for(lambda: outbox.backlog(conn).pending == 0, timeout=120, interval=0.2, what="relay drained")
        drained = time.monotonic()
        wait_for(lambda: data.count_rows(conn) == BURST, timeout=180, interval=0.2, what=f"{BURST} rows")
        done = time.monotonic()
        assert data.categorized(conn) == (BURST, BURST)  # one row per expense
        assert scalar(conn, "SELECT count(*) FROM categorizations WHERE category_id IS NULL") == 0
        assert scalar(conn, "SELECT count(*) FROM categorization_requests") == BURST
        # database clock: from the last request's commit to the last send and the last row
        drain_s, e2e_s, mean_wait_s = conn.execute(
            "SELECT extract(epoch FROM max(sent_at) - max(created_at)),"
            " extract(epoch FROM (SELECT max(categorized_at) FROM categorizations) - max(created_at)),"
            " extract(epoch FROM avg(sent_at - created_at)) FROM categorization_requests"
        ).fetchone()  # type: ignore[misc]
        metrics = wait_for(lambda: relay_metrics(port), what="relay metrics")
        assert metrics.value("catfleet_relay_requests_sent_total") == BURST
        assert metrics.value("catfleet_relay_delay_seconds_count") == BURST
        claim_mean = (metrics.value("catfleet_relay_delay_seconds_sum") or 0) / BURST
        print(
            f"\nburst {BURST:,}: insert {committed - started:.2f} s; relay drained in {drained - committed:.2f} s"
            f" (db: last send {float(drain_s):.2f} s after commit, mean request wait {float(mean_wait_s):.3f} s,"
            f" mean claim delay {claim_mean:.3f} s); all categorized {done - committed:.2f} s after commit"
            f" (db: {float(e2e_s):.2f} s) = {BURST / float(e2e_s):,.0f} expenses/s end to end"
        )
    finally:
        relay.stop()


def test_concurrent_claims_in_one_process_are_disjoint(
    conn: psycopg.Connection[Any], make_relay: Callable[..., Relay], requests_table: None, settings: Settings
) -> None:
    outbox.request(conn, range(1, 2001))
    relays = [make_relay(claim_size=25, batch_size=25) for _ in range(4)]
    threads = [threading.Thread(target=r.drain) for r in relays]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    while make_relay().drain():  # a thread that met only locked rows may stop early
        pass
    counts = sent_ids(settings)
    assert len(counts) == 2000 and set(counts.values()) == {1}
