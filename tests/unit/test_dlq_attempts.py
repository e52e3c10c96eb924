"""The failure history numbers attempts the same way whatever the error: attempt 1 is the first
run, whether it is retried (a transient error) or dead-lettered at once (an invalid message)."""

from __future__ import annotations

from collections.abc import Iterator

import dramatiq
import pytest
from dramatiq.middleware import CurrentMessage

from pipeline.errors import DatabaseUnavailable, InvalidMessage, PermanentError
from workers.backends.memory import MemoryBroker, MemoryFailureLog
from workers.middleware.failures import RecordFailures
from workers.middleware.retries import SafeRetries


@pytest.fixture
def broker() -> Iterator[MemoryBroker]:
    b = MemoryBroker([SafeRetries(max_retries=2, min_backoff=1, max_backoff=5), CurrentMessage()])
    b.emit_after("process_boot")
    yield b
    b.close()


def run(
    broker: MemoryBroker, log: MemoryFailureLog, actor: dramatiq.Actor[[], None]
) -> list[tuple[int, int, bool]]:
    message = actor.send()
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=50)
    worker.start()
    try:
        broker.join(actor.queue_name, timeout=10_000, fail_fast=False)
        worker.join()
    finally:
        worker.stop()
    return [(r.attempt, r.retries, r.dead) for r in log.history(message.message_id)]


def test_attempts_count_from_one_for_retried_and_at_once_dead_letters(broker: MemoryBroker) -> None:
    log = MemoryFailureLog()
    broker.add_middleware(RecordFailures(log), before=SafeRetries)

    @dramatiq.actor(broker=broker, queue_name="t_transient", actor_name="flaky")
    def flaky() -> None:
        raise DatabaseUnavailable("connection lost")

    @dramatiq.actor(broker=broker, queue_name="t_invalid", actor_name="invalid", throws=(PermanentError,))
    def invalid() -> None:
        raise InvalidMessage("bad payload")

    # Dramatiq's retry count: 1, 2, 3 for the transient error, 0 for the invalid message
    assert run(broker, log, flaky) == [(1, 1, False), (2, 2, False), (3, 3, True)]
    assert run(broker, log, invalid) == [(1, 0, True)]
