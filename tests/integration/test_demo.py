"""The main job, ``catfleet demo``, end to end on the real servers, as on a fresh machine: the
configured database does not exist yet (the demo makes ``<database>_demo`` next to it). The demo
works in a broker namespace of its own, made for the run and deleted afterwards: messages
already in the configured namespace (or the old fixed ``catfleet-demo`` one) are not touched."""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from pathlib import Path

import msgspec
import redis

from schemas import CATEGORIZE_QUEUE
from tests.support.rabbit import RABBIT, rabbit_vhost
from workers.app import build_app
from workers.backends import backend_for
from workers.backends.redis.keys import RedisKeys
from workers.demo.run import DEMO_PREFIX
from workers.harness.databases import dbname, drop_database, with_dbname
from workers.harness.processes import ROOT, settings_env
from workers.producer import Producer
from workers.settings import Settings


def test_demo_sets_itself_up_categorizes_everything_and_prints_the_summary(settings: Settings) -> None:
    missing = f"catfleet_fresh_{uuid.uuid4().hex[:8]}"
    argv = ["demo", "--expenses", "3000", "--users", "50", "--processes", "1"]
    fresh = msgspec.structs.replace(settings, database_url=with_dbname(settings.database_url, missing))
    client = redis.Redis.from_url(settings.broker_url)
    # a message waiting in the configured namespace, and one in the namespace the demo used to flush
    waiting = [RedisKeys(settings.broker_namespace), RedisKeys("catfleet-demo")]
    message_id = f"not-the-demos-{uuid.uuid4().hex[:8]}"
    for keys in waiting:
        client.rpush(keys.queue(CATEGORIZE_QUEUE), message_id)
        client.hset(keys.messages(CATEGORIZE_QUEUE), message_id, b"{}")
    try:
        done = subprocess.run(
            [sys.executable, "-m", "workers", *argv],
            env=settings_env(fresh),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        untouched = [
            (
                message_id.encode() in client.lrange(keys.queue(CATEGORIZE_QUEUE), 0, -1),
                client.hget(keys.messages(CATEGORIZE_QUEUE), message_id),
            )
            for keys in waiting
        ]
        leftovers = list(client.scan_iter(f"{DEMO_PREFIX}*", count=1000))
    finally:
        drop_database(settings.database_url, f"{missing}_demo")
        for keys in waiting:
            client.lrem(keys.queue(CATEGORIZE_QUEUE), 0, message_id)
            client.hdel(keys.messages(CATEGORIZE_QUEUE), message_id)
        client.close()
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert untouched == [(True, b"{}"), (True, b"{}")]  # neither flushed nor consumed
    assert leftovers == []  # the run's own namespace is gone
    out = done.stdout
    assert "=== catfleet demo summary ===" in out and "workers stopped" in out
    rows = int(re.search(r"\(([\d,]+) rows in", out).group(1).replace(",", ""))  # type: ignore[union-attr]
    outcomes = re.search(
        r"categorized ([\d,]+)\s+suggested ([\d,]+)\s+uncategorized ([\d,]+)\s+missing ([\d,]+)", out
    )
    assert outcomes, out
    auto, suggest, none, gone = (int(g.replace(",", "")) for g in outcomes.groups())
    # every requested ID is accounted for: a row each for the live ones, the rest counted missing
    assert auto + suggest + none == rows and rows + gone == 3000 + 25
    assert auto > rows // 2 and re.search(r"p50 [\d,]+\s+p95 [\d,]+\s+p99 [\d,]+", out)


def _demo(settings: Settings, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "workers", "demo", *argv],
        env=settings_env(settings, **env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_with_rabbitmq_the_demo_runs_in_a_vhost_of_its_own(settings: Settings) -> None:
    """The configured vhost's categorize queue keeps its message: the demo neither purges it nor
    lets its workers consume it; the demo's own vhost is gone afterwards."""
    with rabbit_vhost() as url:
        configured = msgspec.structs.replace(settings, broker_url=url)
        app = build_app(configured)
        try:
            Producer(app.broker, batch_size=10).enqueue([987654321])
        finally:
            app.close()
        try:
            done = _demo(configured, "--expenses", "500", "--users", "10", "--processes", "1")
            backend = backend_for(configured)
            try:
                ready = {q.queue: q.ready for q in backend.queue_stats()}[CATEGORIZE_QUEUE]
            finally:
                backend.close()
            vhosts = subprocess.run(
                ["rabbitmqctl", "-q", "list_vhosts"], capture_output=True, text=True, check=True, timeout=120
            ).stdout.split()
        finally:
            drop_database(settings.database_url, f"{dbname(settings.database_url)}_demo")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "=== catfleet demo summary ===" in done.stdout
    assert ready == 1
    assert not [v for v in vhosts if v.startswith(DEMO_PREFIX)]


def test_without_rabbitmqctl_the_demo_refuses_an_amqp_broker(settings: Settings, tmp_path: Path) -> None:
    amqp = msgspec.structs.replace(settings, broker_url=f"{RABBIT}/%2F")
    done = _demo(amqp, "--expenses", "10", PATH=str(tmp_path))  # no rabbitmqctl on the PATH
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.splitlines()) == 1 and "rabbitmqctl" in done.stderr, done.stderr
    assert "loading" not in done.stdout  # refused before anything was made
