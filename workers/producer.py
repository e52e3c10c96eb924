"""The producer API: expense IDs in, batch messages out, batched as the broker's backend allows."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

import dramatiq
import msgspec

from pipeline.learning import default_correction_key
from schemas import (
    CATEGORIZE_QUEUE,
    LANE_INTERACTIVE,
    LANES,
    LEARN_ACTOR,
    LEARN_QUEUE,
    MAX_BATCH_IDS,
    MAX_EXPENSE_ID,
    Correction,
)
from workers.backends.base import BatchEnqueue


class EnqueueReport(msgspec.Struct):
    messages: int
    ids: int
    message_ids: list[str]


T = TypeVar("T")


def chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def validate_ids(ids: Iterable[int]) -> list[int]:
    """Integer IDs in the bigint range, de-duplicated, in first-seen order; ValueError otherwise."""
    out: dict[int, None] = {}
    for raw in ids:
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise ValueError(f"expense id must be an integer, got {raw!r}")
        if not 1 <= raw <= MAX_EXPENSE_ID:
            raise ValueError(f"expense id out of range: {raw}")
        out[raw] = None
    return list(out)


def lane_route(lane: str) -> tuple[str, str]:
    """The (queue, actor) of a lane's batch messages; ValueError naming the lanes for any other name."""
    try:
        return LANES[lane]
    except KeyError:
        raise ValueError(f"unknown lane {lane!r}: the lanes are {', '.join(LANES)}") from None


def lane_queue(lane: str) -> str:
    """The queue of a lane; ValueError naming the lanes for any other name."""
    return lane_route(lane)[0]


class Producer:
    def __init__(self, broker: dramatiq.Broker, *, batch_size: int):
        if not 1 <= batch_size <= MAX_BATCH_IDS:
            raise ValueError(f"batch_size must be in 1..{MAX_BATCH_IDS}")
        self.broker = broker
        self.batch_size = batch_size
        broker.declare_queue(CATEGORIZE_QUEUE)

    def enqueue(
        self, expense_ids: Iterable[int], *, correlation_id: str | None = None, lane: str = LANE_INTERACTIVE
    ) -> EnqueueReport:
        """``expense_ids`` in batch messages of at most ``batch_size`` on ``lane``: ``interactive``
        (queue ``categorize``, the default: a person waits for it) or ``bulk`` (queue
        ``categorize_bulk``: backfills, re-categorizations; workers run what they hold of the
        interactive lane first). ValueError on a bad id or an unknown lane."""
        queue = lane_queue(lane)
        ids = validate_ids(expense_ids)
        self.broker.declare_queue(queue)
        messages = [
            self.batch_message(chunk, correlation_id, lane=lane) for chunk in chunked(ids, self.batch_size)
        ]
        self.send(messages)
        return EnqueueReport(len(messages), len(ids), [m.message_id for m in messages])

    def correct(
        self,
        expense_id: int,
        category_key: str,
        *,
        idempotency_key: str | None = None,
        correlation_id: str | None = None,
    ) -> Correction:
        """Enqueue a user's correction for ``learn_from_correction``; returns the payload sent.
        Without a key, ``default_correction_key(expense_id, category_key)`` is used: sending the
        same correction twice records it once. ValueError on a payload the schema refuses."""
        correction = self.build_correction(
            expense_id, category_key, idempotency_key=idempotency_key, correlation_id=correlation_id
        )
        self.send_correction(correction)
        return correction

    @staticmethod
    def build_correction(
        expense_id: int,
        category_key: str,
        *,
        idempotency_key: str | None = None,
        correlation_id: str | None = None,
    ) -> Correction:
        """The ``Correction`` ``correct`` would send (nothing sent); ValueError if the schema refuses it."""
        raw: dict[str, Any] = {
            "expense_id": expense_id,
            "category_key": category_key,
            "idempotency_key": idempotency_key
            if idempotency_key is not None
            else default_correction_key(expense_id, category_key),
        }
        if correlation_id:
            raw["correlation_id"] = correlation_id
        try:
            return msgspec.convert(raw, Correction)
        except msgspec.ValidationError as exc:
            raise ValueError(f"invalid correction: {exc}") from None

    def send_correction(self, correction: Correction) -> None:
        self.broker.declare_queue(LEARN_QUEUE)
        self.send([self.correction_message(correction)])

    @staticmethod
    def correction_message(correction: Correction) -> dramatiq.Message[Any]:
        return dramatiq.Message(
            queue_name=LEARN_QUEUE,
            actor_name=LEARN_ACTOR,
            args=(msgspec.to_builtins(correction),),
            kwargs={},
            options={},
        )

    @staticmethod
    def batch_message(
        ids: list[int], correlation_id: str | None = None, *, lane: str = LANE_INTERACTIVE
    ) -> dramatiq.Message[Any]:
        queue_name, actor_name = lane_route(lane)
        payload: dict[str, Any] = {"expense_ids": ids}
        if correlation_id:
            payload["correlation_id"] = correlation_id
        return dramatiq.Message(
            queue_name=queue_name,
            actor_name=actor_name,
            args=(payload,),
            kwargs={},
            options={},
        )

    def send(self, messages: list[dramatiq.Message[Any]]) -> None:
        """In as few round trips as the broker allows (a backend's broker batches; any other
        Dramatiq broker gets one ``enqueue`` per message)."""
        if isinstance(self.broker, BatchEnqueue):
            self.broker.enqueue_many(messages)
        else:
            for message in messages:
                self.broker.enqueue(message)
