"""The L2 Redis client: a Redis Cluster or a single Redis, chosen by asking the server.

Both clients give the same pipeline API, so the tier has one code path. Timeouts are short and
redis-py's own retries are off: a failing call fails fast, and the breaker decides what next.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterPipeline, RedisCluster
from redis.retry import Retry

Client = redis.Redis | RedisCluster


def _no_retry() -> Retry:
    return Retry(NoBackoff(), 0)


def is_cluster(url: str, *, timeout_s: float) -> bool:
    """Whether the server at ``url`` runs in cluster mode (``INFO cluster``)."""
    probe = redis.Redis.from_url(
        url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry=_no_retry()
    )
    try:
        return bool(probe.info("cluster").get("cluster_enabled"))
    finally:
        probe.close()


def _without_db(url: str) -> str:
    # A cluster has only database 0; the default cache URL names /1 for a single Redis.
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=""))


def open_client(url: str, *, timeout_s: float) -> Client:
    """A connected client for ``url`` (raises redis errors when the server is unreachable)."""
    options: dict[str, Any] = {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s}
    if is_cluster(url, timeout_s=timeout_s):
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
