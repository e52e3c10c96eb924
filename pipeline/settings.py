"""The domain's settings: what the categorization pipeline reads (database, pattern cache,
breaker, confidence bands). The fleet's own knobs (broker, workers, retries, logs, metrics, relay)
extend them in ``workers.settings``. Built once at the edge (``workers.config.settings_from_env``)
and passed down explicitly; nothing in ``pipeline`` reads the environment."""

from __future__ import annotations

import re
from typing import Annotated

import msgspec

Positive = Annotated[int, msgspec.Meta(ge=1)]
Fraction = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/catfleet"
DEFAULT_CACHE_URL = "redis://127.0.0.1:6379/1"
#: After ``tcp_keepalive_s`` idle seconds, keepalive probes go out this often (s), this many.
KEEPALIVE_INTERVAL_S = 1
KEEPALIVE_COUNT = 3


class PipelineSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The knobs of the categorization domain. Each field is set by ``CATFLEET_<FIELD IN CAPITALS>``."""

    #: PostgreSQL DSN (libpq URL or key=value string).
    database_url: str = DEFAULT_DATABASE_URL
    #: Optional DSN of a read replica for expense reads; empty: use ``database_url``.
    database_read_url: str = ""
    #: Connections per worker process; 0: threads + 2.
    database_pool_size: Annotated[int, msgspec.Meta(ge=0, le=200)] = 0
    #: Pattern cache: a Redis Cluster node URL, or a single Redis.
    cache_url: str = DEFAULT_CACHE_URL
    #: Prefix of every pattern-cache key.
    cache_prefix: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")] = "catfleet"
    #: L2 (shared Redis) entries live this long (s); the ruleset version in every key does the rest.
    cache_ttl_seconds: Positive = 3_600
    #: L2 socket connect/read timeout (ms): a slow cache must not stall a batch.
    cache_timeout_ms: Annotated[int, msgspec.Meta(ge=1, le=60_000)] = 100
    #: L2 circuit breaker: open after this many consecutive failures; probe again after (s).
    breaker_fail_max: Positive = 5
    breaker_reset_seconds: Annotated[float, msgspec.Meta(gt=0, le=3_600)] = 30.0
    #: Confidence bands: >= auto applies, >= suggest suggests, below stays uncategorized.
    auto_threshold: Fraction = 0.85
    suggest_threshold: Fraction = 0.70
    #: L1 in-process pattern cache: entries and time to live (s).
    l1_max_entries: Positive = 50_000
    l1_ttl_seconds: Positive = 300
    #: Every PostgreSQL and Redis connection of the fleet: TCP keepalive probes start after this
    #: many idle seconds and repeat every second (3 probes), and unacknowledged data is given up
    #: after ``tcp_user_timeout_ms``: a peer that vanished (a cut link) is noticed within
    #: max(tcp_user_timeout_ms, keepalive + 3 s) instead of the kernel's ~15 minutes.
    tcp_keepalive_s: Annotated[int, msgspec.Meta(ge=1, le=7_200)] = 5
    tcp_user_timeout_ms: Annotated[int, msgspec.Meta(ge=1_000, le=600_000)] = 10_000

    def __post_init__(self) -> None:
        if self.suggest_threshold > self.auto_threshold:
            raise ValueError("suggest_threshold must not exceed auto_threshold")
        for name in ("database_url", "cache_url"):
            if not getattr(self, name):
                raise ValueError(f"{name} must not be empty")

    def redacted(self) -> dict[str, object]:
        """The settings as a dict with passwords removed from every URL: safe to log."""
        return {k: redact(v) if isinstance(v, str) else v for k, v in msgspec.structs.asdict(self).items()}


#: ``scheme://user:password@``: the scheme starts where no scheme character precedes it and the
#: password stops at a ``/`` (an unencoded one cannot be in a URL), so every character is looked
#: at a bounded number of times: linear in the text (a 10 MB log line must not take minutes).
_URL_PASSWORD = re.compile(
    r"(?P<head>(?<![a-z0-9+.-])[a-z][a-z0-9+.-]*+://[^:/@\s]*+:)[^@\s/]*+@", re.IGNORECASE
)
_KV_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*+'|\S+)", re.IGNORECASE)


def redact(text: str) -> str:
    """Hide passwords in URLs (``scheme://user:pw@host``) and ``password=...`` DSN parts."""
    text = _URL_PASSWORD.sub(r"\g<head>***@", text)
    return _KV_PASSWORD.sub(r"\1***", text)
