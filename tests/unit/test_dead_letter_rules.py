import argparse

import pytest

from pipeline.errors import SettingsError
from workers.commands.args import duration
from workers.config import settings_from_env
from workers.dlq.base import DeadLetter, DeadLetterFilter, replay_payload


def test_retry_horizon_bounds_the_worst_case_to_the_dead_letter_queue() -> None:
    s = settings_from_env({})
    # 6 attempts x 300 s time limit + jittered backoffs 2+4+8+16+32 s
    assert s.worst_case_to_dead_letter_ms == 6 * 300_000 + 62_000 <= s.retry_horizon_ms
    with pytest.raises(SettingsError, match="over retry_horizon_ms"):
        settings_from_env({"CATFLEET_MAX_RETRIES": "20", "CATFLEET_MAX_BACKOFF_MS": "3600000"})


def test_durations() -> None:
    assert [duration(x) for x in ("90", "90s", "15m", "2h", "1.5d")] == [90, 90, 900, 7200, 129600]
    with pytest.raises(argparse.ArgumentTypeError):
        duration("soon")


def letter(**kw: object) -> DeadLetter:
    base: dict[str, object] = dict(
        message_id="m1", queue_name="categorize", actor_name="categorize_batch", expense_ids=3,
        error_type="DatabaseConflict", error="deadlock detected", died_at_ms=1_000_000,
    )  # fmt: skip
    return DeadLetter(**{**base, **kw})  # type: ignore[arg-type]


def test_filter_matches() -> None:
    now = 1_000_000 + 3_600_000  # an hour after it died
    assert DeadLetterFilter().matches(letter(), now)
    assert DeadLetterFilter(error="DEADLOCK", actor="categorize_batch").matches(letter(), now)
    assert DeadLetterFilter(error="conflict").matches(letter(), now)
    assert not DeadLetterFilter(queue="learn").matches(letter(), now)
    assert DeadLetterFilter(older_than_s=1800).matches(letter(), now)
    assert not DeadLetterFilter(newer_than_s=1800).matches(letter(), now)
    assert not DeadLetterFilter(ids=("other",)).matches(letter(), now)


def test_replay_payload_starts_the_message_over_with_the_same_ids() -> None:
    import json

    payload = {
        "queue_name": "categorize.DQ",
        "actor_name": "categorize_batch",
        "args": [{"expense_ids": [1]}],
        "kwargs": {},
        "options": {"eta": 5, "retries": 3, "traceback": "...", "redis_message_id": "old", "max_retries": 9},
        "message_id": "m1",
        "message_timestamp": 42,
    }
    out = json.loads(replay_payload(payload, redis_message_id="rid"))
    assert out["queue_name"] == "categorize" and out["message_id"] == "m1" and out["message_timestamp"] == 42
    assert out["options"] == {"max_retries": 9, "redis_message_id": "rid"}
