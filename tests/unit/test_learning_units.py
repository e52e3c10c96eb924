"""Pure pieces of the learning path: the default correction key and the correction message."""

from __future__ import annotations

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker

from pipeline.learning import default_correction_key
from schemas import LEARN_ACTOR, LEARN_QUEUE
from workers.producer import Producer


def test_default_key_is_stable_and_distinguishes_corrections() -> None:
    key = default_correction_key(42, "coffee")
    assert key == default_correction_key(42, "coffee") and key.startswith("correct:42:")
    assert len({key, default_correction_key(42, "dining"), default_correction_key(43, "coffee")}) == 3
    assert len(default_correction_key(2**63 - 1, "x" * 200)) <= 200  # fits the schema's bound


def test_producer_correct_sends_one_validated_message() -> None:
    broker = StubBroker()
    try:
        producer = Producer(broker, batch_size=10)
        sent = producer.correct(42, "coffee", correlation_id="c-1")
        assert sent.idempotency_key == default_correction_key(42, "coffee")
        [raw] = broker.queues[LEARN_QUEUE].queue
        message = dramatiq.Message.decode(raw)
        assert (message.actor_name, message.queue_name, message.kwargs) == (LEARN_ACTOR, LEARN_QUEUE, {})
        assert message.args == (
            {"expense_id": 42, "category_key": "coffee", "idempotency_key": sent.idempotency_key,
             "correlation_id": "c-1"},
        )  # fmt: skip
        explicit = producer.correct(42, "coffee", idempotency_key="mine")
        assert explicit.idempotency_key == "mine"
        for bad in [(0, "coffee"), (42, ""), (42, "x" * 201)]:
            with pytest.raises(ValueError, match="invalid correction"):
                producer.correct(*bad)
        assert broker.queues[LEARN_QUEUE].qsize() == 2
    finally:
        broker.close()
