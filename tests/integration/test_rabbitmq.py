"""The same fleet with the RabbitMQ broker (chosen by an amqp:// broker URL)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pika
import psycopg
import pytest
from dramatiq.brokers.rabbitmq import DEAD_MESSAGE_TTL

from pipeline.errors import SettingsError
from schemas import CATEGORIZE_QUEUE
from tests.support import data
from tests.support.rabbit import rabbit_vhost
from tests.support.readme import readme_block
from tests.support.services import WorkerProcess, run_catfleet, wait_for
from workers.app import build_app
from workers.backends.base import FLEET_QUEUES
from workers.backends.rabbitmq.urls import node_urls
from workers.harness.processes import ROOT
from workers.producer import Producer
from workers.settings import Settings


@pytest.fixture(scope="module")
def rabbit_settings(settings: Settings) -> Iterator[Settings]:
    with rabbit_vhost() as url:
        yield msgspec.structs.replace(settings, broker_url=url)


def dead_lettered(url: str) -> int:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        return channel.queue_declare(f"{CATEGORIZE_QUEUE}.XQ", passive=True).method.message_count
    finally:
        connection.close()


def test_rabbitmq_fleet_categorizes_and_dead_letters(
    rabbit_settings: Settings, tmp_path: Path, conn: psycopg.Connection[Any], cats: dict[str, int]
) -> None:
    app = build_app(rabbit_settings)
    worker = WorkerProcess(rabbit_settings, tmp_path / "worker.log")
    try:
        ids = data.add_expenses(conn, ["PAYPAL *STARBUCKS 402935"] * 10 + ["TST* WALMART STORE #4567"] * 10)
        report = Producer(app.broker, batch_size=7).enqueue(ids)
        assert report.messages == 3
        app.broker.enqueue(Producer.batch_message([]).copy(args=({"expense_ids": "nope"},)))
        count = "SELECT count(*) FROM categorizations"
        wait_for(lambda: conn.execute(count).fetchone()[0] == 20, timeout=60, what="rows via RabbitMQ")  # type: ignore[index]
        wait_for(lambda: dead_lettered(rabbit_settings.broker_url) == 1, timeout=30, what="dead letter")
        by_category = dict(
            conn.execute("SELECT category_id, count(*) FROM categorizations GROUP BY 1").fetchall()
        )
        assert by_category == {cats["coffee"]: 10, cats["groceries"]: 10}
    finally:
        worker.stop()
        app.close()


def test_readme_pika_steps_enqueue_a_batch(
    rabbit_settings: Settings, tmp_path: Path, conn: psycopg.Connection[Any], cats: dict[str, int]
) -> None:
    """The README's AMQP steps, run verbatim with plain pika against a RabbitMQ-broker fleet."""
    ids = data.add_expenses(conn, ["PAYPAL *STARBUCKS 402935", "TST* WALMART STORE #4567", "UBER *TRIP"])
    worker = WorkerProcess(rabbit_settings, tmp_path / "worker.log")
    try:
        worker.wait_ready()  # the workers declare the queue the block declares passively
        dead_before = dead_lettered(rabbit_settings.broker_url)
        env = dict(os.environ, AMQP_URL=rabbit_settings.broker_url, IDS=",".join(map(str, ids)))
        out = subprocess.run(
            [sys.executable, "-c", readme_block("# enqueue categorize_batch with pika\n", lang="python")],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        message_id = out.stdout.strip()
        query = "SELECT expense_id, category_id, message_id, correlation_id FROM categorizations ORDER BY 1"
        rows = wait_for(
            lambda: (r := conn.execute(query).fetchall()) and len(r) == 3 and r, what="rows via AMQP"
        )
        assert rows == [
            (ids[0], cats["coffee"], message_id, "from-amqp"),
            (ids[1], cats["groceries"], message_id, "from-amqp"),
            (ids[2], cats["rideshare"], message_id, "from-amqp"),
        ]
        assert dead_lettered(rabbit_settings.broker_url) == dead_before
    finally:
        worker.stop()


# --- quorum queues (CATFLEET_RABBITMQ_QUEUE_TYPE=quorum) -------------------------------------

FLEET_QUEUE_NAMES = [f"{q}{suffix}" for q in FLEET_QUEUES for suffix in ("", ".DQ", ".XQ")]


def vhost_of(url: str) -> str:
    return urllib.parse.unquote(urllib.parse.urlsplit(url).path[1:])


def list_queues(url: str) -> dict[str, tuple[str, dict[str, Any]]]:
    """Each queue of the URL's vhost: (type, arguments), as ``rabbitmqctl list_queues`` reports."""
    out = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "-p", vhost_of(url), "name", "type", "arguments", "--formatter", "json"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return {q["name"]: (q["type"], {k: v for k, _, v in q["arguments"]}) for q in json.loads(out.stdout)}


@pytest.fixture
def quorum_settings(settings: Settings) -> Iterator[Settings]:
    with rabbit_vhost() as url:
        yield msgspec.structs.replace(settings, broker_url=url, rabbitmq_queue_type="quorum")


def test_quorum_queues_are_declared_with_the_fleets_arguments(quorum_settings: Settings) -> None:
    settings = msgspec.structs.replace(quorum_settings, max_deliveries=7)
    app = build_app(settings)
    try:
        stats = app.backend.queue_stats()  # declares every fleet queue, as the workers do
    finally:
        app.close()
    assert [(s.queue, s.ready, s.delayed, s.dead) for s in stats] == [(q, 0, 0, 0) for q in FLEET_QUEUES]
    queues = list_queues(settings.broker_url)
    assert sorted(queues) == sorted(FLEET_QUEUE_NAMES)
    dead_letter = {
        "x-dead-letter-exchange": "",
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }
    for q in FLEET_QUEUES:
        assert queues[q] == (
            "quorum",
            {
                "x-queue-type": "quorum",
                **dead_letter,
                "x-dead-letter-routing-key": f"{q}.XQ",
                "x-delivery-limit": 7,
            },
        )
        # the delay queue has no delivery limit: the delay consumer holds retries until their eta
        assert queues[f"{q}.DQ"] == (
            "quorum", {"x-queue-type": "quorum", **dead_letter, "x-dead-letter-routing-key": f"{q}.XQ"}
        )  # fmt: skip
        assert queues[f"{q}.XQ"] == ("quorum", {"x-queue-type": "quorum", "x-message-ttl": DEAD_MESSAGE_TTL})


def test_classic_stays_the_default(settings: Settings) -> None:
    assert Settings().rabbitmq_queue_type == "classic"
    with rabbit_vhost() as url:
        app = build_app(msgspec.structs.replace(settings, broker_url=url))
        try:
            app.backend.queue_stats()
        finally:
            app.close()
        queues = list_queues(url)
    assert {name: kind for name, (kind, _) in queues.items()} == dict.fromkeys(FLEET_QUEUE_NAMES, "classic")
    assert queues[CATEGORIZE_QUEUE][1] == {
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": f"{CATEGORIZE_QUEUE}.XQ",
    }


def nack_one(url: str, queue: str) -> str:
    """Take one message off ``queue`` and reject it without requeue: RabbitMQ dead-letters it
    through the queue's own dead-letter exchange, as the worker's nack does. Its message id."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        method, _, body = channel.basic_get(queue, auto_ack=False)
        assert method is not None, f"nothing on {queue}"
        channel.basic_nack(method.delivery_tag, requeue=False)
        return str(json.loads(body)["message_id"])
    finally:
        connection.close()


def test_the_fleet_runs_on_quorum_queues(
    quorum_settings: Settings, tmp_path: Path, conn: psycopg.Connection[Any], cats: dict[str, int]
) -> None:
    """A real worker categorizes on quorum queues, a poison message dead-letters into the quorum
    ``.XQ`` with its failure recorded, and a dead letter replayed with ``catfleet dlq`` is run."""
    settings = quorum_settings
    url = settings.broker_url
    app = build_app(settings)
    try:
        # a message dead-lettered by the queue itself while no worker runs: replayed below
        ids = data.add_expenses(conn, ["UBER *TRIP HELP.UBER.COM"] * 3)
        Producer(app.broker, batch_size=10).enqueue(ids)
        replayed_id = nack_one(url, CATEGORIZE_QUEUE)
        assert dead_lettered(url) == 1

        worker = WorkerProcess(settings, tmp_path / "worker.log")
        try:
            worker.wait_ready()
            more = data.add_expenses(
                conn, ["PAYPAL *STARBUCKS 402935"] * 10 + ["TST* WALMART STORE #4567"] * 10
            )
            assert Producer(app.broker, batch_size=7).enqueue(more).messages == 3
            poison = Producer.batch_message([]).copy(args=({"expense_ids": "nope"},))
            app.broker.enqueue(poison)
            wait_for(lambda: data.count_rows(conn) == 20, timeout=60, what="rows on quorum queues")
            wait_for(lambda: dead_lettered(url) == 2, timeout=30, what="the poison message dead-lettered")
            failures = conn.execute(
                "SELECT error_type FROM message_failures WHERE message_id = %s", (poison.message_id,)
            ).fetchall()
            assert failures == [("InvalidMessage",)]

            done = run_catfleet(settings, "dlq", "replay", replayed_id)
            assert done.returncode == 0, done.stderr
            wait_for(lambda: data.count_rows(conn) == 23, timeout=60, what="the replayed batch")
            assert dead_lettered(url) == 1  # the poison message is still there
            rows = conn.execute(
                "SELECT expense_id, category_id FROM categorizations WHERE expense_id = ANY(%s) ORDER BY 1",
                (ids,),
            ).fetchall()
            assert rows == [(i, cats["rideshare"]) for i in ids]
        finally:
            worker.stop()
    finally:
        app.close()
    assert {kind for kind, _ in list_queues(url).values()} == {"quorum"}


def make_classic_queues(url: str, settings: Settings) -> None:
    app = build_app(msgspec.structs.replace(settings, broker_url=url, rabbitmq_queue_type="classic"))
    try:
        app.backend.queue_stats()
    finally:
        app.close()


MISMATCH = re.compile(
    r"RabbitMQ queue '(?P<queue>[a-zA-Z.]+)' \(vhost '(?P<vhost>[^']+)'\) is a classic queue, this fleet's"
    r" are quorum; it is never redeclared: drain (?P=queue), replay or purge (?P=queue).XQ, delete the"
    r" three \(rabbitmqctl delete_queue\), or use a new vhost$"
)


def test_a_vhost_with_classic_queues_is_refused_in_one_line(
    quorum_settings: Settings, tmp_path: Path, conn: psycopg.Connection[Any], cats: dict[str, int]
) -> None:
    url = quorum_settings.broker_url
    make_classic_queues(url, quorum_settings)
    [expense] = data.add_expenses(conn, ["PAYPAL *STARBUCKS 402935"])
    before = list_queues(url)
    # a command: one line, exit 2 (status: the broker's error line, exit 1, as for any broker error)
    for argv, code, prefix in (
        (["enqueue", str(expense)], 2, "catfleet enqueue: "),
        (["status"], 1, "catfleet status: broker unreachable: QueueMismatch: "),
    ):
        done = run_catfleet(quorum_settings, *argv)
        assert done.returncode == code, (argv, done.stdout, done.stderr)
        line = done.stderr.strip()
        assert "\n" not in line and line.startswith(prefix), line
        found = MISMATCH.match(line.removeprefix(prefix))
        assert found, line
        assert (found["queue"], found["vhost"]) == (CATEGORIZE_QUEUE, vhost_of(url))

    # a worker process exits with the same line instead of retrying the declare forever; with a
    # restart limit of 1 its supervisor gives up at once (a crash loop, exit 3)
    settings = msgspec.structs.replace(quorum_settings, worker_restart_limit=1)
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    try:
        assert worker.proc.wait(timeout=60) == 3
    finally:
        worker.stop()
    log = worker.log()
    assert "is a classic queue, this fleet's are quorum; it is never redeclared" in log, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    # nothing was redeclared, deleted or sent
    assert list_queues(url) == before
    assert data.count_rows(conn) == 0


def test_a_quorum_vhost_is_refused_by_a_classic_fleet(settings: Settings, quorum_settings: Settings) -> None:
    app = build_app(quorum_settings)
    try:
        app.backend.queue_stats()
    finally:
        app.close()
    classic = msgspec.structs.replace(quorum_settings, rabbitmq_queue_type="classic")
    done = run_catfleet(classic, "enqueue", "1")
    assert done.returncode == 2
    assert " is a quorum queue, this fleet's are classic; it is never redeclared" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_another_delivery_limit_is_refused(quorum_settings: Settings) -> None:
    app = build_app(quorum_settings)
    try:
        app.backend.queue_stats()
    finally:
        app.close()
    done = run_catfleet(msgspec.structs.replace(quorum_settings, max_deliveries=9), "enqueue", "1")
    assert done.returncode == 2
    assert "differs from this fleet's (x-delivery-limit: received '9' but current is '5')" in done.stderr


# --- several nodes in one broker URL ---------------------------------------------------------


def test_a_broker_url_may_name_several_nodes() -> None:
    assert node_urls("amqp://u:p%40w@mq1:5672,mq2,[::1]:5673/vh?heartbeat=30") == [
        "amqp://u:p%40w@mq1:5672/vh?heartbeat=30",
        "amqp://u:p%40w@mq2/vh?heartbeat=30",
        "amqp://u:p%40w@[::1]:5673/vh?heartbeat=30",
    ]
    assert node_urls("amqp://a:1/v;amqps://b/w") == ["amqp://a:1/v", "amqps://b/w"]
    assert node_urls("amqp://mq") == ["amqp://mq"]
    for bad in ("amqp://mq1,,mq2/v", "amqp://mq1:99999/v", "amqp://u@/v", "amqp://a/v;redis://b"):
        with pytest.raises(SettingsError, match=r"^CATFLEET_BROKER_URL: "):
            node_urls(bad)


def test_a_dead_node_first_in_the_url_is_skipped(
    rabbit_settings: Settings, tmp_path: Path, conn: psycopg.Connection[Any], cats: dict[str, int]
) -> None:
    """Every client tries the nodes in turn: the first refuses connections, the second is the
    shared RabbitMQ. A worker consumes, a producer enqueues, status and the health check answer."""
    parts = urllib.parse.urlsplit(rabbit_settings.broker_url)
    two = f"amqp://guest:guest@127.0.0.1:1,127.0.0.1:{parts.port}{parts.path}"
    settings = msgspec.structs.replace(rabbit_settings, broker_url=two)
    app = build_app(settings)
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    try:
        assert app.backend.check().ok
        ids = data.add_expenses(conn, ["PAYPAL *STARBUCKS 402935"] * 5)
        Producer(app.broker, batch_size=2).enqueue(ids)
        wait_for(lambda: data.count_rows(conn) == 5, timeout=60, what="rows through the second node")
        done = run_catfleet(settings, "status", "--json")
        assert done.returncode == 0, done.stderr
    finally:
        worker.stop()
        app.close()
    bad = run_catfleet(
        msgspec.structs.replace(settings, broker_url="amqp://guest:guest@127.0.0.1:1,/%2F"), "status"
    )
    assert bad.returncode == 2
    assert bad.stderr.startswith("catfleet") and "CATFLEET_BROKER_URL: bad RabbitMQ host ''" in bad.stderr
