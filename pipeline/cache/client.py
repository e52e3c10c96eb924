"""The L2 Redis client: a Redis Cluster or a single Redis, chosen by asking the server.

Both clients give the same pipeline API, so the tier has one code path. Timeouts are short and
redis-py's own retries are off: a failing call fails fast, and the breaker decides what next.
``fail_fast_options`` are the TCP keepalive and user timeout every Redis client of the fleet uses.
"""

from __future__ import annotations

import socket
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterPipeline, RedisCluster
from redis.retry import Retry

from pipeline.settings import KEEPALIVE_COUNT, KEEPALIVE_INTERVAL_S, PipelineSettings

Client = redis.Redis | RedisCluster

_DEFAULTS = PipelineSettings()
DEFAULT_KEEPALIVE_S = _DEFAULTS.tcp_keepalive_s
DEFAULT_USER_TIMEOUT_MS = _DEFAULTS.tcp_user_timeout_ms


def fail_fast_options(
    *, keepalive_s: int = DEFAULT_KEEPALIVE_S, user_timeout_ms: int = DEFAULT_USER_TIMEOUT_MS
) -> dict[str, Any]:
    """redis-py connection keywords (``Redis``, ``RedisCluster``, ``ConnectionPool``): TCP
    keepalive probes after ``keepalive_s`` idle seconds, then every second, 3 of them, and
    ``TCP_USER_TIMEOUT``: a connection whose peer vanished (a cut link) fails within
    max(user timeout, keepalive + 3 s), a blocked read or a pub/sub listen included. redis-py
    applies each option with ``setsockopt(IPPROTO_TCP, option, value)``. Passed as keywords to
    ``from_url``, so a ``?socket_keepalive=`` in the URL still wins."""
    return {
        "socket_keepalive": True,
        "socket_keepalive_options": {
            socket.TCP_KEEPIDLE: keepalive_s,
            socket.TCP_KEEPINTVL: KEEPALIVE_INTERVAL_S,
            socket.TCP_KEEPCNT: KEEPALIVE_COUNT,
            socket.TCP_USER_TIMEOUT: user_timeout_ms,
        },
    }


def _no_retry() -> Retry:
    return Retry(NoBackoff(), 0)


def is_cluster(url: str, *, timeout_s: float, **options: Any) -> bool:
    """Whether the server at ``url`` runs in cluster mode (``INFO cluster``)."""
    probe = redis.Redis.from_url(
        url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry=_no_retry(), **options
    )
    try:
        return bool(probe.info("cluster").get("cluster_enabled"))
    finally:
        probe.close()


def _without_db(url: str) -> str:
    # A cluster has only database 0; the default cache URL names /1 for a single Redis.
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=""))


def open_client(
    url: str,
    *,
    timeout_s: float,
    keepalive_s: int = DEFAULT_KEEPALIVE_S,
    user_timeout_ms: int = DEFAULT_USER_TIMEOUT_MS,
) -> Client:
    """A connected client for ``url`` (raises redis errors when the server is unreachable)."""
    tcp = fail_fast_options(keepalive_s=keepalive_s, user_timeout_ms=user_timeout_ms)
    options: dict[str, Any] = {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s, **tcp}
    if is_cluster(url, timeout_s=timeout_s, **tcp):
        # reinitialize_steps=1: a pipeline that meets MOVED/ASK/connection errors refreshes the
        # slot table at once, so the next batch routes right after a failover or reshard.
        return RedisCluster.from_url(_without_db(url), retry=_no_retry(), reinitialize_steps=1, **options)
    return redis.Redis.from_url(url, retry=_no_retry(), **options)


def _refuse_one_by_one(*args: Any, **kwargs: Any) -> Any:
    raise redis.exceptions.ConnectionError("cache pipeline command failed (not retried one by one)")


def pipeline(client: Client) -> Any:
    """A non-transactional pipeline: one round trip (per node on a cluster).

    redis-py's cluster pipeline re-sends each command that met a connection error, timeout or
    redirection on its own, one round trip per command; on a slow node that turns one timeout
    into hundreds. Here such commands fail instead (the batch falls back to L3, the breaker
    counts it) and the slot table is refreshed for the next call.
    """
    pipe = client.pipeline(transaction=False)
    if isinstance(pipe, ClusterPipeline):
        pipe.parent_execute_command = _refuse_one_by_one
    return pipe
