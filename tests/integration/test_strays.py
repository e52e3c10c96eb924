"""A message to a queue that is not the fleet's (a producer's typo, an unknown actor's queue)
sits where no worker consumes it: ``Backend.stray_queues`` finds it and ``catfleet status``
shows it, text and ``--json``, with a warning line."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import dramatiq
import pytest
import redis

from schemas import CATEGORIZE_QUEUE
from tests.support.services import flush_namespace, run_catfleet
from workers.backends.memory import MemoryBackend
from workers.backends.redis import RedisBackend
from workers.backends.redis.keys import RedisKeys
from workers.settings import Settings


@pytest.fixture
def strays(settings: Settings) -> Iterator[RedisKeys]:
    """Raw writes, as a producer in another language would leave them: a message id pushed on an
    undeclared queue ``categorise`` (a typo) and a payload in another one's ``.msgs`` hash."""
    flush_namespace(settings)
    keys = RedisKeys(settings.broker_namespace)
    client = redis.Redis.from_url(settings.broker_url)
    client.rpush(keys.queue("categorise"), "m-1", "m-2")
    client.hset(keys.messages("categorise"), mapping={"m-1": b"{}", "m-2": b"{}"})
    client.hset(keys.messages("reports"), "m-3", b"{}")
    client.rpush(keys.queue(CATEGORIZE_QUEUE), "m-4")  # the fleet's own: not a stray
    try:
        yield keys
    finally:
        flush_namespace(settings)
        client.close()


def _status(settings: Settings, *argv: str) -> subprocess.CompletedProcess[str]:
    return run_catfleet(settings, "status", *argv)


def test_redis_backend_lists_undeclared_queues_holding_messages(
    settings: Settings, strays: RedisKeys
) -> None:
    backend = RedisBackend(settings)
    try:
        found = {q.queue: q.ready for q in backend.stray_queues()}
    finally:
        backend.close()
    assert found == {"categorise": 2, "reports": 0}


def test_status_shows_stray_queues_with_a_warning(settings: Settings, strays: RedisKeys) -> None:
    text = _status(settings)
    assert text.returncode == 0, text.stderr
    warning = [line for line in text.stdout.splitlines() if line.startswith("WARNING")]
    assert len(warning) == 1 and "categorise (2 ready)" in warning[0] and "reports" in warning[0], text.stdout
    assert any(line.split()[:2] == ["categorise", "2"] for line in text.stdout.splitlines())
    as_json = _status(settings, "--json")
    assert as_json.returncode == 0, as_json.stderr
    body = json.loads(as_json.stdout)
    assert {q["queue"]: q["ready"] for q in body["stray_queues"]} == {"categorise": 2, "reports": 0}
    assert {q["queue"]: q["ready"] for q in body["queues"]}[CATEGORIZE_QUEUE] == 1


def test_status_without_strays_has_no_warning(settings: Settings) -> None:
    flush_namespace(settings)
    text = _status(settings)
    assert text.returncode == 0, text.stderr
    assert "WARNING" not in text.stdout
    assert "replayed" in text.stdout and "purged" in text.stdout  # the columns the README names
    assert json.loads(_status(settings, "--json").stdout)["stray_queues"] == []


def test_memory_backend_lists_declared_queues_beyond_the_fleets(settings: Settings) -> None:
    backend = MemoryBackend(settings)
    broker = backend.memory_broker
    for queue in (CATEGORIZE_QUEUE, "typo", "empty"):
        broker.declare_queue(queue)
    for queue in (CATEGORIZE_QUEUE, "typo"):
        broker.enqueue(dramatiq.Message(queue_name=queue, actor_name="a", args=(), kwargs={}, options={}))
    assert [(q.queue, q.ready) for q in backend.stray_queues() or []] == [("typo", 1)]
