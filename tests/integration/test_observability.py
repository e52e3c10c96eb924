"""The metrics and health endpoint of a real ``catfleet worker`` (and ``catfleet exporter``),
scraped during and after real runs against the real Redis broker and PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import psycopg
from psycopg.conninfo import make_conninfo

from schemas import CATEGORIZE_ACTOR, CATEGORIZE_BULK_QUEUE, CATEGORIZE_QUEUE, LEARN_ACTOR, LEARN_QUEUE
from tests.support import data
from tests.support.data import count_rows
from tests.support.scrape import Scrape, answers, get_json, scrape
from tests.support.servers import own_postgres
from tests.support.services import WorkerProcess, log_events, wait_for
from workers.app import App
from workers.backends.memory import MemoryAuditLog
from workers.harness.processes import ROOT, settings_env
from workers.multiproc import multiproc_dir
from workers.producer import Producer
from workers.settings import Settings

ACTOR = {"queue_name": CATEGORIZE_QUEUE, "actor_name": CATEGORIZE_ACTOR}
WRITTEN_OUTCOMES = ("categorized", "suggested", "uncategorized")

#: Series a dashboard or an alert reads that exist before their first event, at 0: one per
#: bounded label combination (a sample of them: the unit test checks every one).
ZERO_SERIES: list[tuple[str, dict[str, str]]] = [
    *[
        (name, {"queue_name": queue, "actor_name": actor})
        for queue, actor in ((CATEGORIZE_QUEUE, CATEGORIZE_ACTOR), (LEARN_QUEUE, LEARN_ACTOR))
        for name in (
            "dramatiq_messages_total",
            "dramatiq_message_errors_total",
            "dramatiq_message_rejects_total",
        )
    ],
    (
        "dramatiq_message_retries_total",
        {"queue_name": f"{CATEGORIZE_QUEUE}.DQ", "actor_name": CATEGORIZE_ACTOR},
    ),
    ("dramatiq_message_retries_total", {"queue_name": f"{LEARN_QUEUE}.DQ", "actor_name": LEARN_ACTOR}),
    *[("catfleet_patterns_skipped_total", {"kind": k}) for k in ("regex", "amount_range", "time")],
    *[("catfleet_cache_breaker_transitions_total", {"state": s}) for s in ("open", "half_open", "closed")],
    ("catfleet_cache_lookups_total", {"tier": "l2", "result": "error"}),
    ("catfleet_cache_fallback_lookups_total", {}),
    ("catfleet_write_conflicts_total", {"reason": "user_owned"}),
    ("catfleet_expenses_total", {"outcome": "missing"}),
    ("catfleet_batch_size_count", {"actor_name": CATEGORIZE_ACTOR}),
]


def not_zero(s: Scrape) -> list[tuple[str, dict[str, str], float | None]]:
    """The ``ZERO_SERIES`` a fresh host does not export as 0 (missing: None)."""
    found = [(name, labels, s.value(name, **labels)) for name, labels in ZERO_SERIES]
    return [f for f in found if f[2] != 0]


def depth(s: Scrape) -> float | None:
    return s.value("catfleet_queue_messages", queue=CATEGORIZE_QUEUE)


def status_json(env: dict[str, str]) -> dict[str, Any]:
    """``catfleet status --json``, parsed."""
    out = subprocess.run(
        [sys.executable, "-m", "workers", "status", "--json"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def per_process_values(settings: Settings, name: str, **labels: str) -> list[float]:
    """``name`` as each worker process wrote it in its own file of the host's multiprocess
    directory (what the endpoint sums), processes that have no such sample left out."""
    from prometheus_client.multiprocess import MultiProcessCollector

    values = []
    for path in sorted(Path(multiproc_dir(settings)).glob("*.db")):
        for family in MultiProcessCollector.merge([str(path)], accumulate=True):
            values += [s.value for s in family.samples if s.name == name and s.labels == labels]
    return [v for v in values if v]


def test_metrics_count_exactly_what_the_worker_did(
    app: App, conn: psycopg.Connection[Any], cats: dict[str, int], settings: Settings, tmp_path: Path
) -> None:
    """Two worker processes, one endpoint: it sums what both did. Halfway, PostgreSQL holds
    every batch before its write, so the scrape taken then sees exactly the finished ones."""
    port = settings.metrics_port
    worker = WorkerProcess(settings, tmp_path / "worker.log", processes=2, threads=2)
    try:
        worker.wait_ready()
        wait_for(
            lambda: answers(port) and scrape(port).value("catfleet_worker_processes") == 2, what="2 processes"
        )
        merchants = ["PAYPAL *STARBUCKS 402935", "WALMART", "JOE'S PIZZA", "ZQX UNKNOWN"]
        ids = data.add_expenses(conn, merchants * 50)
        first, second = ids[:80], ids[80:]
        producer = Producer(app.broker, batch_size=10)
        report1 = producer.enqueue([*first, 10**15, 10**15 + 1])
        wait_for(lambda: count_rows(conn) == len(first), what="the first wave written")
        wait_for(
            lambda: (
                scrape(port).value("dramatiq_message_duration_milliseconds_count", **ACTOR)
                == report1.messages
            ),
            what="the first wave counted",
        )
        with psycopg.connect(settings.database_url) as locker:  # commits (unlocks) on leaving
            locker.execute("LOCK TABLE categorizations IN EXCLUSIVE MODE")  # every write now waits
            report2 = producer.enqueue(second)
            # 4 in progress: both processes' 2 threads each hold a batch that waits for the lock
            during = wait_for(
                lambda: (s := scrape(port)).value("dramatiq_messages_inprogress", **ACTOR) == 4 and s,
                what="both processes busy",
            )
            logged = len(log_events(worker, "batch"))
            assert count_rows(conn) == len(first)
        assert (
            during.value("dramatiq_message_duration_milliseconds_count", **ACTOR)
            == logged
            == report1.messages
        )
        assert during.value("dramatiq_messages_total", **ACTOR) == report1.messages  # none of the held ones
        messages = report1.messages + report2.messages
        wait_for(lambda: count_rows(conn) == len(ids), what="every row written")
        done = wait_for(
            lambda: (s := scrape(port)).value("dramatiq_messages_total", **ACTOR) == messages and s,
            what="every message counted",
        )
        # Dramatiq's per-actor metrics: the histogram counted every processed message, no errors,
        # and the count is the sum of both processes' own counts (each did some of the work).
        assert done.value("dramatiq_message_duration_milliseconds_count", **ACTOR) == messages
        own = per_process_values(settings, "dramatiq_message_duration_milliseconds_count", **ACTOR)
        assert len(own) == 2 and sum(own) == messages, own
        assert done.total("dramatiq_message_errors_total") == 0
        assert done.value("dramatiq_messages_inprogress", **ACTOR) == 0
        # Domain metrics: outcomes equal the rows written; unknown ids are missing.
        written = sum(done.total("catfleet_expenses_total", outcome=o) for o in WRITTEN_OUTCOMES)
        assert written == count_rows(conn) == len(ids)
        assert done.value("catfleet_categorizations_written_total") == len(ids)
        assert len(per_process_values(settings, "catfleet_categorizations_written_total")) == 2
        assert done.value("catfleet_expenses_total", outcome="missing") == 2
        assert done.value("catfleet_batch_size_count", actor_name=CATEGORIZE_ACTOR) == messages
        assert done.value("catfleet_batch_size_sum", actor_name=CATEGORIZE_ACTOR) == report1.ids + report2.ids
        assert done.value("catfleet_end_to_end_seconds_count") == messages
        assert done.total("catfleet_cache_lookups_total", tier="l1") > 0
        assert done.value("catfleet_broker_up") == 1
        assert depth(done) == 0
        assert done.value("catfleet_worker_processes") == 2
        assert (done.value("catfleet_broker_workers") or 0) >= 2  # both processes heartbeat
        # The same messages again change nothing: counted as unchanged write conflicts.
        Producer(app.broker, batch_size=50).enqueue(ids)
        again = wait_for(
            lambda: (
                (s := scrape(port)).value("catfleet_write_conflicts_total", reason="unchanged") == len(ids)
                and s
            ),
            what="unchanged rows counted",
        )
        assert again.value("catfleet_categorizations_written_total") == len(ids)
    finally:
        worker.stop()


def test_queue_depth_follows_a_real_backlog_and_status_reports_it(
    app: App, conn: psycopg.Connection[Any], cats: dict[str, int], settings: Settings, tmp_path: Path
) -> None:
    port = settings.metrics_port
    env = settings_env(settings)
    # No workers yet: the standalone exporter serves the broker's view.
    exporter = subprocess.Popen(
        [sys.executable, "-m", "workers", "exporter"], env=env, cwd=ROOT, start_new_session=True
    )
    try:
        wait_for(lambda: answers(port), what="exporter")
        assert depth(scrape(port)) == 0
        assert not_zero(scrape(port)) == []  # every counter series there, at 0, before any event
        ids = data.add_expenses(conn, ["STARBUCKS"] * 60)
        report = Producer(app.broker, batch_size=2).enqueue(ids)
        bad = Producer.batch_message([1]).copy(args=({"expense_ids": "1"},))
        app.broker.enqueue(bad)  # will be dead-lettered
        s = scrape(port)
        assert depth(s) == report.messages + 1
        assert s.value("catfleet_queue_dead_letters", queue=CATEGORIZE_QUEUE) == 0
        wait_for(
            lambda: (
                (scrape(port).value("catfleet_queue_oldest_message_age_seconds", queue=CATEGORIZE_QUEUE) or 0)
                > 0.05
            ),
            what="oldest age grows",
        )
        assert scrape(port).value("catfleet_worker_processes") == 0  # no workers on this host
        for _ in range(3):  # what `catfleet dlq replay` counts per replayed letter
            app.backend.dead_letters(MemoryAuditLog()).count("replay", CATEGORIZE_QUEUE)
        assert scrape(port).value("catfleet_dead_letter_replays_total", queue=CATEGORIZE_QUEUE) == 3
        status = status_json(env)
        queues = {q["queue"]: q for q in status["queues"]}
        assert sorted(queues) == sorted(
            [CATEGORIZE_QUEUE, CATEGORIZE_BULK_QUEUE, LEARN_QUEUE]
        )  # every declared actor's queue
        assert queues[LEARN_QUEUE]["ready"] == 0
        q = queues[CATEGORIZE_QUEUE]
        assert (q["queue"], q["ready"], q["dead"], q["replayed"]) == (
            CATEGORIZE_QUEUE,
            report.messages + 1,
            0,
            3,
        )
        assert status["ruleset_version"] >= 1
        assert status["readiness"]["status"] == "ready"
        text = subprocess.run(
            [sys.executable, "-m", "workers", "status"], env=env, cwd=ROOT, capture_output=True, text=True
        )
        assert text.returncode == 0
        assert f"{CATEGORIZE_QUEUE} " in text.stdout and str(report.messages + 1) in text.stdout
    finally:
        os.killpg(exporter.pid, signal.SIGTERM)
        exporter.wait(timeout=30)
    # A real worker drains it; the gauge follows down to zero, the bad one is dead-lettered.
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    try:
        worker.wait_ready()
        wait_for(lambda: answers(port), what="worker metrics server")
        wait_for(lambda: depth(scrape(port)) == 0, what="backlog drained")
        wait_for(lambda: count_rows(conn) == len(ids), what="rows")
        s = wait_for(
            lambda: (
                (s := scrape(port)).value("catfleet_queue_dead_letters", queue=CATEGORIZE_QUEUE) == 1 and s
            ),
            what="dead letter counted",
        )
        assert s.value("catfleet_queue_oldest_message_age_seconds", queue=CATEGORIZE_QUEUE) == 0
        assert s.value("dramatiq_message_rejects_total", **ACTOR) == 1
        assert s.value("catfleet_worker_processes") == 1
        # status with a worker up: it is seen, and this host reports its process's cache breaker
        status = status_json(env)
        assert status["workers_seen"] >= 1
        assert status["readiness"]["status"] == "ready"
        assert status["readiness"]["cache_breaker"]["closed"] == 1, status["readiness"]
    finally:
        worker.stop()
    failures = log_events(worker, "failure")
    assert [(f["message_id"], f["dead"], f["error_type"]) for f in failures] == [
        (bad.message_id, True, "InvalidMessage")
    ]


def test_readiness_follows_postgresql(settings: Settings, tmp_path: Path) -> None:
    with own_postgres() as pg:
        own = msgspec.structs.replace(settings, database_url=pg.create_database())
        worker = WorkerProcess(own, tmp_path / "worker.log")
        try:
            worker.wait_ready()
            port = own.metrics_port
            wait_for(lambda: answers(port), what="metrics server")
            assert get_json(port, "/healthz") == (200, {"status": "ok"})
            code, body = get_json(port, "/readyz")
            assert (code, body["status"], body["database"], body["broker"]) == (
                200,
                "ready",
                {"ok": True},
                {"ok": True},
            )
            pg.stop()
            code, body = wait_for(lambda: (r := get_json(port, "/readyz"))[0] == 503 and r, what="unready")
            assert body["status"] == "unready" and body["failing"] == ["database"]
            # unauthenticated: the failing dependency and the error class, no host, port or DSN
            assert body["database"] == {"ok": False, "error": "OperationalError"}
            assert str(pg.port) not in json.dumps(body) and "127.0.0.1" not in json.dumps(body)
            assert body["broker"] == {"ok": True}
            # the host's log has the details
            wait_for(
                lambda: any(
                    "database check failed" in line and str(pg.port) in line
                    for line in worker.log().splitlines()
                ),
                what="the failed check logged",
            )
            assert get_json(port, "/healthz")[0] == 200  # alive: do not restart it for this
            pg.start()
            code, body = wait_for(
                lambda: (r := get_json(port, "/readyz"))[0] == 200 and r, what="ready again"
            )
            assert body["status"] == "ready"
        finally:
            worker.stop()


def test_a_fresh_worker_exports_every_counter_series_at_zero_and_logs_what_it_uses(
    settings: Settings, cats: dict[str, int], tmp_path: Path
) -> None:
    """Before its first message: 0 (not "No data") for errors, retries, dead letters, breaker
    transitions, skipped patterns, ...; and one start line naming broker, namespace, database
    and cache, the database's password redacted."""
    own = msgspec.structs.replace(
        settings, database_url=make_conninfo(settings.database_url, password="hunter2-pw")
    )
    worker = WorkerProcess(own, tmp_path / "worker.log")
    try:
        worker.wait_ready()
        port = own.metrics_port
        wait_for(lambda: answers(port), what="metrics server")
        assert not_zero(scrape(port)) == []
        [start] = log_events(worker, "worker_start")
    finally:
        worker.stop()
    assert (start["logger"], start["level"]) == ("catfleet.worker", "INFO")
    assert (start["broker"], start["namespace"], start["cache"], start["cache_prefix"]) == (
        own.broker_url,
        own.broker_namespace,
        own.cache_url,
        own.cache_prefix,
    )
    assert start["database"] == make_conninfo(settings.database_url, password="***")
    assert own.broker_url in start["msg"] and own.broker_namespace in start["msg"]
    assert "hunter2-pw" not in worker.log()


def test_importing_the_workers_does_not_import_prometheus_client() -> None:
    """prometheus_client must be imported only after the multiprocess directory is set."""
    code = "import sys, workers, workers.app, workers.commands, workers.exposition; print('prometheus_client' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
