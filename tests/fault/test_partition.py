"""A fleet across hosts, one of them cut off mid-run (Linux network namespaces; root only).

PostgreSQL, the broker's Redis and the cache's Redis run in a "services" namespace; three worker
hosts, each a ``catfleet worker`` under ``ip netns exec``, reach them through a bridge. One host
is unplugged mid-run (its processes alive, unreachable): the other two take its messages after
the heartbeat timeout and finish, every expense once. After a cut longer than every timeout the
link is healed: the host's late writes change nothing and it takes new work within seconds.
Also: real connections of the fleet carry the keepalive and user-timeout socket options."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import msgspec
import pika
import psycopg
import pytest
import redis
from dramatiq.common import dq_name

from pipeline.cache.client import open_client
from pipeline.db import Database
from schemas import CATEGORIZE_QUEUE
from tests.support import data
from tests.support.broker import queue_state
from tests.support.cluster import LocalRedisCluster
from tests.support.netns import Host, Lan, lan
from tests.support.rabbit import RABBIT
from tests.support.servers import PostgresServer, RedisServer
from tests.support.services import ChildProcess, isolated_settings, log_events, wait_for
from workers.app import build_app
from workers.backends.rabbitmq import RabbitmqBackend
from workers.backends.redis import RedisBackend
from workers.backends.redis.broker import SafeRedisBroker
from workers.backends.redis.keys import RedisKeys
from workers.config import settings_from_env
from workers.harness.processes import ROOT, settings_env
from workers.producer import Producer
from workers.settings import Settings

pytestmark = pytest.mark.fault

TOTAL = 20_000
FRESH = 20_000
BATCH = 100
#: Longer than every timeout below: heartbeat (2 s), a connection's failure bound (max(user
#: timeout, keepalive + 3 s) = 4 s), the stall bound (3 x 4 s), the pool's wait (10 s).
CUT_S = 20.0
SLACK_S = 2.0
TIMINGS: dict[str, Any] = {
    "broker_heartbeat_timeout_ms": 2_000,
    "broker_maintenance_interval_ms": 500,
    "tcp_keepalive_s": 1,
    "tcp_user_timeout_ms": 2_000,
    "max_retries": 20,
    "min_backoff_ms": 100,
    "max_backoff_ms": 1_000,
    "max_deliveries": 50,
    "batch_size": BATCH,
    "metrics_port": 0,
    "worker_shutdown_timeout_ms": 2_000,
    "log_format": "json",
    "log_level": "INFO",
}


class HostWorker(ChildProcess):
    """``catfleet worker`` (1 process x 2 threads) inside a host's namespace."""

    def __init__(self, host: Host, settings: Settings, log_path: Path):
        argv = host.argv(sys.executable, "-m", "workers", "worker", "--processes", "1", "--threads", "2")
        super().__init__(
            log_path,
            lambda log: subprocess.Popen(
                argv,
                env=settings_env(settings),
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            ),
        )

    def batches(self, correlation_id: str) -> int:
        return sum(1 for e in log_events(self, "batch") if e.get("correlation_id") == correlation_id)


def heartbeats(settings: Settings) -> dict[str, float]:
    with redis.Redis.from_url(settings.broker_url, socket_timeout=5) as c:
        beats = c.zrange(RedisKeys(settings.broker_namespace).heartbeats, 0, -1, withscores=True)
    return {b.decode(): score for b, score in beats}


def held(settings: Settings, broker_ids: set[str]) -> set[bytes]:
    """Redis message ids these broker ids have fetched and not acked (categorize queue)."""
    keys = RedisKeys(settings.broker_namespace)
    with redis.Redis.from_url(settings.broker_url, socket_timeout=5) as c:
        return {rid for b in broker_ids for q in (CATEGORIZE_QUEUE,) for rid in c.smembers(keys.acks(b, q))}


def still_queued(settings: Settings, rids: set[bytes]) -> int:
    """How many of ``rids`` still have their payload (not acked by anyone yet)."""
    keys = RedisKeys(settings.broker_namespace)
    with redis.Redis.from_url(settings.broker_url, socket_timeout=5) as c:
        return sum(1 for rid in rids if c.hexists(keys.messages(CATEGORIZE_QUEUE), rid))


def enqueue(settings: Settings, ids: list[int], correlation_id: str) -> str:
    """Enqueue ``ids``; the producer's broker id (it heartbeats once, then never again)."""
    app = build_app(settings)
    try:
        Producer(app.broker, batch_size=BATCH).enqueue(ids, correlation_id=correlation_id)
        assert isinstance(app.broker, SafeRedisBroker)
        return app.broker.broker_id
    finally:
        app.close()


