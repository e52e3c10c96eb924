"""The enqueue and queue-statistics contract of every broker backend: in-memory, Redis, Redis
behind Sentinel (a primary, a replica and 3 Sentinels of the module's own) and RabbitMQ (a private
vhost), through the fleet's own app and producer."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import msgspec
import pytest

from schemas import CATEGORIZE_QUEUE, LEARN_QUEUE
from tests.support.rabbit import rabbit_vhost
from tests.support.sentinel import SentinelGroup, sentinel_group
from tests.support.services import wait_for
from workers.app import App, build_app
from workers.backends.base import FLEET_QUEUES, QueueStats
from workers.producer import Producer
from workers.settings import Settings

KINDS = ["memory", "redis", "redis+sentinel", "rabbitmq"]


@pytest.fixture(scope="module")
def sentinels(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelGroup]:
    with sentinel_group(tmp_path_factory.mktemp("sentinel")) as group:
        yield group


@pytest.fixture(params=KINDS)
def fleet(request: pytest.FixtureRequest, settings: Settings) -> Iterator[App]:
    with ExitStack() as stack:
        url = {"memory": "memory://", "redis": settings.broker_url}.get(request.param)
        if request.param == "redis+sentinel":
            url = request.getfixturevalue("sentinels").url()
        elif url is None:
            url = stack.enter_context(rabbit_vhost())
        app = build_app(msgspec.structs.replace(settings, broker_url=url, metrics_port=0))
        stack.callback(app.close)
        assert app.backend.kind == request.param.partition("+")[0]
        app.backend.flush()
        yield app


def stats(app: App) -> dict[str, QueueStats]:
    return {s.queue: s for s in app.backend.queue_stats()}


def stats_when(app: App, ok: Callable[[dict[str, QueueStats]], bool], what: str) -> dict[str, QueueStats]:
    def probe() -> dict[str, QueueStats] | None:
        found = stats(app)
        return found if ok(found) else None

    result: dict[str, QueueStats] = wait_for(probe, what=what)
    return result


def test_enqueue_batches_every_id_once_in_order_and_the_stats_count_them(fleet: App) -> None:
    ids = list(range(1, 1052))
    started_ms = time.time() * 1000
    report = Producer(fleet.broker, batch_size=100).enqueue([*ids, 5, 17], correlation_id="contract")
    assert (report.messages, report.ids, len(set(report.message_ids))) == (11, 1051, 11)

    before = stats_when(fleet, lambda s: s[CATEGORIZE_QUEUE].ready == 11, "11 ready")
    assert sorted(before) == sorted(FLEET_QUEUES)
    q = before[CATEGORIZE_QUEUE]
    assert (q.delayed, q.dead, q.in_flight if fleet.backend.kind != "rabbitmq" else 0) == (0, 0, 0)
    assert msgspec.structs.astuple(before[LEARN_QUEUE])[1:3] == (0, 0)
    if fleet.backend.kind == "redis":  # the head message's age; the others cannot tell it
        assert (
            q.oldest_age_s is not None and 0 <= q.oldest_age_s <= (time.time() * 1000 - started_ms) / 1000 + 1
        )
    else:
        assert q.oldest_age_s is None

    consumer = fleet.broker.consume(CATEGORIZE_QUEUE, prefetch=3, timeout=200)
    held: list[Any] = []
    try:
        while len(held) < 3:
            got = next(consumer)
            if got is not None:
                held.append(got)
        during = stats(fleet)[CATEGORIZE_QUEUE]
        if fleet.backend.kind == "rabbitmq":  # AMQP shows neither unacked nor prefetched counts
            assert during.in_flight is None
        else:
            assert (during.ready, during.in_flight) == (8, 3)
        for message in held:
            consumer.ack(message)
        rest: list[Any] = []
        deadline = time.monotonic() + 10
        while len(held) + len(rest) < 11 and time.monotonic() < deadline:
            got = next(consumer)
            if got is not None:
                consumer.ack(got)
                rest.append(got)
    finally:
        consumer.close()
    messages = [m._message for m in held + rest]
    sent = [
        i
        for m in sorted(messages, key=lambda m: m.args[0]["expense_ids"][0])
        for i in m.args[0]["expense_ids"]
    ]
    assert sent == ids
    assert {m.message_id for m in messages} == set(report.message_ids)
    assert {m.args[0]["correlation_id"] for m in messages} == {"contract"}
    after = stats_when(fleet, lambda s: s[CATEGORIZE_QUEUE].ready == 0, "drained")[CATEGORIZE_QUEUE]
    assert (after.delayed, after.dead) == (0, 0)
    assert after.in_flight == (None if fleet.backend.kind == "rabbitmq" else 0)


def test_a_correction_goes_to_the_learn_queue(fleet: App) -> None:
    correction = Producer(fleet.broker, batch_size=10).correct(42, "groceries", correlation_id="c1")
    assert correction.idempotency_key.startswith("correct:42:")
    wait_for(lambda: stats(fleet)[LEARN_QUEUE].ready == 1, what="one correction queued")
    assert stats(fleet)[CATEGORIZE_QUEUE].ready == 0


def test_health_check_answers_and_a_dead_broker_is_reported(fleet: App, settings: Settings) -> None:
    assert fleet.backend.check().ok is True
    if fleet.backend.kind == "memory":
        return  # nothing to lose
    from workers.backends import backend_for

    dead_url = {"redis": "redis://127.0.0.1:1/0", "rabbitmq": "amqp://guest:guest@127.0.0.1:1/%2F"}
    down = backend_for(msgspec.structs.replace(settings, broker_url=dead_url[fleet.backend.kind]))
    try:
        check = down.check()
        expected = {"redis": "ConnectionError: ", "rabbitmq": "AMQPConnectionError: "}[fleet.backend.kind]
        assert check.ok is False and check.error is not None and check.error.startswith(expected)
    finally:
        down.close()
