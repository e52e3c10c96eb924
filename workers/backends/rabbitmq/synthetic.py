"""Dead letters as the RabbitMQ fleet leaves them, written fast: for the console's benchmark.
Each letter of ``workers.dlq.synthetic``: its message in ``<q>.XQ``, its failure record in
``message_failures`` and the row the consumer writes when it dead-letters in
``dead_letter_index``."""

from __future__ import annotations

import time
from typing import Any

import pika
import psycopg

from schemas import CATEGORIZE_QUEUE, LEARN_QUEUE
from workers.backends.rabbitmq.queues import dead_letter_arguments
from workers.dlq.base import correlation_id_of, expense_ids_of
from workers.dlq.synthetic import letters
from workers.encoder import MsgspecEncoder


def fill(url: str, database_url: str, space: str, letters_n: int) -> dict[int, str]:
    """The same letters with the RabbitMQ broker: published to each ``<queue>.XQ`` (declared as the
    fleet declares it), their failure records in ``message_failures`` and the rows the consumer
    writes when it dead-letters in ``dead_letter_index`` (under ``space``), both by COPY."""
    encoder = MsgspecEncoder()
    now = int(time.time() * 1000)
    mids: dict[int, str] = {}
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    for queue in (CATEGORIZE_QUEUE, LEARN_QUEUE):
        channel.queue_declare(f"{queue}.XQ", durable=True, arguments=dead_letter_arguments("classic"))
    failures = [
        "message_id",
        "queue_name",
        "actor_name",
        "retries",
        "error_type",
        "error",
        "dead",
        "at_ms",
        "attempt",
    ]
    rows = ["space", "queue_name", "rid", "message_id", "actor_name", "error_type", "error", "correlation_id",
            "expense_ids", "died_at_ms", "body"]  # fmt: skip
    failed: list[list[Any]] = []
    indexed: list[list[Any]] = []
    for x in letters(letters_n, now_ms=now):
        body = encoder.encode(x.message.asdict())
        mids[x.i] = x.message.message_id
        channel.basic_publish("", f"{x.queue}.XQ", body, pika.BasicProperties(delivery_mode=2))
        r = x.record
        failed.append([getattr(r, f) for f in failures])
        payload = x.message.asdict()
        indexed.append([
            space, x.queue, r.message_id, r.message_id, x.actor, r.error_type, r.error,
            correlation_id_of(payload), expense_ids_of(payload), x.died_at_ms, body,
        ])  # fmt: skip
    with psycopg.connect(database_url, autocommit=True) as conn, conn.cursor() as cur:
        for table, columns, values in (
            ("message_failures", failures, failed),
            ("dead_letter_index", rows, indexed),
        ):
            with cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:  # type: ignore[arg-type]
                for row in values:
                    copy.write_row(row)
    connection.close()
    return mids