def snapshot(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT expense_id, category_id, confidence, message_id, categorized_at FROM categorizations"
        " ORDER BY expense_id"
    ).fetchall()


@pytest.fixture
def network() -> Iterator[Lan]:
    if os.getuid() != 0:
        raise AssertionError("this test makes network namespaces: it runs as root")
    with lan(["svc", "h1", "h2", "h3"]) as net:
        yield net


def test_a_cut_off_host_loses_nothing_and_comes_back(network: Lan, tmp_path: Path) -> None:
    net = network
    svc = net.hosts["svc"]
    where = {"bind": svc.address, "netns": svc.netns, "call": net.call}
    pg = PostgresServer(port=5432, **where)
    broker = RedisServer(tmp_path / "broker", port=6379, **where)
    cache = RedisServer(tmp_path / "cache", port=6380, **where)
    hosts: dict[str, HostWorker] = {}
    conn: psycopg.Connection[Any] | None = None
    try:
        pg.start()
        broker.start()
        cache.start()
        url = net.call(pg.create_database)
        settings = msgspec.structs.replace(
            settings_from_env({}), database_url=url, broker_url=broker.url, cache_url=cache.url, **TIMINGS
        )
        conn = net.call(lambda: psycopg.connect(url, autocommit=True))
        c = conn
        data.seed_patterns(c, data.reset(c))
        ids = data.bulk_expenses(c, TOTAL)
        fresh = data.bulk_expenses(c, FRESH)
        for name in ("h1", "h2", "h3"):
            hosts[name] = HostWorker(net.hosts[name], settings, tmp_path / f"{name}.log")
        wait_for(lambda: len(net.call(lambda: heartbeats(settings))) >= 3, timeout=60, what="3 hosts")
        producers = {net.call(lambda: enqueue(settings, ids, "first"))}
        started = time.monotonic()

        # cut h3 while the run is under way
        wait_for(lambda: net.call(lambda: data.categorized(c))[0] >= 0.3 * TOTAL, timeout=60, what="30%")
        rows_at_cut = net.call(lambda: data.categorized(c))[0]
        net.cut("h3")
        cut_at = time.monotonic()
        before = net.call(lambda: heartbeats(settings))  # h3's last beat is in, before or not
        rate = rows_at_cut / (cut_at - started)
        assert hosts["h3"].batches("first") > 0, "h3 took no part before the cut"
        time.sleep(1.0)  # two maintenance intervals: every live process has beaten since
        after = net.call(lambda: heartbeats(settings))
        cut_ids = {b for b, s in before.items() if after.get(b) == s} - producers
        assert cut_ids, (before, after)
        hostage = net.call(lambda: held(settings, cut_ids))

        def finished() -> bool:
            return net.call(lambda: data.categorized(c)) == (TOTAL, TOTAL)

        wait_for(
            lambda: net.call(lambda: still_queued(settings, hostage)) == 0, timeout=60, what="h3's messages"
        )
        recovered_s = time.monotonic() - cut_at
        wait_for(finished, timeout=120, interval=0.1, what="every expense")
        done_s = time.monotonic() - cut_at
        rows = net.call(lambda: snapshot(c))
        # the rest of the run, by two hosts of three, plus the broker's recovery bound
        drain_s = (TOTAL - rows_at_cut) / (rate * 2 / 3)
        recovery_s = (
            settings.broker_heartbeat_timeout_ms
            + settings.broker_maintenance_interval_ms
            + settings.worker_idle_poll_ms
        ) / 1000
        bound_s = recovery_s + 1.5 * drain_s + SLACK_S
        assert recovered_s <= bound_s and done_s <= bound_s, (recovered_s, done_s, bound_s)
        assert all(h.alive() for h in hosts.values())

        # heal after a cut longer than every timeout; new work comes in slowly, so that the
        # healed host has its share of it as soon as it can take one
        time.sleep(max(0.0, cut_at + CUT_S - time.monotonic()))
        net.heal("h3")
        healed_at = time.monotonic()
        first_new_s: float | None = None
        for start in range(0, FRESH, BATCH):
            producers.add(net.call(partial(enqueue, settings, fresh[start : start + BATCH], "fresh")))
            if hosts["h3"].batches("fresh"):
                first_new_s = time.monotonic() - healed_at
                net.call(partial(enqueue, settings, fresh[start + BATCH :], "fresh"))
                break
            time.sleep(0.1)
        assert first_new_s is not None, f"h3 took none of the fresh batches:\n{hosts['h3'].log()[-3000:]}"
        wait_for(
            lambda: net.call(lambda: data.categorized(c)) == (TOTAL + FRESH, TOTAL + FRESH),
            timeout=120,
            what="the fresh batch",
        )
        time.sleep(2 * settings.broker_heartbeat_timeout_ms / 1000)  # anything h3 still had runs now
        late = net.call(lambda: snapshot(c))
        assert late[:TOTAL] == rows, "a late write of the healed host changed a row"
        assert net.call(lambda: data.categorized(c)) == (TOTAL + FRESH, TOTAL + FRESH)
        for q in (CATEGORIZE_QUEUE, dq_name(CATEGORIZE_QUEUE)):
            state = net.call(partial(queue_state, settings, q))
            assert state["dead"] == 0, state
        h3_fresh = hosts["h3"].batches("fresh")
        print(
            f"\npartition: {TOTAL} expenses on 3 hosts, h3 cut at {rows_at_cut} rows holding {len(hostage)}"
            f" messages; its messages done {recovered_s:.1f} s after the cut, every expense {done_s:.1f} s"
            f" after it (bound {bound_s:.1f} s: recovery {recovery_s:.1f} s + 1.5 x drain {drain_s:.1f} s"
            f" + {SLACK_S} s); healed after {CUT_S:.0f} s: first new batch on h3 {first_new_s:.1f} s after"
            f" the heal, {h3_fresh} of {FRESH // BATCH} fresh batches on h3; late writes changed nothing"
        )
        assert first_new_s <= 15.0, first_new_s
    finally:
        for h in hosts.values():
            h.stop(timeout=10)
        if conn is not None:
            conn.close()
        broker.stop()
        cache.stop()
        pg.cleanup()


