"""The bad-input catalogue, sent raw to the Redis broker: each gets its defined outcome and the
worker keeps going."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from pipeline.settings import Settings
from schemas import CATEGORIZE_ACTOR, CATEGORIZE_QUEUE, MAX_BATCH_IDS
from tests.support import data
from tests.support.broker import queue_state
from tests.support.data import categorized
from tests.support.services import WorkerProcess, wait_for
from workers.dlq import open_store
from workers.dlq.base import DeadLetterFilter

pytestmark = pytest.mark.fault


def envelope(args: list[Any], *, actor: str = CATEGORIZE_ACTOR, **extra: Any) -> bytes:
    return json.dumps(
        {
            "queue_name": CATEGORIZE_QUEUE,
            "actor_name": actor,
            "args": args,
            "kwargs": {},
            "options": {},
            "message_id": str(uuid.uuid4()),
            "message_timestamp": int(time.time() * 1000),
            **extra,
        }
    ).encode()


def push(client: redis.Redis, settings: Settings, payload: bytes) -> str:
    rid = str(uuid.uuid4())
    if payload.startswith(b"{") and b'"options": {}' in payload:
        payload = payload.replace(b'"options": {}', f'"options": {{"redis_message_id": "{rid}"}}'.encode())
    ns = settings.broker_namespace
    with client.pipeline() as pipe:
        pipe.hset(f"{ns}:{CATEGORIZE_QUEUE}.msgs", rid, payload)
        pipe.rpush(f"{ns}:{CATEGORIZE_QUEUE}", rid)
        pipe.execute()
    return rid


def test_bad_input_catalogue(
    settings: Settings, cats: dict[str, int], conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    hostile = [
        "Robert'); DROP TABLE expenses;--",
        "STARBUCKS %s %(x)s \\x00 ' \" ; --",
        "Café Zürich ☕ 東京 STARBUCKS",
        "\u202eSTARBUCKS\u200b",
    ]
    good = data.add_expenses(conn, ["STARBUCKS", "WALMART", *hostile])
    [huge_desc] = data.add_expenses(conn, ["UBER *TRIP"])
    conn.execute("UPDATE expenses SET description = repeat('x', 1024 * 1024) WHERE id = %s", (huge_desc,))
    client = redis.Redis.from_url(settings.broker_url)
    dead_expected = {
        "unparseable json": push(client, settings, b'{"queue_name": "categorize", "args": [oops'),
        "not an object": push(client, settings, b"[1, 2, 3]"),
        "extra envelope field": push(client, settings, envelope([{"expense_ids": [good[0]]}], surprise=1)),
        "wrong types": push(client, settings, envelope([{"expense_ids": ["one"]}])),
        "negative ids": push(client, settings, envelope([{"expense_ids": [-1, good[0]]}])),
        "huge ids": push(client, settings, envelope([{"expense_ids": [2**64]}])),
        "over the maximum": push(
            client, settings, envelope([{"expense_ids": list(range(1, MAX_BATCH_IDS + 2))}])
        ),
        "unknown actor": push(client, settings, envelope([{"expense_ids": [1]}], actor="no_such_actor")),
    }
    push(client, settings, envelope([{"expense_ids": [*good, *good, huge_desc]}]))  # duplicates: written once
    worker = WorkerProcess(settings, tmp_path / "w.log")
    try:
        wait_for(
            lambda: categorized(conn) == (len(good) + 1, len(good) + 1), timeout=60, what="the good batch"
        )
        wait_for(lambda: queue_state(settings)["dead"] == len(dead_expected), timeout=60, what="dead letters")
        ns = settings.broker_namespace
        dead_rids = {r.decode() for r in client.zrange(f"{ns}:{CATEGORIZE_QUEUE}.XQ", 0, -1)}
        assert dead_rids == set(dead_expected.values())
        # still working: a later good message is processed by the same worker process
        [late] = data.add_expenses(conn, ["WALMART"])
        push(client, settings, envelope([{"expense_ids": [late]}]))
        wait_for(lambda: categorized(conn)[1] == len(good) + 2, timeout=30, what="a later batch")
        assert worker.proc.poll() is None
        assert conn.execute("SELECT count(*) FROM expenses").fetchone() == (len(good) + 2,)  # no injection
        store = open_store(settings)
        letters = {x.message_id: x for x in store.find(DeadLetterFilter(queue=CATEGORIZE_QUEUE))}
        store.close()
        assert letters[dead_expected["unparseable json"]].error_type == "DecodeError"
        assert letters[dead_expected["extra envelope field"]].error_type == "DecodeError"
        print(f"\nbad input: {len(letters)} dead-lettered, {categorized(conn)[1]} categorized")
    finally:
        worker.stop()
        client.close()
