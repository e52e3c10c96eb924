"""Connections that fail fast: the keepalive and user-timeout options every PostgreSQL and Redis
connection of the fleet gets, and the stall rule of the broker maintenance (no servers here:
nothing connects until used)."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import msgspec
import pika
import pytest
import redis
from psycopg.conninfo import conninfo_to_dict

from pipeline.cache.client import fail_fast_options
from pipeline.cache.shared import SharedTier
from pipeline.db import fail_fast_conninfo
from workers.backends.rabbitmq import RabbitmqBackend, fail_fast_url
from workers.backends.redis import RedisBackend
from workers.backends.redis.broker import SafeRedisBroker
from workers.backends.redis.maintenance import BrokerMaintenance, connection_failure_bound_ms, stall_bound_ms
from workers.config import settings_from_env
from workers.runtime import shared_tier
from workers.settings import Settings


def settings(**overrides: Any) -> Settings:
    fields: dict[str, Any] = {"broker_url": "redis://127.0.0.1:1/0", **overrides}
    return msgspec.structs.replace(settings_from_env({}), **fields)


def test_conninfo_gets_keepalives_and_user_timeout() -> None:
    info = conninfo_to_dict(fail_fast_conninfo("postgresql://postgres@db.example:5433/catfleet"))
    assert info == {
        "user": "postgres",
        "host": "db.example",
        "port": "5433",
        "dbname": "catfleet",
        "keepalives": "1",
        "keepalives_idle": "5",
        "keepalives_interval": "1",
        "keepalives_count": "3",
        "tcp_user_timeout": "10000",
    }
    custom = conninfo_to_dict(fail_fast_conninfo("host=h dbname=d", keepalive_s=2, user_timeout_ms=3000))
    assert (custom["keepalives_idle"], custom["tcp_user_timeout"]) == ("2", "3000")


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://u:pw@h/d?keepalives_idle=30&tcp_user_timeout=0&keepalives=0",
        "host=h dbname=d password=pw keepalives_idle=30 tcp_user_timeout=0 keepalives=0",
    ],
)
def test_values_in_the_dsn_are_kept(dsn: str) -> None:
    info = conninfo_to_dict(fail_fast_conninfo(dsn))
    assert (info["keepalives"], info["keepalives_idle"], info["tcp_user_timeout"]) == ("0", "30", "0")
    assert (info["keepalives_interval"], info["keepalives_count"], info["password"]) == ("1", "3", "pw")


EXPECTED_REDIS = {
    "socket_keepalive": True,
    "socket_keepalive_options": {
        socket.TCP_KEEPIDLE: 5,
        socket.TCP_KEEPINTVL: 1,
        socket.TCP_KEEPCNT: 3,
        socket.TCP_USER_TIMEOUT: 10_000,
    },
}


def test_redis_options() -> None:
    assert fail_fast_options() == EXPECTED_REDIS
    opts = fail_fast_options(keepalive_s=2, user_timeout_ms=3000)["socket_keepalive_options"]
    assert (opts[socket.TCP_KEEPIDLE], opts[socket.TCP_USER_TIMEOUT]) == (2, 3000)


def _pool_kwargs(pool: redis.ConnectionPool) -> dict[str, Any]:
    return {k: pool.connection_kwargs.get(k) for k in EXPECTED_REDIS}


def test_broker_backend_and_wake_connections_get_them() -> None:
    backend = RedisBackend(settings())
    try:
        assert _pool_kwargs(backend.client.connection_pool) == EXPECTED_REDIS
        broker = backend.build_broker([])
        assert isinstance(broker, SafeRedisBroker)
        # the wake subscriber's pub/sub takes its connection from this pool too
        assert _pool_kwargs(broker.client.connection_pool) == EXPECTED_REDIS
        assert broker.client.connection_pool.connection_kwargs["port"] == 1
    finally:
        backend.close()


def test_the_url_wins() -> None:
    backend = RedisBackend(settings(broker_url="redis://127.0.0.1:1/0?socket_keepalive=false"))
    try:
        assert backend.client.connection_pool.connection_kwargs["socket_keepalive"] is False
    finally:
        backend.close()


def test_the_cache_client_gets_them_from_the_settings() -> None:
    seen: dict[str, Any] = {}

    def fake_open(url: str, *, timeout_s: float, **kwargs: Any) -> Any:
        seen.update(kwargs, url=url)
        raise redis.ConnectionError("no server in a unit test")

    tier = shared_tier(settings(tcp_keepalive_s=7, tcp_user_timeout_ms=4000))
    monkey = pytest.MonkeyPatch()
    monkey.setattr("pipeline.cache.shared.open_client", fake_open)
    try:
        with pytest.raises(redis.ConnectionError):
            tier._connect(tier.url, tier.timeout_s)
    finally:
        monkey.undo()
    assert (seen["keepalive_s"], seen["user_timeout_ms"]) == (7, 4000)
    assert isinstance(tier, SharedTier)


# the stall rule ------------------------------------------------------------------------------


def test_bounds() -> None:
    assert connection_failure_bound_ms(keepalive_s=5, user_timeout_ms=10_000) == 10_000
    assert connection_failure_bound_ms(keepalive_s=30, user_timeout_ms=10_000) == 33_000
    assert stall_bound_ms(keepalive_s=5, user_timeout_ms=10_000) == 30_000
    assert BrokerMaintenance.from_settings(settings()).stall_ms == 30_000


class FakeBroker(SafeRedisBroker):
    def __init__(self) -> None:  # no Redis: only what the maintenance thread calls
        self.broker_id = "first"
        self.abandoned: list[BaseException] = []
        self.beats = 0

    def abandon_broker_id(self, error: BaseException) -> None:
        self.abandoned.append(error)
        self.broker_id = f"id{len(self.abandoned)}"

    def run_maintenance(self) -> None:
        self.beats += 1


class FakeWorker:
    worker_threads = 2


def busy_thread(maint: BrokerMaintenance, done: threading.Event) -> threading.Thread:
    def work() -> None:
        maint.before_process_message(None, None)  # type: ignore[arg-type]
        done.wait()
        maint.after_process_message(None, None)  # type: ignore[arg-type]

    t = threading.Thread(target=work)
    t.start()
    return t


def test_a_process_whose_threads_are_all_stuck_gives_up_its_broker_id() -> None:
    maint = BrokerMaintenance(interval_ms=3_600_000, stall_ms=200)
    broker = FakeBroker()
    maint.after_worker_boot(broker, FakeWorker())
    done = threading.Event()
    try:
        first = busy_thread(maint, done)
        time.sleep(0.3)
        maint.tick(broker)  # one thread stuck, one free: not a stall
        assert broker.abandoned == [] and broker.beats == 1
        second = busy_thread(maint, done)
        time.sleep(0.1)
        maint.tick(broker)  # both busy, but the second for less than the bound
        assert broker.abandoned == []
        time.sleep(0.2)
        maint.tick(broker)
        maint.tick(broker)  # the same stall: once
        assert len(broker.abandoned) == 1 and broker.broker_id == "id1" and broker.beats == 4
        done.set()
        first.join()
        second.join()
        assert maint.stalled_since(time.monotonic() + 10) is None
    finally:
        done.set()
        maint.before_worker_shutdown(broker, FakeWorker())


def test_without_a_bound_it_never_abandons() -> None:
    maint = BrokerMaintenance(interval_ms=1000)
    maint._threads = 1
    maint.before_process_message(None, None)  # type: ignore[arg-type]
    assert maint.stalled_since(time.monotonic() + 3600) is None


def test_rabbitmq_connections_get_tcp_options() -> None:
    url = fail_fast_url("amqp://u:pw@mq.example:5673/vh?heartbeat=30", keepalive_s=5, user_timeout_ms=10_000)
    params = pika.URLParameters(url)
    assert params.tcp_options == {
        "TCP_KEEPIDLE": 5,
        "TCP_KEEPINTVL": 1,
        "TCP_KEEPCNT": 3,
        "TCP_USER_TIMEOUT": 10_000,
    }
    assert (params.host, params.port, params.virtual_host, params.heartbeat) == ("mq.example", 5673, "vh", 30)
    assert params.credentials.password == "pw"
    given = "amqp://h/?tcp_options=%7B%27TCP_KEEPIDLE%27%3A+60%7D"
    assert fail_fast_url(given, keepalive_s=5, user_timeout_ms=10_000) == given
    backend = RabbitmqBackend(settings(broker_url="amqp://guest:guest@127.0.0.1:1/"))
    try:
        assert pika.URLParameters(backend.url).tcp_options["TCP_USER_TIMEOUT"] == 10_000
    finally:
        backend.close()
