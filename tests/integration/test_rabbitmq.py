"""The same fleet with the RabbitMQ broker (chosen by an amqp:// broker URL)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pika
import psycopg
import pytest

from pipeline.settings import Settings
from schemas import CATEGORIZE_QUEUE
from tests.support import data
from tests.support.rabbit import rabbit_vhost
from tests.support.services import WorkerProcess, wait_for
from workers.app import build_app
from workers.producer import Producer


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
        app.broker.close()
