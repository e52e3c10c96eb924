"""Real TLS: a Redis (broker and cache) and a PostgreSQL that the test starts itself, speaking
only TLS, with a throwaway CA and client certificates (``tests/support/tls.py``). The fleet is
configured the way the README says (URL query parameters for Redis, libpq parameters with
``sslmode=verify-full`` for PostgreSQL): a database created and migrated, expenses categorized by
a real worker, ``catfleet status`` ready; the wrong CA fails in one line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import pytest
import redis
from psycopg.conninfo import make_conninfo

from tests.support import data
from tests.support.data import count_rows
from tests.support.services import WorkerProcess, run_catfleet, wait_for
from tests.support.tls import TlsFiles, TlsPostgresServer, TlsRedisServer
from workers.settings import Settings


class Servers(msgspec.Struct):
    tls: TlsFiles
    redis: TlsRedisServer
    postgres: TlsPostgresServer


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    root = tmp_path_factory.mktemp("tls")
    tls = TlsFiles(root / "certs")
    redis_server = TlsRedisServer(root / "redis", tls)
    postgres = TlsPostgresServer(tls)
    try:
        redis_server.start()
        postgres.start()
        yield Servers(tls, redis_server, postgres)
    finally:
        redis_server.stop()
        postgres.cleanup()


def tls_settings(
    settings: Settings, s: Servers, *, redis_ca: Path | None = None, pg_ca: Path | None = None
) -> Settings:
    return msgspec.structs.replace(
        settings,
        broker_url=s.tls.redis_url(s.redis.port, 0, ca=redis_ca),
        cache_url=s.tls.redis_url(s.redis.port, 1, ca=redis_ca),
        database_url=s.tls.postgres_dsn(make_conninfo(s.postgres.url, dbname="catfleet_tls"), ca=pg_ca),
    )


def test_a_fleet_over_verified_tls(servers: Servers, settings: Settings, tmp_path: Path) -> None:
    own = tls_settings(settings, servers)
    created = run_catfleet(own, "migrate", "--create-database")
    assert created.returncode == 0, created.stderr
    assert created.stdout.startswith("created database catfleet_tls\napplied ")
    with psycopg.connect(own.database_url, autocommit=True) as conn:
        cats = data.reset(conn)
        data.seed_patterns(conn, cats)
        ids = data.add_expenses(conn, ["PAYPAL *STARBUCKS 402935", "WALMART", "SHELL FUEL"] * 5)
        worker = WorkerProcess(own, tmp_path / "worker.log")
        try:
            worker.wait_ready()
            sent = run_catfleet(own, "enqueue", "--json", "--correlation-id", "over-tls", *map(str, ids))
            assert sent.returncode == 0, sent.stderr
            wait_for(lambda: count_rows(conn) == len(ids), what="every expense categorized over TLS")
            got = conn.execute(
                "SELECT k.key, count(*) FROM categorizations c JOIN categories k ON k.id = c.category_id"
                " WHERE c.correlation_id = 'over-tls' GROUP BY k.key ORDER BY k.key"
            ).fetchall()
            assert got == [("coffee", 5), ("fuel", 5), ("groceries", 5)]
            status = run_catfleet(own, "status", "--json")
            assert status.returncode == 0, status.stderr
            report: dict[str, Any] = json.loads(status.stdout)
            assert report["readiness"]["status"] == "ready", report["readiness"]
            assert report["workers_seen"] >= 1
            # every connection to this server is TLS (pg_hba allows nothing else), the worker's too
            ssl = conn.execute(
                "SELECT s.ssl, count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)"
                " WHERE a.datname = 'catfleet_tls' GROUP BY s.ssl"
            ).fetchall()
            assert ssl == [(True, ssl[0][1])] and ssl[0][1] >= 2
        finally:
            worker.stop()
    # the worker's pattern cache (L2) was the TLS Redis too: no breaker opened, its keys are there
    assert "breaker_transition" not in worker.log()
    with redis.Redis.from_url(own.cache_url) as cache:
        assert next(cache.scan_iter(f"{own.cache_prefix}:*", count=1000), None) is not None


@pytest.mark.parametrize(
    ("argv", "which", "code"),
    [(["status"], "redis", 1), (["enqueue", "1"], "redis", 2), (["migrate"], "postgres", 2)],
    ids=["status-redis", "enqueue-redis", "migrate-postgres"],
)
def test_the_wrong_ca_fails_in_one_line(
    servers: Servers, settings: Settings, argv: list[str], which: str, code: int
) -> None:
    wrong = servers.tls.wrong_ca.cert
    own = tls_settings(
        settings,
        servers,
        redis_ca=wrong if which == "redis" else None,
        pg_ca=wrong if which == "postgres" else None,
    )
    done = run_catfleet(own, *argv)
    lines = done.stderr.splitlines()
    assert done.returncode == code, done.stderr
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith(f"catfleet {argv[0]}: ")
    assert "certificate verify failed" in lines[0].lower(), lines[0]
