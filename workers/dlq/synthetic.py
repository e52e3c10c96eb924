"""Dead letters as the fleet leaves them in Redis, written fast (pipelined): for the console's
benchmark and the dead-letter scale test. Each letter: its payload under a Redis id in
``<q>.XQ.msgs``, the id in ``<q>.XQ`` scored by its time of death, and its failure history as
``RedisFailureLog`` writes it."""

from __future__ import annotations

import time
from typing import Any
from uuid import uuid4

import msgspec
import redis

from schemas import CATEGORIZE_QUEUE, LEARN_QUEUE
from workers.backends.redis.keys import RedisKeys
from workers.encoder import MsgspecEncoder
from workers.failures import FAILURE_TTL_SECONDS, FailureRecord
from workers.producer import Producer

IDS_PER_BATCH = 10
RUNS = 1_000  # distinct correlation ids
ERRORS = ["InvalidMessage", "DatabaseConflict", "UnknownCategory", "DeliveryLimitExceeded"]
#: Seconds between two letters' deaths (the newest died now).
SPACING_S = 5


def letter_of(i: int) -> tuple[str, str, dict[str, Any]]:
    """Letter ``i``: (queue, actor, spec) — one in ten on ``learn``, ten expense ids each
    (``i * 10 + 1`` ...), correlation id ``run-<i % RUNS>``, errors in turn."""
    queue = LEARN_QUEUE if i % 10 == 0 else CATEGORIZE_QUEUE
    actor = "learn_from_correction" if queue == LEARN_QUEUE else "categorize_batch"
    ids = list(range(i * IDS_PER_BATCH + 1, (i + 1) * IDS_PER_BATCH + 1))
    return queue, actor, {"ids": ids, "cid": f"run-{i % RUNS}", "error": ERRORS[i % len(ERRORS)]}


def fill(client: redis.Redis, keys: RedisKeys, letters: int) -> dict[int, str]:
    """Write ``letters`` dead letters; letter number -> message id."""
    encoder = MsgspecEncoder()
    now = int(time.time() * 1000)
    mids: dict[int, str] = {}
    pipe = client.pipeline(transaction=False)
    for i in range(letters):
        queue, actor, spec = letter_of(i)
        rid = str(uuid4())
        message = Producer.batch_message(spec["ids"], spec["cid"]).copy(
            queue_name=queue,
            actor_name=actor,
            options={"redis_message_id": rid, "retries": 3, "traceback": "Traceback ...\nValueError: x"},
        )
        mids[i] = message.message_id
        died = now - (letters - i) * SPACING_S * 1000
        pipe.hset(keys.dead_messages(queue), rid, encoder.encode(message.asdict()))
        pipe.zadd(keys.dead(queue), {rid: died})
        record = FailureRecord(
            message_id=message.message_id,
            queue_name=queue,
            actor_name=actor,
            retries=3,
            error_type=spec["error"],
            error=f"error of letter {i}",
            dead=True,
            at_ms=died,
            attempt=3,
        )
        pipe.rpush(keys.failures(message.message_id), msgspec.json.encode(record))
        pipe.expire(keys.failures(message.message_id), FAILURE_TTL_SECONDS)
        if len(pipe) >= 4_000:
            pipe.execute()
    pipe.execute()
    return mids
