"""The JSON log line: every field it carries goes through ``pipeline.settings.redact``."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from workers.logs import JsonFormatter

DSN = "postgresql://app:s3cr3t@db:5432/catfleet"


@pytest.fixture
def logged() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("catfleet.test_logs")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        yield logger, stream
    finally:
        logger.removeHandler(handler)
        logger.propagate = True


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_password_in_an_extra_field_is_redacted(logged: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = logged
    logger.warning(
        "cannot reach %s",
        DSN,
        extra={
            "event": "relay_error",
            "dsn": DSN,
            "targets": {"cache": "redis://:hunter2@cache:6379/0", "db": ["host=db password=pw1 user=app"]},
            "pair": ("amqp://guest:guest@mq:5672/", 7),
            "size": 3,
            "dead": False,
            "ratio": 0.5,
            "missing": None,
            "error": ConnectionError(f"connect to {DSN} failed"),
        },
    )
    [doc] = lines(stream)
    assert "s3cr3t" not in stream.getvalue() and "hunter2" not in stream.getvalue()
    assert "pw1" not in stream.getvalue() and "guest@" not in stream.getvalue()
    assert doc["msg"] == "cannot reach postgresql://app:***@db:5432/catfleet"
    assert doc["dsn"] == "postgresql://app:***@db:5432/catfleet"
    assert doc["targets"] == {"cache": "redis://:***@cache:6379/0", "db": ["host=db password=*** user=app"]}
    assert doc["pair"] == ["amqp://guest:***@mq:5672/", 7]
    assert doc["error"] == "connect to postgresql://app:***@db:5432/catfleet failed"
    assert (doc["event"], doc["size"], doc["dead"], doc["ratio"], doc["missing"]) == (
        "relay_error",
        3,
        False,
        0.5,
        None,
    )


def test_a_password_in_a_traceback_is_redacted(logged: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = logged
    try:
        raise RuntimeError(f"bad url {DSN}")
    except RuntimeError:
        logger.exception("failed")
    [doc] = lines(stream)
    assert "s3cr3t" not in stream.getvalue()
    assert "RuntimeError: bad url postgresql://app:***@db:5432/catfleet" in doc["exc"]


def test_a_huge_field_is_clipped_and_redaction_is_linear() -> None:
    """Dramatiq logs a failing message's whole payload: a 10 MB field must cost milliseconds, not
    minutes (redaction was quadratic: 2.7 s for 10,000 characters), and the line stays small."""
    import logging
    import time

    from pipeline.settings import redact
    from workers.logs import MAX_FIELD_CHARS, JsonFormatter

    huge = "a" * 10_000_000
    started = time.perf_counter()
    for text in (huge, "a://" * 2_500_000, "x://u:" + huge, "'" * 10_000_000):
        assert len(redact(text)) == len(text)  # nothing to hide, nothing changed
    assert redact("password=" * 1_000_000) == "password=***"
    record = logging.makeLogRecord({"msg": "Failed to process message %s", "args": (huge,), "payload": huge})
    line = JsonFormatter().format(record)
    assert time.perf_counter() - started < 10  # quadratic would be days
    assert len(line) < 3 * MAX_FIELD_CHARS and "[9991808 more characters]" in line
    assert redact("x postgresql://u:pw@h/db " + "a" * 50_000).startswith("x postgresql://u:***@h/db")