# real connections carry the options ----------------------------------------------------------

WANT = {"keepalive": 1, "idle": 3, "interval": 1, "count": 3, "user_timeout": 4000}


def options_of(fd: int) -> dict[str, int]:
    sock = socket.socket(fileno=os.dup(fd))
    try:
        return {
            "keepalive": sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
            "idle": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
            "interval": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
            "count": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
            "user_timeout": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
        }
    finally:
        sock.close()


def redis_fds(pool: Any) -> list[int]:
    conns = [*pool._available_connections, *pool._in_use_connections]
    return [conn._sock.fileno() for conn in conns if conn._sock is not None]


def test_real_connections_fail_fast(redis_cluster: LocalRedisCluster) -> None:
    tcp = {"tcp_keepalive_s": 3, "tcp_user_timeout_ms": 4000}
    with isolated_settings(**tcp) as settings:
        db = Database.connect(settings.database_url, size=1, wait=True, keepalive_s=3, user_timeout_ms=4000)
        try:
            with db.connection() as conn:
                assert options_of(conn.fileno()) == WANT
        finally:
            db.close()
        backend = RedisBackend(settings)
        try:
            backend.client.ping()
            broker = backend.build_broker([])
            assert isinstance(broker, SafeRedisBroker)
            broker.client.ping()
            broker.wake_event(CATEGORIZE_QUEUE)  # starts the wake subscriber: it takes a connection
            pool = broker.client.connection_pool
            wait_for(lambda: pool._in_use_connections, timeout=10, what="the wake subscription")
            broker.client.ping()  # and one more for the broker's calls
            fds = redis_fds(backend.client.connection_pool) + redis_fds(pool)
            assert len(fds) >= 3 and all(options_of(fd) == WANT for fd in fds)
        finally:
            backend.close()
        for url in (settings.cache_url, redis_cluster.url):
            client = open_client(url, timeout_s=2.0, keepalive_s=3, user_timeout_ms=4000)
            try:
                client.ping()
                pools = (
                    [n.redis_connection.connection_pool for n in client.get_nodes() if n.redis_connection]
                    if isinstance(client, redis.RedisCluster)
                    else [client.connection_pool]
                )
                fds = [fd for p in pools for fd in redis_fds(p)]
                assert fds and all(options_of(fd) == WANT for fd in fds), url
                for p in pools:
                    p.disconnect()  # a cluster client's close() leaves its nodes' connections open
            finally:
                client.close()
    # RabbitMQ (the other broker): pika's tcp_options in the URL the backend connects with
    mq = RabbitmqBackend(msgspec.structs.replace(settings, broker_url=f"{RABBIT}/%2F"))
    connection = pika.BlockingConnection(pika.URLParameters(mq.url))
    try:
        assert options_of(connection._impl._transport._sock.fileno()) == WANT
    finally:
        connection.close()
        mq.close()
