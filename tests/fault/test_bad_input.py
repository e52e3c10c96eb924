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

from schemas import CATEGORIZE_ACTOR, CATEGORIZE_QUEUE, MAX_BATCH_IDS
from tests.support import data
from tests.support.broker import queue_state
from tests.support.data import categorized
from tests.support.services import WorkerProcess, wait_for
from workers.backends.redis.keys import RedisKeys
from workers.dlq import open_store
from workers.dlq.base import DeadLetter, DeadLetterFilter
from workers.settings import Settings

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
    keys = RedisKeys(settings.broker_namespace)
    with client.pipeline() as pipe:
        pipe.hset(keys.messages(CATEGORIZE_QUEUE), rid, payload)
        pipe.rpush(keys.queue(CATEGORIZE_QUEUE), rid)
        pipe.execute()
    return rid


def redis_id(letter: DeadLetter) -> str:
    """The Redis message id a dead letter was pushed with (an undecodable one is listed by it)."""
    options = (letter.payload or {}).get("options") or {}
    return str(options.get("redis_message_id") or letter.message_id)


def as_defined(letter: DeadLetter, error_type: str, text: str) -> bool:
    """Dead-lettered with this final error, on its first attempt: one failure recorded (the
    final one) with retries == 0, and no retry count in the message."""
    retries = int(((letter.payload or {}).get("options") or {}).get("retries", 0))
    return (
        letter.error_type == error_type
        and text in letter.error
        and [(r.retries, r.dead) for r in letter.history] == [(0, True)]
        and retries == 0
    )


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
    #: case -> (Redis message id, the final error recorded for it: type and a part of its text)
    dead_expected = {
        "unparseable json": (
            push(client, settings, b'{"queue_name": "categorize", "args": [oops'),
            ("DecodeError", "JSON is malformed"),
        ),
        "not an object": (push(client, settings, b"[1, 2, 3]"), ("DecodeError", "got `array`")),
        "extra envelope field": (
            push(client, settings, envelope([{"expense_ids": [good[0]]}], surprise=1)),
            ("DecodeError", "unexpected keyword argument 'surprise'"),
        ),
        "wrong types": (
            push(client, settings, envelope([{"expense_ids": ["one"]}])),
            ("InvalidMessage", "Expected `int`, got `str` - at `$.expense_ids[0]`"),
        ),
        "negative ids": (
            push(client, settings, envelope([{"expense_ids": [-1, good[0]]}])),
            ("InvalidMessage", "Expected `int` >= 1 - at `$.expense_ids[0]`"),
        ),
        "huge ids": (
            push(client, settings, envelope([{"expense_ids": [2**64]}])),
            ("InvalidMessage", "Expected `int` <= 9223372036854775807"),
        ),
        "over the maximum": (
            push(client, settings, envelope([{"expense_ids": list(range(1, MAX_BATCH_IDS + 2))}])),
            ("InvalidMessage", f"length <= {MAX_BATCH_IDS}"),
        ),
        "unknown actor": (
            push(client, settings, envelope([{"expense_ids": [1]}], actor="no_such_actor")),
            ("ActorNotFound", "no_such_actor"),
        ),
    }
    push(client, settings, envelope([{"expense_ids": [*good, *good, huge_desc]}]))  # duplicates: written once
    worker = WorkerProcess(settings, tmp_path / "w.log")
    try:
        wait_for(
            lambda: categorized(conn) == (len(good) + 1, len(good) + 1), timeout=60, what="the good batch"
        )
        wait_for(lambda: queue_state(settings)["dead"] == len(dead_expected), timeout=60, what="dead letters")
        dead_key = RedisKeys(settings.broker_namespace).dead(CATEGORIZE_QUEUE)
        dead_rids = {r.decode() for r in client.zrange(dead_key, 0, -1)}
        assert dead_rids == {rid for rid, _ in dead_expected.values()}
        # still working: a later good message is processed by the same worker process
        [late] = data.add_expenses(conn, ["WALMART"])
        push(client, settings, envelope([{"expense_ids": [late]}]))
        wait_for(lambda: categorized(conn)[1] == len(good) + 2, timeout=30, what="a later batch")
        assert worker.alive()
        assert conn.execute("SELECT count(*) FROM expenses").fetchone() == (len(good) + 2,)  # no injection
        store = open_store(settings)
        letters = {redis_id(x): x for x in store.find(DeadLetterFilter(queue=CATEGORIZE_QUEUE))}
        store.close()
        found = {case: letters[rid] for case, (rid, _) in dead_expected.items()}
        print(f"\nbad input: {len(letters)} dead-lettered, {categorized(conn)[1]} categorized")
        for case, x in found.items():
            print(f"  {case}: {x.error_type}: {x.error[:80]} (attempts: {[r.retries for r in x.history]})")
        wrong = {
            case: (x.error_type, x.error, [(r.retries, r.dead) for r in x.history])
            for case, x in found.items()
            if not as_defined(x, *dead_expected[case][1])
        }
        assert wrong == {}, "dead letters without their defined reason, or retried"
    finally:
        worker.stop()
        client.close()
