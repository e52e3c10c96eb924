"""Logging: one JSON object per line (or plain text), secrets redacted."""

from __future__ import annotations

import logging
import sys
import time

import msgspec

from pipeline.settings import redact
from workers.settings import Settings

_RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
_encoder = msgspec.json.Encoder()


def redact_value(value: object) -> object:
    """``value`` with ``redact`` applied to every string in it (dict keys and values, list and
    tuple items); numbers, booleans and None as they are; anything else as its redacted ``str``."""
    if isinstance(value, str):
        return redact(value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, dict):
        return {redact(str(k)): redact_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_value(v) for v in value]
    return redact(str(value))


class JsonFormatter(logging.Formatter):
    """The record's message plus every ``extra=`` field, as one JSON line; every string in it
    (message, extra fields, traceback) goes through ``redact``."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                doc[key] = redact_value(value)
        if record.exc_info:
            doc["exc"] = redact(self.formatException(record.exc_info))
        return _encoder.encode(doc).decode()


class RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def setup_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            RedactingFormatter("%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
