"""Producers outside Python: the README's redis-cli commands and a Node.js script with the
stock ``redis`` client enqueue messages that real workers categorize or dead-letter."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest

from schemas import CATEGORIZE_ACTOR, CATEGORIZE_BULK_ACTOR, CATEGORIZE_BULK_QUEUE, CATEGORIZE_QUEUE
from tests.support import data
from tests.support.broker import dead_messages, queue_state
from tests.support.readme import readme_block
from tests.support.services import WorkerProcess, log_events, wait_for
from workers.app import App
from workers.backends.redis import RedisFailureLog
from workers.harness.processes import ROOT
from workers.settings import Settings

NODE_DIR = ROOT / "tests" / "node"
REDIS_CLI_MARKER = "# enqueue categorize_batch with redis-cli\n"


def redis_cli_enqueue(settings: Settings, ids: str, *, lane: str = "interactive") -> str:
    """Run the README block verbatim with this test's broker URL, namespace, IDs and lane."""
    env = dict(os.environ, REDIS_URL=settings.broker_url, NS=settings.broker_namespace, IDS=ids, LANE=lane)
    out = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", readme_block(REDIS_CLI_MARKER)],
        env=env, capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    return out.stdout


@pytest.fixture(scope="session")
def node_producer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/node installed from its lock file (npm ci) into a temp dir."""
    for tool in ("node", "npm"):
        assert shutil.which(tool), f"{tool} is missing: run scripts/ensure-services"
    where = tmp_path_factory.mktemp("node")
    for name in ("package.json", "package-lock.json", "enqueue.js"):
        shutil.copy(NODE_DIR / name, where / name)
    subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=where, check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    return where


def node_enqueue(
    where: Path,
    settings: Settings,
    payload: str,
    *,
    actor: str = CATEGORIZE_ACTOR,
    queue: str = CATEGORIZE_QUEUE,
    envelope: dict[str, Any] | None = None,
) -> dict[str, str | None]:
    """Run tests/node/enqueue.js; ``envelope``: fields to add or (None) remove. Its message id and
    Redis message id."""
    out = subprocess.run(
        ["node", "enqueue.js", settings.broker_url, settings.broker_namespace, payload,
         queue, actor, json.dumps(envelope or {})],
        cwd=where, capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    sent: dict[str, str | None] = json.loads(out.stdout)
    return sent


def rows_by_expense(conn: psycopg.Connection[Any]) -> dict[int, tuple[Any, ...]]:
    return {
        r[0]: r[1:] for r in conn.execute("SELECT expense_id, category_id, message_id FROM categorizations")
    }


def assert_dead_lettered(app: App, settings: Settings, reason: str) -> str:
    [dead] = wait_for(lambda: dead_messages(settings), what="dead letter")
    assert dead["options"].get("retries", 0) == 0  # at once, not retried
    assert isinstance(app.failures, RedisFailureLog)
    [record] = wait_for(lambda: app.failures.history(dead["message_id"]), what="failure record")
    assert record.dead and record.error_type == "InvalidMessage" and reason in record.error
    return str(dead["message_id"])


def test_readme_redis_cli_commands_enqueue_a_batch(
    worker: WorkerProcess, conn: psycopg.Connection[Any], cats: dict[str, int], settings: Settings
) -> None:
    ids = data.add_expenses(conn, ["PAYPAL *STARBUCKS 402935", "TST* WALMART STORE #4567", "UBER *TRIP"])
    out = redis_cli_enqueue(settings, ",".join(map(str, ids)))
    # MULTI, HSET, RPUSH, PUBLISH, then EXEC's replies; the last one counts the wake subscribers
    # that got it (this worker's process, and any other fleet process of the namespace still up)
    replies = out.split()
    assert replies[:6] == ["OK", "QUEUED", "QUEUED", "QUEUED", "1", "1"] and int(replies[6]) >= 1, replies
    got = wait_for(lambda: (r := rows_by_expense(conn)) and len(r) == 3 and r, what="3 rows")
    assert [got[i][0] for i in ids] == [cats["coffee"], cats["groceries"], cats["rideshare"]]
    assert len({got[i][1] for i in ids}) == 1  # one message, its id recorded


def test_readme_redis_cli_commands_enqueue_on_the_bulk_lane(
    worker: WorkerProcess, conn: psycopg.Connection[Any], cats: dict[str, int], settings: Settings
) -> None:
    """The same README block with ``LANE=bulk``: queue ``categorize_bulk``, actor
    ``categorize_batch_bulk``, its own wake channel."""
    ids = data.add_expenses(conn, ["PAYPAL *STARBUCKS 402935", "UBER *TRIP"])
    replies = redis_cli_enqueue(settings, ",".join(map(str, ids)), lane="bulk").split()
    assert replies[:6] == ["OK", "QUEUED", "QUEUED", "QUEUED", "1", "1"] and int(replies[6]) >= 1, replies
    got = wait_for(lambda: (r := rows_by_expense(conn)) and len(r) == 2 and r, what="2 rows")
    assert [got[i][0] for i in ids] == [cats["coffee"], cats["rideshare"]]
    [batch] = wait_for(lambda: log_events(worker, "batch"), what="the batch line")
    assert batch["actor"] == CATEGORIZE_BULK_ACTOR and batch["message_id"] == got[ids[0]][1]
    assert queue_state(settings, CATEGORIZE_BULK_QUEUE)["dead"] == 0


def test_node_client_enqueues_on_the_bulk_lane(
    worker: WorkerProcess,
    conn: psycopg.Connection[Any],
    cats: dict[str, int],
    settings: Settings,
    node_producer: Path,
) -> None:
    ids = data.add_expenses(conn, ["SQ *STARBUCKS"])
    sent = node_enqueue(
        node_producer,
        settings,
        f'{{"expense_ids": {ids}}}',
        actor=CATEGORIZE_BULK_ACTOR,
        queue=CATEGORIZE_BULK_QUEUE,
    )
    got = wait_for(lambda: (r := rows_by_expense(conn)) and len(r) == 1 and r, what="1 row")
    assert got == {ids[0]: (cats["coffee"], sent["message_id"])}
    [batch] = wait_for(lambda: log_events(worker, "batch"), what="the batch line")
    assert batch["actor"] == CATEGORIZE_BULK_ACTOR


def test_node_client_enqueues_a_batch(
    worker: WorkerProcess,
    conn: psycopg.Connection[Any],
    cats: dict[str, int],
    settings: Settings,
    node_producer: Path,
) -> None:
    ids = data.add_expenses(conn, ["SQ *STARBUCKS", "SHELL FUEL"])
    message_id = node_enqueue(
        node_producer, settings, f'{{"expense_ids": {ids}, "correlation_id": "from-node"}}'
    )["message_id"]
    got = wait_for(lambda: (r := rows_by_expense(conn)) and len(r) == 2 and r, what="2 rows")
    assert got == {ids[0]: (cats["coffee"], message_id), ids[1]: (cats["fuel"], message_id)}
    assert conn.execute("SELECT DISTINCT correlation_id FROM categorizations").fetchall() == [("from-node",)]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [('{"expense_ids": [1], "surprise": true}', "unknown field"), ('{"expense_ids": []}', "length >= 1")],
    ids=["extra-field", "empty"],
)
def test_node_client_bad_payload_is_dead_lettered_and_worker_goes_on(
    worker: WorkerProcess,
    app: App,
    conn: psycopg.Connection[Any],
    cats: dict[str, int],
    settings: Settings,
    node_producer: Path,
    payload: str,
    reason: str,
) -> None:
    bad_id = node_enqueue(node_producer, settings, payload)["message_id"]
    good = data.add_expenses(conn, ["WALMART"])
    node_enqueue(node_producer, settings, f'{{"expense_ids": {good}}}')
    wait_for(lambda: len(rows_by_expense(conn)) == 1, what="the next good message")
    assert assert_dead_lettered(app, settings, reason) == bad_id
    assert worker.proc.poll() is None


def test_redis_cli_bad_payload_is_dead_lettered_and_worker_goes_on(
    worker: WorkerProcess, app: App, conn: psycopg.Connection[Any], cats: dict[str, int], settings: Settings
) -> None:
    redis_cli_enqueue(settings, '"12",13')
    good = data.add_expenses(conn, ["STARBUCKS"])
    redis_cli_enqueue(settings, str(good[0]))
    wait_for(lambda: len(rows_by_expense(conn)) == 1, what="the next good message")
    assert_dead_lettered(app, settings, "Expected `int`")
    assert worker.proc.poll() is None


#: A wrong envelope from a producer outside Python: (fields added or removed, actor, how its
#: dead letter's reason is recorded, what the reason says).
WRONG_ENVELOPES: dict[str, tuple[dict[str, Any], str, str, str]] = {
    "extra-field": (
        {"surprise": True},
        CATEGORIZE_ACTOR,
        "DecodeError",
        "unexpected keyword argument 'surprise'",
    ),
    "unknown-actor": ({}, "no_such_actor", "ActorNotFound", "no_such_actor"),
    "no-message-id": ({"message_id": None}, CATEGORIZE_ACTOR, "DecodeError", "message_id"),
}


@pytest.mark.parametrize("case", list(WRONG_ENVELOPES))
def test_node_client_wrong_envelope_is_dead_lettered_and_worker_goes_on(
    worker: WorkerProcess,
    app: App,
    conn: psycopg.Connection[Any],
    cats: dict[str, int],
    settings: Settings,
    node_producer: Path,
    case: str,
) -> None:
    envelope, actor, error_type, reason = WRONG_ENVELOPES[case]
    [bad, good] = data.add_expenses(conn, ["STARBUCKS", "WALMART"])
    sent = node_enqueue(
        node_producer, settings, f'{{"expense_ids": [{bad}]}}', actor=actor, envelope=envelope
    )
    node_enqueue(node_producer, settings, f'{{"expense_ids": [{good}]}}')
    wait_for(lambda: good in rows_by_expense(conn), what="the next good message")
    state = wait_for(
        lambda: (s := queue_state(settings))["queued"] == s["unacked"] == s["delayed"] == 0 and s,
        what="nothing left in flight",
    )
    # Never a crash loop: the same process took the next message, its consumer never restarted.
    assert worker.proc.poll() is None and '"level":"CRITICAL"' not in worker.log()
    assert state["dead"] == 1 and bad not in rows_by_expense(conn)
    [dead] = dead_messages(settings)
    assert dead["options"]["redis_message_id"] == sent["redis_message_id"] and dead["actor_name"] == actor
    # An undecodable one has no readable message id: its reason is under the Redis message id.
    key = sent["redis_message_id"] if error_type == "DecodeError" else sent["message_id"]
    assert isinstance(app.failures, RedisFailureLog) and key is not None
    records = app.failures.history(key)
    [record] = records
    assert record.dead and record.error_type == error_type and reason in record.error
