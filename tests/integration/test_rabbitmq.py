"""The same fleet with the RabbitMQ broker (chosen by an amqp:// broker URL)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pika
import psycopg
import pytest

from schemas import CATEGORIZE_QUEUE
from tests.support import data
from tests.support.rabbit import rabbit_vhost
from tests.support.readme import readme_block
from tests.support.services import WorkerProcess, wait_for
from workers.app import build_app
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
