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
#: Longest string a log line carries per field (message, extra field, traceback): Dramatiq logs a
#: failing message's whole payload, and a hostile one can be megabytes.
MAX_FIELD_CHARS = 8_192


def clip(text: str) -> str:
    """``text`` redacted, cut to ``MAX_FIELD_CHARS`` (saying how much was cut) before redaction."""
    if len(text) > MAX_FIELD_CHARS:
        text = f"{text[:MAX_FIELD_CHARS]}… [{len(text) - MAX_FIELD_CHARS} more characters]"
    return redact(text)


def redact_value(value: object) -> object:
    """``value`` with ``clip`` applied to every string in it (dict keys and values, list and
    tuple items); numbers, booleans and None as they are; anything else as its redacted ``str``."""
    if isinstance(value, str):
        return clip(value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, dict):
        return {clip(str(k)): redact_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_value(v) for v in value]
    return clip(str(value))


class JsonFormatter(logging.Formatter):
    """The record's message plus every ``extra=`` field, as one JSON line; every string in it
    (message, extra fields, traceback) goes through ``redact``."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": clip(record.getMessage()),
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                doc[key] = redact_value(value)
        if record.exc_info:
            doc["exc"] = clip(self.formatException(record.exc_info))
        return _encoder.encode(doc).decode()


class RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        record.msg, record.args = clip(record.getMessage()), None
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
