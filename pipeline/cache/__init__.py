"""Pattern-cache tiers in front of PostgreSQL: L1 in process, L2 shared Redis (Cluster)."""

from pipeline.cache.base import PatternTier
from pipeline.cache.local import LocalTier

__all__ = ["LocalTier", "PatternTier"]
