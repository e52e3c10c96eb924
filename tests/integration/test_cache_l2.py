"""L2 against real servers: one contract suite, run on a Redis Cluster and on a single Redis."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import redis
from redis.connection import AbstractConnection

from pipeline.cache import LocalTier, SharedTier
from pipeline.cache.shared import encode_entry
from pipeline.db import Database
from schemas import Pattern, PatternKind
from tests.support import cache
from tests.support.cluster import LocalRedis, LocalRedisCluster, LocalRedisServers
from workers.settings import Settings

P = Pattern(id=7, user_id=None, category_id=3, kind=PatternKind.MERCHANT, value="STARBUCKS", weight=0.95)
RULE = Pattern(id=9, user_id=None, category_id=4, kind=PatternKind.KEYWORD, value="pizza", weight=0.8)


@pytest.fixture
def db(settings: Settings) -> Iterator[Database]:
    database = Database.connect(settings.database_url, size=2)
    yield database
    database.close()


class RoundTrips:
    """Counts writes to the sockets per server port: one write = one round trip."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.by_port: Counter[int] = Counter()
        original = AbstractConnection.send_packed_command

        def counting(conn: Any, command: Any, check_health: bool = True) -> None:
            self.by_port[int(conn.port)] += 1
            original(conn, command, check_health)

        monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)


class L2Contract:
    """What every L2 backend must do. Subclasses provide the ``server`` fixture."""

    @pytest.fixture
    def server(self) -> LocalRedisServers:
        raise NotImplementedError

    @pytest.fixture
    def tier(self, server: LocalRedisServers, settings: Settings) -> Iterator[SharedTier]:
        t = cache.l2(settings, server.url)
        yield t
        t.close()

    def test_entries_round_trip_including_negative_ones(self, tier: SharedTier) -> None:
        entries = {(0, f"M{i}"): ((P,) if i % 2 else ()) for i in range(300)}
        tier.put_merchants(5, entries)
        got = tier.get_merchants(5, [*entries, (0, "NEVER STORED"), (42, "M1")])
        assert got == entries  # misses are absent; the empty tuple is a (negative) hit

    def test_a_new_ruleset_version_misses_everything(self, tier: SharedTier) -> None:
        tier.put_merchants(5, {(0, "A"): (P,)})
        tier.put_rules(5, (RULE,))
        assert tier.get_merchants(6, [(0, "A")]) == {}
        assert tier.get_rules(6) is None
        assert tier.get_rules(5) == (RULE,)

    def test_keys_carry_version_and_ttl_and_values_are_compact(
        self, tier: SharedTier, server: LocalRedisServers
    ) -> None:
        tier.put_merchants(5, {(0, "A"): (P,), (3, "B"): ()})
        name = tier.merchant_key(5, (3, "B"))
        assert ":{v5:" in name and name.startswith(tier.prefix)
        with redis.Redis(port=server.owner_port(name)) as c:
            assert 0 < c.ttl(name) <= tier.ttl_seconds
            assert c.get(name) == b"\x90"  # the negative entry: an empty msgpack array, 1 byte
        assert len(encode_entry((P,))) < 40

    def test_an_unreadable_value_is_a_miss(self, tier: SharedTier, server: LocalRedisServers) -> None:
        name = tier.merchant_key(5, (0, "A"))
        with redis.Redis(port=server.owner_port(name)) as c:
            c.set(name, b"not msgpack of patterns")
        assert tier.get_merchants(5, [(0, "A")]) == {}
        tier.put_merchants(5, {(0, "A"): (P,)})
        assert tier.get_merchants(5, [(0, "A")]) == {(0, "A"): (P,)}

    def test_a_batch_is_one_round_trip_per_node_and_lands_on_the_owners(
        self, tier: SharedTier, server: LocalRedisServers, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        keys = [(i % 4, f"MERCHANT {i}") for i in range(600)]
        tier.put_merchants(5, {k: () for k in keys})  # also connects to every node
        names = [tier.merchant_key(5, k) for k in keys]
        slots = {name[: name.index("}") + 1]: server.owner_port(name) for name in names}  # per hash tag
        owners = Counter(slots.values())  # slots (so MGETs) per node
        assert len(owners) == len(server.nodes)  # the batch spans every node
        server.reset_stats()
        trips = RoundTrips(monkeypatch)
        assert len(tier.get_merchants(5, keys)) == len(keys)
        assert dict(trips.by_port) == {port: 1 for port in owners}
        assert {p: n for p, n in server.command_calls("mget").items() if n} == dict(owners)

    def test_negative_entries_spare_postgresql(
        self,
        tier: SharedTier,
        db: Database,
        conn: psycopg.Connection[Any],
        cats: dict[str, int],
    ) -> None:
        ids = cache.seed_mixed(conn, cats, n=90)
        first = cache.CountingPatternStore(db)
        cache.categorizer(db, [LocalTier(max_entries=1000, ttl_seconds=60), tier], first).categorize(ids)
        # one query: the global names plus one entry per user with all of the user's own patterns
        assert first.merchant_calls == 1
        # another worker process: its own empty L1, the same L2
        second = cache.CountingPatternStore(db)
        report = cache.categorizer(
            db, [LocalTier(max_entries=1000, ttl_seconds=60), tier], second
        ).categorize(ids)
        assert second.merchant_calls == 0  # unknown merchants too: L2 holds "no pattern" for them
        assert report.cache["l2_hit"] == len(first.merchant_keys) and report.cache["l2_miss"] == 0
        assert report.outcomes.get("uncategorized", 0) > 0


class TestRedisCluster(L2Contract):
    @pytest.fixture
    def server(self, redis_cluster: LocalRedisCluster) -> LocalRedisServers:
        return redis_cluster


class TestSingleRedis(L2Contract):
    @pytest.fixture
    def server(self, redis_single: LocalRedis) -> LocalRedisServers:
        return redis_single
