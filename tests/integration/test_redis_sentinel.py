"""The Redis backend behind a ``redis+sentinel://`` URL (a primary, a replica and three Sentinels of
the module's own, ``tests.support.sentinel``): every client of the broker side reaches the primary
through the Sentinels, and with ``CATFLEET_BROKER_MIN_REPLICAS`` an enqueue the replica did not
confirm (``WAIT``) fails, so the outbox relay keeps its requests pending and sends them again."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import pytest
import redis

from pipeline import outbox
from pipeline.errors import BrokerUnavailable
from schemas import CATEGORIZE_QUEUE
from tests.support.sentinel import SentinelGroup, sentinel_group
from tests.support.servers import RedisServer, server_port
from tests.support.services import ROOT, run_catfleet, settings_env, wait_for
from workers.app import build_app
from workers.backends.redis.broker import NotReplicated
from workers.config import settings_from_env
from workers.harness.processes import stop_workers
from workers.producer import Producer
from workers.relay import Relay
from workers.settings import Settings


@pytest.fixture(scope="module")
def group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelGroup]:
    with sentinel_group(tmp_path_factory.mktemp("sentinel")) as g:
        yield g


@pytest.fixture
def fleet(settings: Settings, group: SentinelGroup, cats: dict[str, int]) -> Iterator[Settings]:
    own = msgspec.structs.replace(settings, broker_url=group.url(), broker_replica_timeout_ms=200)
    yield own
    with group.primary.client() as c:
        c.flushall()
    wait_for(lambda: group.replica.client().dbsize() == 0, timeout=10, what="the replica emptied too")


def queued(group: SentinelGroup, server: str, namespace: str) -> int:
    node = group.primary if server == "primary" else group.replica
    with node.client() as c:
        return int(c.llen(f"{namespace}:{CATEGORIZE_QUEUE}"))


def test_every_broker_client_reaches_the_primary_through_the_sentinels(
    fleet: Settings, group: SentinelGroup
) -> None:
    app = build_app(fleet)
    try:
        assert app.backend.check().ok
        report = Producer(app.broker, batch_size=10).enqueue(range(1, 36))
        stats = {q.queue: q for q in app.backend.queue_stats()}
        assert stats[CATEGORIZE_QUEUE].ready == report.messages == 4
        assert app.backend.workers_seen() == 1  # the producer's heartbeat, on the primary
    finally:
        app.close()
    assert queued(group, "primary", fleet.broker_namespace) == 4
    wait_for(lambda: queued(group, "replica", fleet.broker_namespace) == 4, timeout=5, what="replicated")
    # the CLI too: status through the Sentinels, its URL shown without the password
    status = run_catfleet(fleet, "status", "--json")
    assert status.returncode in (0, 1), status.stderr  # 1: no worker running
    doc = json.loads(status.stdout)
    assert doc["broker"] == fleet.broker_url
    assert {q["queue"]: q["ready"] for q in doc["queues"]}[CATEGORIZE_QUEUE] == 4


def test_a_bad_sentinel_url_is_one_line_and_exit_2(fleet: Settings) -> None:
    env = {**settings_env(fleet), "CATFLEET_BROKER_URL": "redis+sentinel://:hunter2@s1:26379,s2:x/catfleet"}
    done = subprocess.run(
        [sys.executable, "-m", "workers", "status"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "Traceback" not in done.stderr
    assert "CATFLEET_BROKER_URL: bad Sentinel host 's2:…'" in done.stderr and "hunter2" not in done.stderr


def test_no_sentinel_answering_is_one_line_and_exit_2(fleet: Settings) -> None:
    ports = [server_port(), server_port()]
    gone = msgspec.structs.replace(
        fleet, broker_url=f"redis+sentinel://127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}/catfleet"
    )
    done = run_catfleet(gone, "enqueue", "1", "2")
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr == (
        f"catfleet enqueue: MasterNotFoundError: no Sentinel (127.0.0.1:{ports[0]}, 127.0.0.1:{ports[1]})"
        " names a primary for 'catfleet' that is up (unreachable Sentinels, an unknown service, or a"
        " failover in progress)\n"
    )


def test_an_enqueue_no_replica_confirmed_fails_and_the_relay_sends_it_again(
    fleet: Settings, group: SentinelGroup, conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    conn.execute("TRUNCATE categorization_requests RESTART IDENTITY")
    waiting = msgspec.structs.replace(fleet, broker_min_replicas=1)
    app = build_app(waiting)
    relay = Relay(waiting.database_url, Producer(app.broker, batch_size=10), claim_size=100, poll_seconds=1)
    try:
        Producer(app.broker, batch_size=10).enqueue([1, 2, 3])  # the replica is up: confirmed
        group.replica.stop()
        with pytest.raises(NotReplicated, match=r"reached 0 of the 1 replica\(s\) asked for within 200 ms"):
            Producer(app.broker, batch_size=10).enqueue([4])
        outbox.request(conn, range(10, 30))
        with pytest.raises(BrokerUnavailable, match="NotReplicated"):
            relay.relay_batch()
        assert outbox.backlog(conn).pending == 20  # not confirmed: the claim rolled back
        # the primary has them all the same (a re-send duplicates them: the upsert absorbs that)
        assert queued(group, "primary", fleet.broker_namespace) == 1 + 1 + 2
        group.replica.start()
        wait_for(group.replica_in_sync, timeout=20, what="the replica back in sync")
        assert relay.drain() == 20
        assert outbox.backlog(conn).pending == 0
        assert queued(group, "replica", fleet.broker_namespace) == 1 + 1 + 2 + 2
    finally:
        relay.close()
        app.close()
        group.replica.start()
        conn.execute("TRUNCATE categorization_requests RESTART IDENTITY")


def test_the_deploy_configuration_runs(tmp_path: Path) -> None:
    """deploy/redis-sentinel's files, as shipped but for addresses, ports and directories: the Redis
    node refuses eviction, keeps an append-only file and stops writes without a replica; the
    Sentinel monitors it as ``catfleet`` with a quorum of 2."""
    conf = ROOT / "deploy" / "redis-sentinel"
    lines = [
        ln
        for ln in (conf / "catfleet.env").read_text().splitlines()
        if ln.lstrip("# ").startswith("CATFLEET_")
    ]
    env = dict(ln.lstrip("# ").split("=", 1) for ln in lines)
    assert set(env) == {
        "CATFLEET_BROKER_URL",
        "CATFLEET_BROKER_MIN_REPLICAS",
        "CATFLEET_BROKER_REPLICA_TIMEOUT_MS",
    }
    shipped = settings_from_env(env)  # the settings take every one of them
    assert shipped.broker_min_replicas == 1 and shipped.broker_url.startswith("redis+sentinel://")
    node = RedisServer(tmp_path / "node")
    sentinel_dir = tmp_path / "sentinel"
    sentinel_dir.mkdir()
    sentinel_conf = sentinel_dir / "sentinel.conf"
    sentinel_conf.write_text(
        (conf / "sentinel.conf").read_text().replace("redis-0 6379", f"127.0.0.1 {node.port}")
    )
    sentinel_port = server_port()
    redis_server = shutil.which("redis-server") or "redis-server"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(
            subprocess.Popen(
                [
                    redis_server,
                    str(conf / "redis.conf"),
                    "--port",
                    str(node.port),
                    "--bind",
                    "127.0.0.1",
                    "--dir",
                    str(node.dir),
                ],
                stdout=subprocess.DEVNULL,
                start_new_session=True,
            )
        )
        client = redis.Redis(port=node.port, password="CHANGE-ME-broker-password", socket_timeout=2)
        wait_for(lambda: _pings(client), timeout=10, what="the deploy redis.conf node")
        got = {
            k: client.config_get(k)[k] for k in ("maxmemory-policy", "appendonly", "min-replicas-to-write")
        }
        assert got == {"maxmemory-policy": "noeviction", "appendonly": "yes", "min-replicas-to-write": "1"}
        with pytest.raises(redis.exceptions.ResponseError, match=r"^NOREPLICAS"):  # no replica, no write
            client.set("k", "v")
        procs.append(
            subprocess.Popen(
                [
                    redis_server,
                    str(sentinel_conf),
                    "--sentinel",
                    "--port",
                    str(sentinel_port),
                    "--bind",
                    "127.0.0.1",
                    "--dir",
                    str(sentinel_dir),
                ],
                stdout=subprocess.DEVNULL,
                start_new_session=True,
            )
        )
        sentinel = redis.Redis(port=sentinel_port, socket_timeout=2, decode_responses=True)
        wait_for(lambda: _pings(sentinel), timeout=10, what="the deploy sentinel.conf Sentinel")
        master = sentinel.sentinel_master("catfleet")
        assert (master["port"], master["quorum"], master["down-after-milliseconds"]) == (node.port, 2, 5000)
        client.close()
        sentinel.close()
    finally:
        for proc in procs:
            stop_workers(proc, timeout=10)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.exceptions.ConnectionError:
        return False
