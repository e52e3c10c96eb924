"""The actors: decode and validate the payload, call the pipeline, log the outcome."""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any, TypeVar

import dramatiq
import msgspec
from dramatiq.middleware import CurrentMessage

from pipeline.errors import InvalidMessage, PermanentError
from schemas import CATEGORIZE_ACTOR, CATEGORIZE_QUEUE, LEARN_ACTOR, LEARN_QUEUE, CategorizeBatch, Correction
from workers.runtime import RuntimeHolder

log = logging.getLogger("catfleet.batch")
P = TypeVar("P", bound=msgspec.Struct)


def decode_payload(kind: type[P], args: tuple[Any, ...], kwargs: dict[str, Any]) -> P:
    """The single positional payload object, validated; InvalidMessage (permanent) otherwise."""
    if kwargs or len(args) != 1 or not isinstance(args[0], dict):
        raise InvalidMessage(
            f"{kind.__name__}: expected args=[{{...payload...}}] and no kwargs, "
            f"got {len(args)} arg(s) and {len(kwargs)} kwarg(s)"
        )
    try:
        return msgspec.convert(args[0], kind)
    except msgspec.ValidationError as exc:
        raise InvalidMessage(f"{kind.__name__}: {exc}") from exc


def declare_actors(broker: dramatiq.Broker, holder: RuntimeHolder) -> dict[str, dramatiq.Actor[Any, Any]]:
    def categorize_batch(*args: Any, **kwargs: Any) -> None:
        message = CurrentMessage.get_current_message()
        batch = decode_payload(CategorizeBatch, args, kwargs)
        message_id = message.message_id if message else None
        enqueued_at = dt.datetime.fromtimestamp(message.message_timestamp / 1000, dt.UTC) if message else None
        correlation_id = batch.correlation_id or message_id
        report = holder.runtime.categorizer.categorize(
            batch.expense_ids, message_id=message_id, correlation_id=correlation_id, enqueued_at=enqueued_at
        )
        log.info(
            "batch done",
            extra={
                "event": "batch",
                "actor": CATEGORIZE_ACTOR,
                "message_id": message_id,
                "correlation_id": correlation_id,
                "size": report.requested,
                "outcomes": report.outcomes,
                "written": report.written,
                "unchanged": report.unchanged,
                "cache": report.cache,
                "ruleset_version": report.ruleset_version,
                "duration_ms": report.duration_ms,
            },
        )
        from workers import metrics  # late: prometheus_client only after its directory is set

        latency_s = time.time() - message.message_timestamp / 1000 if message else None
        metrics.record_batch(report, actor_name=CATEGORIZE_ACTOR, latency_s=latency_s)
        if report.ruleset_version is not None:
            holder.ruleset_version = report.ruleset_version

    categorize = dramatiq.actor(
        broker=broker,
        actor_name=CATEGORIZE_ACTOR,
        queue_name=CATEGORIZE_QUEUE,
        throws=(PermanentError,),
    )(categorize_batch)

    def learn_from_correction(*args: Any, **kwargs: Any) -> None:
        message = CurrentMessage.get_current_message()
        correction = decode_payload(Correction, args, kwargs)
        message_id = message.message_id if message else None
        correlation_id = correction.correlation_id or message_id
        report = holder.runtime.learner.learn(
            correction, message_id=message_id, correlation_id=correlation_id
        )
        log.info(
            "correction done",
            extra={
                "event": "correction",
                "actor": LEARN_ACTOR,
                "message_id": message_id,
                "correlation_id": correlation_id,
                "expense_id": correction.expense_id,
                "duplicate": report.duplicate,
                "category_id": report.category_id,
                "previous_category_id": report.previous_category_id,
                "pattern_id": report.pattern_id,
                "weakened": report.weakened,
                "ruleset_version": report.ruleset_version,
            },
        )

    learn = dramatiq.actor(
        broker=broker,
        actor_name=LEARN_ACTOR,
        queue_name=LEARN_QUEUE,
        throws=(PermanentError,),
    )(learn_from_correction)
    return {CATEGORIZE_ACTOR: categorize, LEARN_ACTOR: learn}
