"""Dead letters as the fleet leaves them, written fast: for the console's benchmark and the
dead-letter scale test. With Redis (pipelined), each letter: its payload under a Redis id in
``<q>.XQ.msgs``, the id in ``<q>.XQ`` scored by its time of death, and its failure history as
``RedisFailureLog`` writes it. With RabbitMQ: ``workers.backends.rabbitmq.synthetic``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any
from uuid import uuid4

import dramatiq
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


class Letter(msgspec.Struct):
    """Letter ``i`` as the fleet leaves it: its queue, message, time of death and failure record."""

    i: int
    queue: str
    actor: str
    spec: dict[str, Any]
    message: dramatiq.Message[Any]
    died_at_ms: int
    record: FailureRecord


def letters(n: int, *, now_ms: int, options: dict[str, Any] | None = None) -> Iterator[Letter]:
    """``n`` letters, the newest dead at ``now_ms``, ``SPACING_S`` apart; ``options``: the
    message's own (each gets ``retries`` and a traceback too)."""
    for i in range(n):
        queue, actor, spec = letter_of(i)
        message = Producer.batch_message(spec["ids"], spec["cid"]).copy(
            queue_name=queue,
            actor_name=actor,
            options={**(options or {}), "retries": 3, "traceback": "Traceback ...\nValueError: x"},
        )
        died = now_ms - (n - i) * SPACING_S * 1000
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
        yield Letter(
            i=i, queue=queue, actor=actor, spec=spec, message=message, died_at_ms=died, record=record
        )


def fill(client: redis.Redis, keys: RedisKeys, letters_n: int) -> dict[int, str]:
    """Write ``letters_n`` dead letters; letter number -> message id."""
    encoder = MsgspecEncoder()
    now = int(time.time() * 1000)
    mids: dict[int, str] = {}
    pipe = client.pipeline(transaction=False)
    for x in letters(letters_n, now_ms=now):
        rid = str(uuid4())
        message = x.message.copy(options={**x.message.options, "redis_message_id": rid})
        mids[x.i] = message.message_id
        pipe.hset(keys.dead_messages(x.queue), rid, encoder.encode(message.asdict()))
        pipe.zadd(keys.dead(x.queue), {rid: x.died_at_ms})
        pipe.rpush(keys.failures(message.message_id), msgspec.json.encode(x.record))
        pipe.expire(keys.failures(message.message_id), FAILURE_TTL_SECONDS)
        if len(pipe) >= 4_000:
            pipe.execute()
    pipe.execute()
    return mids
