"""Hostile messages sent raw to the Redis broker (issue "Nothing a producer sends ... stops the
fleet"): oversized ones are dead-lettered before decoding, unstorable strings before any SQL,
envelopes that lie about where they are stored end in the dead-letter queue (none stays unacked
to re-run), made-up names add no metric labels, and the dead-letter tool takes every shape."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import msgspec
import pika
import psycopg
import pytest
import redis

from schemas import CATEGORIZE_QUEUE, LEARN_ACTOR, LEARN_QUEUE
from tests.fault.test_bad_input import envelope, push
from tests.support import data
from tests.support.broker import queue_state
from tests.support.data import categorized
from tests.support.rabbit import rabbit_vhost
from tests.support.scrape import scrape
from tests.support.services import WorkerProcess, wait_for
from workers.backends.redis.keys import RedisKeys
from workers.dlq import open_store
from workers.dlq.base import DeadLetterFilter
from workers.metrics import ACTORS
from workers.settings import Settings

pytestmark = pytest.mark.fault


def push_as(
    client: redis.Redis, settings: Settings, fields: dict[str, Any], *, queue: str = CATEGORIZE_QUEUE
) -> str:
    """``fields`` as a raw envelope on ``queue``'s list, its options exactly as given, except that a
    ``redis_message_id`` of None is replaced by the Redis message id used."""
    rid = str(uuid.uuid4())
    options = fields.get("options")
    if isinstance(options, dict) and "redis_message_id" in options and options["redis_message_id"] is None:
        fields = {**fields, "options": {**options, "redis_message_id": rid}}
    keys = RedisKeys(settings.broker_namespace)
    with client.pipeline() as pipe:
        pipe.hset(keys.messages(queue), rid, json.dumps(fields).encode())
        pipe.rpush(keys.queue(queue), rid)
        pipe.execute()
    return rid


def fields(args: list[Any], **extra: Any) -> dict[str, Any]:
    out = json.loads(envelope(args))
    out["options"] = {"redis_message_id": None}
    return {**out, **extra}


def test_hostile_messages_end_in_the_dlq_promptly_and_the_worker_goes_on(
    settings: Settings, cats: dict[str, int], conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    good = data.add_expenses(conn, ["STARBUCKS", "WALMART"])
    client = redis.Redis.from_url(settings.broker_url)
    made_up_actor = f"made_up_{uuid.uuid4().hex[:8]}"
    too_big = settings.max_message_bytes
    #: case -> (Redis message id, the key the record is under, final error type, part of its text)
    cases: dict[str, tuple[str, str, str]] = {}

    def case(name: str, rid: str, error_type: str, text: str) -> None:
        cases[name] = (rid, error_type, text)

    def listed_as(message_id: str, envelope_fields: dict[str, Any]) -> str:
        """Pushed with a wrong Redis message id: its letter is found by its message id."""
        push_as(client, settings, envelope_fields)
        return message_id

    case(
        "60 KB correlation_id",
        push(client, settings, envelope([{"expense_ids": [good[0]], "correlation_id": "c" * 60_000}])),
        "InvalidMessage",
        "$.correlation_id",
    )
    case(
        "10 MB field",
        push(client, settings, envelope([{"expense_ids": [good[0]], "pad": "x" * 10_000_000}])),
        "MessageTooLarge",
        f"over the limit of {too_big}",
    )
    case(
        "just over the limit",
        push(client, settings, envelope([{"expense_ids": [good[0]], "correlation_id": "y" * too_big}])),
        "MessageTooLarge",
        "not decoded",
    )
    case(
        "NUL in correlation_id",
        push(client, settings, envelope([{"expense_ids": [good[0]], "correlation_id": "a\x00b"}])),
        "InvalidMessage",
        "$.correlation_id",
    )
    case(
        "NUL in category_key",
        push_as(
            client,
            settings,
            fields(
                [{"expense_id": good[0], "category_key": "gro\x00ceries", "idempotency_key": "k1"}],
                queue_name=LEARN_QUEUE,
                actor_name=LEARN_ACTOR,
            ),
            queue=LEARN_QUEUE,
        ),
        "InvalidMessage",
        "$.category_key",
    )
    case(
        "long idempotency_key",
        push_as(
            client,
            settings,
            fields(
                [{"expense_id": good[0], "category_key": "groceries", "idempotency_key": "k" * 201}],
                queue_name=LEARN_QUEUE,
                actor_name=LEARN_ACTOR,
            ),
            queue=LEARN_QUEUE,
        ),
        "InvalidMessage",
        "$.idempotency_key",
    )
    case(
        "no redis_message_id",
        listed_as("no-rid", fields([{"expense_ids": [good[0]]}], options={}, message_id="no-rid")),
        "InvalidEnvelope",
        "options.redis_message_id",
    )
    case(
        "someone else's redis_message_id",
        listed_as(
            "other-rid",
            fields([{"expense_ids": [good[0]]}], options={"redis_message_id": "x"}, message_id="other-rid"),
        ),
        "InvalidEnvelope",
        "options.redis_message_id",
    )
    case(
        "learn message on the categorize list",
        push_as(
            client,
            settings,
            fields(
                [{"expense_id": good[0], "category_key": "groceries", "idempotency_key": "k2"}],
                queue_name=LEARN_QUEUE,
                actor_name=LEARN_ACTOR,
            ),
        ),
        "InvalidEnvelope",
        "queue_name 'learn'",
    )
    case(
        "unknown queue_name",
        push_as(client, settings, fields([{"expense_ids": [good[0]]}], queue_name="nowhere")),
        "InvalidEnvelope",
        "queue_name 'nowhere'",
    )
    case(
        "integer message_id",
        push_as(client, settings, fields([{"expense_ids": [good[0]]}], message_id=12345)),
        "DecodeError",
        "message_id",
    )
    no_id = fields([{"expense_ids": [good[0]]}])
    del no_id["message_id"]
    case("no message_id", push_as(client, settings, no_id), "DecodeError", "message_id")
    case(
        "NUL in message_id",
        push_as(client, settings, fields([{"expense_ids": [good[0]]}], message_id="m\x00")),
        "DecodeError",
        "message_id",
    )
    case(
        "options not an object",
        push_as(client, settings, fields([{"expense_ids": [good[0]]}], options=[1])),
        "DecodeError",
        "options",
    )
    case(
        "made-up actor",
        push(client, settings, envelope([{"expense_ids": [good[0]]}], actor=made_up_actor)),
        "ActorNotFound",
        made_up_actor,
    )
    push(client, settings, envelope([{"expense_ids": good}]))
    started = time.monotonic()
    worker = WorkerProcess(settings, tmp_path / "w.log")
    try:
        worker.wait_ready()
        wait_for(lambda: categorized(conn)[1] == len(good), timeout=30, what="the good batch")

        def dead() -> int:
            return queue_state(settings)["dead"] + queue_state(settings, LEARN_QUEUE)["dead"]

        # promptly: well within the heartbeat timeout, so not by a crash-recovery re-queue
        wait_for(
            lambda: dead() == len(cases),
            timeout=settings.broker_heartbeat_timeout_ms / 2000,
            what="dead letters",
        )
        elapsed = time.monotonic() - started
        # every envelope ended: nothing left unacked or in a message hash to re-run after a restart
        wait_for(lambda: queue_state(settings)["unacked"] == 0, timeout=10, what="nothing unacked")
        for queue in (CATEGORIZE_QUEUE, LEARN_QUEUE):
            state = queue_state(settings, queue)
            assert (state["queued"], state["messages"], state["unacked"]) == (0, 0, 0), queue
        # still working afterwards
        [late] = data.add_expenses(conn, ["WALMART"])
        push(client, settings, envelope([{"expense_ids": [late]}]))
        wait_for(lambda: categorized(conn)[1] == len(good) + 1, timeout=30, what="a later batch")
        assert worker.alive()

        store = open_store(settings)
        try:
            letters = store.find(DeadLetterFilter())
        finally:
            store.close()

        def listed(key: str) -> Any:
            """The letter listed as ``key`` (its message id, or its Redis message id)."""
            for x in letters:
                if key in (x.message_id, ((x.payload or {}).get("options") or {}).get("redis_message_id")):
                    return x
            return None

        print(f"\nhostile: {len(letters)} dead-lettered in {elapsed:.1f} s")
        wrong = {}
        for name, (rid, error_type, text) in cases.items():
            x = listed(rid)
            got = (
                None if x is None else (x.error_type, x.error[:160], [(r.retries, r.dead) for r in x.history])
            )
            print(f"  {name}: {got}")
            if (
                x is None
                or x.error_type != error_type
                or text not in x.error
                or [(r.retries, r.dead) for r in x.history] != [(0, True)]
            ):
                wrong[name] = got
        assert wrong == {}, "dead letters without their defined reason, or retried"

        # bounded labels: the made-up actor is counted as "unknown", never as its own series
        metrics = scrape(settings.metrics_port)
        assert not [k for k in metrics if made_up_actor in str(k)]
        assert metrics.total("dramatiq_message_rejects_total", actor_name="unknown") >= 1
        names = {dict(labels).get("actor_name") for _, labels in metrics} - {None}
        assert names <= {*ACTORS, "unknown"}, names
    finally:
        worker.stop()
        client.close()


def test_every_dead_letter_shape_can_be_listed_shown_replayed_and_purged(
    settings: Settings, cats: dict[str, int]
) -> None:
    """Dead letters as any producer could have left them in the XQ, straight into Redis."""
    client = redis.Redis.from_url(settings.broker_url)
    keys = RedisKeys(settings.broker_namespace)
    now = int(time.time() * 1000)
    base = json.loads(envelope([{"expense_ids": [1]}]))
    no_id = {k: v for k, v in base.items() if k != "message_id"}
    shapes: dict[str, bytes] = {
        "good": json.dumps({**base, "message_id": "good-1"}).encode(),
        "no message_id": json.dumps(no_id).encode(),
        "integer message_id": json.dumps({**base, "message_id": 7}).encode(),
        "not json": b"\xff\x00 not json {",
        "array": b"[1, 2]",
        "wrong queue": json.dumps({**base, "message_id": "wrong-q", "queue_name": LEARN_QUEUE}).encode(),
    }
    rids = {name: f"rid-{i}" for i, name in enumerate(shapes)}
    for i, (name, body) in enumerate(shapes.items()):
        client.zadd(keys.dead(CATEGORIZE_QUEUE), {rids[name]: now - i})
        client.hset(keys.dead_messages(CATEGORIZE_QUEUE), rids[name], body)
    store = open_store(settings)
    try:
        letters = store.find()
        assert len(letters) == len(shapes)
        ids = {x.message_id for x in letters}
        # a readable message is listed under its id, anything else under its Redis id
        assert {
            "good-1",
            "wrong-q",
            rids["no message_id"],
            rids["integer message_id"],
            rids["not json"],
        } <= ids
        shown = store.show(rids["not json"])
        assert (
            shown is not None and shown.payload is None and shown.raw is not None and "not json" in shown.raw
        )
        shown = store.show(rids["integer message_id"])
        assert shown is not None and shown.raw is not None and '"message_id": 7' in shown.raw
        dry = store.replay(DeadLetterFilter(), dry_run=True)
        assert dry.message_ids == ["good-1"]
        assert set(dry.skipped) == ids - {"good-1"}
        done = store.replay(DeadLetterFilter())
        assert (done.done, done.message_ids) == (1, ["good-1"])
        assert set(done.skipped) == ids - {"good-1"}
        assert client.llen(keys.queue(CATEGORIZE_QUEUE)) == 1
        purged = store.purge(DeadLetterFilter(), operator="test")
        assert purged.done == len(shapes) - 1
        assert client.zcard(keys.dead(CATEGORIZE_QUEUE)) == 0
        assert client.hlen(keys.dead_messages(CATEGORIZE_QUEUE)) == 0
    finally:
        store.close()
        client.close()


def test_rabbitmq_dead_letters_an_oversized_message_before_decoding_it(
    settings: Settings, cats: dict[str, int], conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    with rabbit_vhost() as url:
        rabbit = msgspec.structs.replace(settings, broker_url=url)
        worker = WorkerProcess(rabbit, tmp_path / "w.log")
        try:
            worker.wait_ready()
            good = data.add_expenses(conn, ["STARBUCKS", "WALMART"])
            big = envelope([{"expense_ids": [good[0]], "correlation_id": "z" * 10_000_000}])
            connection = pika.BlockingConnection(pika.URLParameters(url))
            channel = connection.channel()
            channel.confirm_delivery()
            for body in (big, envelope([{"expense_ids": good}])):
                channel.basic_publish("", CATEGORIZE_QUEUE, body, pika.BasicProperties(delivery_mode=2))
            started = time.monotonic()
            wait_for(lambda: categorized(conn)[1] == len(good), timeout=30, what="the good batch")

            def dead() -> int:
                return channel.queue_declare(f"{CATEGORIZE_QUEUE}.XQ", passive=True).method.message_count

            wait_for(lambda: dead() == 1, timeout=15, what="the oversized message dead-lettered")
            print(f"\nrabbitmq: oversized message dead-lettered in {time.monotonic() - started:.1f} s")
            connection.close()
            # rejected before decoding: the reason is the size, not the payload's validation
            assert "MessageTooLarge" in worker.log()
            assert "InvalidMessage" not in worker.log()
            assert worker.alive()
        finally:
            worker.stop()
