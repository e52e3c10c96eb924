"""Wire strings PostgreSQL can store, envelope checks, dead-letter decoding and bounded metric
labels: the pure parts of the hostile-message hardening (tests/fault/test_hostile_messages.py
runs them against the real servers)."""

from __future__ import annotations

import json
from typing import Any

import dramatiq
import msgspec
import pytest
from dramatiq.brokers.stub import StubBroker
from dramatiq.errors import DecodeError

from schemas.messages import MAX_TEXT_CHARS, CategorizeBatch, Correction, text_problem
from workers.dlq.base import decode_payload
from workers.encoder import decode_envelope
from workers.metrics import UNKNOWN_LABEL, actor_label
from workers.middleware.prometheus import bounded

GOOD_CORRECTION = {"expense_id": 1, "category_key": "groceries", "idempotency_key": "k"}
BAD_STRINGS = ["a\x00b", "\x00", "x\ud800", "\udfff", "y" * (MAX_TEXT_CHARS + 1)]


@pytest.mark.parametrize("value", BAD_STRINGS)
@pytest.mark.parametrize(
    ("kind", "payload", "field"),
    [
        (CategorizeBatch, {"expense_ids": [1]}, "correlation_id"),
        (Correction, GOOD_CORRECTION, "category_key"),
        (Correction, GOOD_CORRECTION, "idempotency_key"),
        (Correction, GOOD_CORRECTION, "correlation_id"),
    ],
)
def test_every_payload_string_rejects_what_postgresql_cannot_store(
    kind: type[msgspec.Struct], payload: dict[str, Any], field: str, value: str
) -> None:
    with pytest.raises(msgspec.ValidationError, match=rf"at `\$\.{field}`"):
        msgspec.convert({**payload, field: value}, kind)


def test_every_string_field_of_the_payloads_is_bounded() -> None:
    for kind in (CategorizeBatch, Correction):
        for f in msgspec.structs.fields(kind):
            if f.type in (str, str | None):
                pytest.fail(f"{kind.__name__}.{f.name} is an unbounded str")
    assert msgspec.convert({**GOOD_CORRECTION, "category_key": "café ☕ 😀"}, Correction)


@pytest.mark.parametrize("value", BAD_STRINGS)
def test_text_problem(value: str) -> None:
    assert text_problem(value) is not None
    assert text_problem("fine 😀") is None


def envelope(**fields: Any) -> bytes:
    base = {
        "queue_name": "categorize",
        "actor_name": "categorize_batch",
        "args": [{"expense_ids": [1]}],
        "kwargs": {},
        "options": {},
        "message_id": "m-1",
        "message_timestamp": 1,
    }
    return json.dumps({**base, **fields}).encode()


@pytest.mark.parametrize(
    "fields",
    [
        {"message_id": 7},
        {"message_id": ""},
        {"message_id": "m\x00"},
        {"message_id": "m" * 201},
        {"actor_name": ["x"]},
        {"queue_name": "q\x00"},
        {"options": [1]},
        {"kwargs": []},
        {"args": {}},
        {"message_timestamp": "now"},
        {"message_timestamp": True},
    ],
)
def test_envelopes_the_fleet_cannot_run_or_record_are_decode_errors(fields: dict[str, Any]) -> None:
    with pytest.raises(DecodeError):
        decode_envelope(envelope(**fields))
    assert decode_payload(envelope(**fields)) is None  # the dead-letter tool agrees: not replayable


def test_an_envelope_without_message_id_is_not_readable() -> None:
    raw = json.loads(envelope())
    del raw["message_id"]
    assert decode_payload(json.dumps(raw).encode()) is None
    assert decode_payload(envelope()) is not None


def test_made_up_actor_and_queue_names_get_one_label() -> None:
    broker = StubBroker()
    broker.emit_after("process_boot")
    dramatiq.actor(actor_name="categorize_batch", queue_name="categorize", broker=broker)(lambda: None)
    known = dramatiq.Message(
        queue_name="categorize", actor_name="categorize_batch", args=(), kwargs={}, options={}
    )
    labelled = bounded(broker, known)
    assert (labelled.queue_name, labelled.actor_name, labelled.message_id) == (
        "categorize",
        "categorize_batch",
        known.message_id,
    )
    delayed = bounded(broker, known.copy(queue_name="categorize.DQ"))
    assert delayed.queue_name == "categorize.DQ"
    hostile = bounded(broker, known.copy(queue_name="q-123", actor_name="made_up_42"))
    assert (hostile.queue_name, hostile.actor_name) == (UNKNOWN_LABEL, UNKNOWN_LABEL)
    assert actor_label("categorize_batch") == "categorize_batch"
    assert actor_label("made_up_42") == UNKNOWN_LABEL
