"""JSON Schema of every wire payload, generated from the msgspec types (``catfleet schema``).

Other services validate what they send against these; ``schemas/json/*.schema.json`` are the
committed copies, kept equal to the generated ones by a test.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

from schemas.messages import (
    CATEGORIZE_ACTOR,
    CATEGORIZE_BULK_ACTOR,
    CATEGORIZE_BULK_QUEUE,
    CATEGORIZE_QUEUE,
    LEARN_ACTOR,
    LEARN_QUEUE,
    CategorizeBatch,
    Correction,
)

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

#: actor name -> (queue name, payload type): the messages other services may send.
PAYLOADS: dict[str, tuple[str, type[msgspec.Struct]]] = {
    CATEGORIZE_ACTOR: (CATEGORIZE_QUEUE, CategorizeBatch),
    CATEGORIZE_BULK_ACTOR: (CATEGORIZE_BULK_QUEUE, CategorizeBatch),
    LEARN_ACTOR: (LEARN_QUEUE, Correction),
}


def payload_schema(actor_name: str) -> dict[str, Any]:
    """The JSON Schema of the single ``args`` element of ``actor_name``'s messages."""
    try:
        queue_name, kind = PAYLOADS[actor_name]
    except KeyError:
        raise KeyError(f"unknown message {actor_name!r}; known: {', '.join(sorted(PAYLOADS))}") from None
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "$comment": f"payload of actor {actor_name!r} on queue {queue_name!r}: the message's args is [payload]",
        **msgspec.json.schema(kind),
    }


def schema_text(actor_name: str) -> str:
    """The schema as the committed file holds it (stable key order, trailing newline)."""
    return json.dumps(payload_schema(actor_name), indent=2) + "\n"


def schema_filename(actor_name: str) -> str:
    return f"{actor_name}.schema.json"
