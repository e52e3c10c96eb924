"""Pattern-cache tiers in front of PostgreSQL: L1 in process, L2 shared Redis (Cluster)."""

from pipeline.cache.base import PatternTier
from pipeline.cache.breaker import BreakerStats, CacheBreaker
from pipeline.cache.local import LocalTier
from pipeline.cache.shared import SharedTier

__all__ = ["BreakerStats", "CacheBreaker", "LocalTier", "PatternTier", "SharedTier"]
