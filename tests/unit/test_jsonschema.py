"""The committed JSON Schemas are the ones generated from the msgspec types."""

import json
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from schemas import CATEGORIZE_BULK_QUEUE, CATEGORIZE_QUEUE, LEARN_QUEUE, CategorizeBatch, Correction
from schemas.jsonschema import PAYLOADS, payload_schema, schema_filename, schema_text

JSON_DIR = Path(__file__).resolve().parents[2] / "schemas" / "json"


@pytest.mark.parametrize("name", sorted(PAYLOADS))
def test_committed_schema_matches_the_generated_one(name: str) -> None:
    committed = (JSON_DIR / schema_filename(name)).read_text(encoding="utf-8")
    assert committed == schema_text(name), f"regenerate: catfleet schema --write schemas/json {name}"


def test_every_committed_schema_belongs_to_a_message() -> None:
    assert sorted(p.name for p in JSON_DIR.glob("*.schema.json")) == sorted(map(schema_filename, PAYLOADS))


def test_payloads_and_queues() -> None:
    assert {
        "categorize_batch": (CATEGORIZE_QUEUE, CategorizeBatch),
        "categorize_batch_bulk": (CATEGORIZE_BULK_QUEUE, CategorizeBatch),
        "learn_from_correction": (LEARN_QUEUE, Correction),
    } == PAYLOADS


def test_schema_states_the_limits() -> None:
    batch = payload_schema("categorize_batch")["$defs"]["CategorizeBatch"]
    ids = batch["properties"]["expense_ids"]
    assert (ids["minItems"], ids["maxItems"]) == (1, 10_000)
    assert (ids["items"]["minimum"], ids["items"]["maximum"]) == (1, 2**63 - 1)
    assert batch["required"] == ["expense_ids"] and batch["additionalProperties"] is False
    correction = payload_schema("learn_from_correction")["$defs"]["Correction"]
    assert correction["required"] == ["expense_id", "category_key", "idempotency_key"]


def test_unknown_name_is_an_error() -> None:
    with pytest.raises(
        KeyError, match="known: categorize_batch, categorize_batch_bulk, learn_from_correction"
    ):
        payload_schema("nope")


def test_cli_prints_the_schema() -> None:
    root = JSON_DIR.parents[1]
    one = subprocess.run(
        [sys.executable, "-m", "workers", "schema", "categorize_batch"],
        cwd=root, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert one.stdout == schema_text("categorize_batch")
    every = subprocess.run(
        [sys.executable, "-m", "workers", "schema"], cwd=root, capture_output=True, text=True, check=True
    )
    assert json.loads(every.stdout) == {name: payload_schema(name) for name in PAYLOADS}
    bad = subprocess.run(
        [sys.executable, "-m", "workers", "schema", "nope"], cwd=root, capture_output=True, text=True
    )
    assert bad.returncode != 0 and "unknown message 'nope'" in bad.stderr


def test_a_valid_payload_round_trips() -> None:
    raw = b'{"expense_ids": [1, 2], "correlation_id": "x"}'
    assert msgspec.json.decode(raw, type=CategorizeBatch) == CategorizeBatch(
        expense_ids=[1, 2], correlation_id="x"
    )
