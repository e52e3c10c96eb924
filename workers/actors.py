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
from schemas import (
    BULK_PRIORITY,
    CATEGORIZE_ACTOR,
    CATEGORIZE_BULK_ACTOR,
    CATEGORIZE_BULK_QUEUE,
    CATEGORIZE_QUEUE,
    INTERACTIVE_PRIORITY,
    LANE_BULK,
    LEARN_ACTOR,
    LEARN_QUEUE,
    CategorizeBatch,
    Correction,
)
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
    def batch_actor(actor_name: str) -> Any:
        def categorize_batch(*args: Any, **kwargs: Any) -> None:
            message = CurrentMessage.get_current_message()
            batch = decode_payload(CategorizeBatch, args, kwargs)
            message_id = message.message_id if message else None
            enqueued_at = (
                dt.datetime.fromtimestamp(message.message_timestamp / 1000, dt.UTC) if message else None
            )
            correlation_id = batch.correlation_id or message_id
            report = holder.runtime.categorizer.categorize(
                batch.expense_ids,
                message_id=message_id,
                correlation_id=correlation_id,
                enqueued_at=enqueued_at,
            )
            log.info(
                "batch done",
                extra={
                    "event": "batch",
                    "actor": actor_name,
                    "message_id": message_id,
                    "correlation_id": correlation_id,
                    "size": report.requested,
                    "outcomes": report.outcomes,
                    "written": report.written,
                    "unchanged": report.unchanged,
                    "cache": report.cache,
                    "ruleset_version": report.ruleset_version,
                    "candidate": report.candidate,
                    "duration_ms": report.duration_ms,
                },
            )
            from workers import metrics  # late: prometheus_client only after its directory is set

            latency_s = time.time() - message.message_timestamp / 1000 if message else None
            metrics.record_batch(report, actor_name=actor_name, latency_s=latency_s)
            if report.ruleset_version is not None:
                holder.ruleset_version = report.ruleset_version

        categorize_batch.__name__ = actor_name
        return categorize_batch

    # The two lanes: the same work; a worker process runs the interactive messages it holds
    # before the bulk ones (Dramatiq's work queue is ordered by actor priority, lower first).
    categorize = dramatiq.actor(
        broker=broker,
        actor_name=CATEGORIZE_ACTOR,
        queue_name=CATEGORIZE_QUEUE,
        priority=INTERACTIVE_PRIORITY,
        throws=(PermanentError,),
    )(batch_actor(CATEGORIZE_ACTOR))
    categorize_bulk = dramatiq.actor(
        broker=broker,
        actor_name=CATEGORIZE_BULK_ACTOR,
        queue_name=CATEGORIZE_BULK_QUEUE,
        priority=BULK_PRIORITY,
        throws=(PermanentError,),
    )(batch_actor(CATEGORIZE_BULK_ACTOR))

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
        reach_rest(correction, report.correction_id, correlation_id)

    def reach_rest(correction: Correction, correction_id: int, correlation_id: str | None) -> None:
        """Corrections reach the rest: the user's other expenses from the corrected merchant that
        are not the user's own choice are re-categorized on the bulk lane, at most
        ``correction_reach_limit`` of them (0: off). Also after a replay of the correction: a
        learn that committed and died before this enqueue is retried as a replay."""
        limit = holder.settings.correction_reach_limit
        if limit <= 0 or not correction_id:
            return
        ids = holder.runtime.learner.reach(correction.expense_id, limit=limit)
        if ids:
            from workers.producer import Producer

            Producer(broker, batch_size=holder.settings.batch_size).enqueue(
                ids, correlation_id=f"reach:{correction_id}", lane=LANE_BULK
            )
        log.info(
            "correction reach",
            extra={
                "event": "correction_reach",
                "actor": LEARN_ACTOR,
                "correlation_id": correlation_id,
                "expense_id": correction.expense_id,
                "correction_id": correction_id,
                "recategorize": len(ids),
                "limit": limit,
            },
        )

    learn = dramatiq.actor(
        broker=broker,
        actor_name=LEARN_ACTOR,
        queue_name=LEARN_QUEUE,
        throws=(PermanentError,),
    )(learn_from_correction)
    return {CATEGORIZE_ACTOR: categorize, CATEGORIZE_BULK_ACTOR: categorize_bulk, LEARN_ACTOR: learn}
