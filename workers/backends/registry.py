"""Which backend serves which broker URL scheme: names only, nothing imported, so the settings
can check a broker URL without importing any backend (or anything that imports the settings)."""

from __future__ import annotations

#: Broker URL scheme -> the backend class that serves it (``module:Class``).
BACKENDS: dict[str, str] = {
    "redis://": "workers.backends.redis:RedisBackend",
    "rediss://": "workers.backends.redis:RedisBackend",
    "redis+sentinel://": "workers.backends.redis:RedisBackend",
    "amqp://": "workers.backends.rabbitmq:RabbitmqBackend",
    "amqps://": "workers.backends.rabbitmq:RabbitmqBackend",
    "memory://": "workers.backends.memory:MemoryBackend",
}
SCHEMES = tuple(BACKENDS)


def supports(url: str) -> bool:
    """Does a backend serve this broker URL? (Imports none of them.)"""
    return url.startswith(SCHEMES)
