"""Reading the Redis broker's keys directly: queued and dead-lettered messages."""

from __future__ import annotations

import json
from typing import Any

import redis

from pipeline.settings import Settings
from schemas import CATEGORIZE_QUEUE


def _messages(settings: Settings, key: str) -> list[dict[str, Any]]:
    client = redis.Redis.from_url(settings.broker_url)
    try:
        return [json.loads(v) for v in client.hvals(f"{settings.broker_namespace}:{key}")]
    finally:
        client.close()


def queued_messages(settings: Settings, queue: str = CATEGORIZE_QUEUE) -> list[dict[str, Any]]:
    """Every message still in the queue's hash (enqueued, not yet acked)."""
    return _messages(settings, f"{queue}.msgs")


def dead_messages(settings: Settings, queue: str = CATEGORIZE_QUEUE) -> list[dict[str, Any]]:
    return _messages(settings, f"{queue}.XQ.msgs")
