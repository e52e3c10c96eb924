"""Nothing an operator does stops a command with a traceback: a server that is missing or does
not speak its protocol, a database that does not exist, a file that is not there, a closed
stdout. Each answers with one line on stderr and the exit code the README documents."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import msgspec
import psycopg
import pytest
from psycopg import sql

from schemas import LEARN_QUEUE
from tests.support import data
from tests.support.broker import queue_state
from tests.support.services import run_catfleet
from workers.harness.databases import admin_url, drop_database, with_dbname
from workers.harness.processes import ROOT, settings_env
from workers.settings import Settings

#: Where nothing listens.
NO_REDIS = "redis://127.0.0.1:1/0"
NO_RABBIT = "amqp://guest:guest@127.0.0.1:1/%2F"
NO_POSTGRES = "postgresql://postgres@127.0.0.1:1/catfleet"
#: A port that answers, in another protocol (the local Redis).
NOT_POSTGRES = "postgresql://postgres@127.0.0.1:6379/catfleet"


NO_DB = {"DATABASE_URL": NO_POSTGRES}


def _with_query(url: str, query: str) -> str:
    return url + ("&" if "?" in url else "?") + query


#: (case id, argv, environment overrides built from the test settings, exit code)
CASES = [
    (
        "migrate-missing-db",
        ["migrate"],
        lambda s: {"DATABASE_URL": with_dbname(s.database_url, "catfleet_nope_x")},
        2,
    ),
    (
        "migrate-tls-refused",
        ["migrate"],
        lambda s: {"DATABASE_URL": _with_query(s.database_url, "sslmode=require")},
        2,
    ),
    ("migrate-no-server", ["migrate"], lambda s: {"DATABASE_URL": NO_POSTGRES}, 2),
    ("migrate-wrong-protocol", ["migrate"], lambda s: {"DATABASE_URL": NOT_POSTGRES}, 2),
    ("enqueue-redis-down", ["enqueue", "1", "2"], lambda s: {"BROKER_URL": NO_REDIS}, 2),
    ("enqueue-rabbit-down", ["enqueue", "1", "2"], lambda s: {"BROKER_URL": NO_RABBIT}, 2),
    ("enqueue-missing-file", ["enqueue", "--file", "/nonexistent/ids.txt"], lambda s: {}, 2),
    ("enqueue-all-db-down", ["enqueue", "--all-uncategorized"], lambda s: {"DATABASE_URL": NO_POSTGRES}, 2),
    # the database down too: the correction cannot be validated, so it goes to the broker
    ("correct-redis-down", ["correct", "1", "groceries"], lambda s: {"BROKER_URL": NO_REDIS, **NO_DB}, 2),
    ("correct-rabbit-down", ["correct", "1", "groceries"], lambda s: {"BROKER_URL": NO_RABBIT, **NO_DB}, 2),
    ("correct-unknown-expense", ["correct", str(10**15), "groceries"], lambda s: {}, 1),
    ("categories-db-down", ["categories", "list"], lambda s: {"DATABASE_URL": NO_POSTGRES}, 2),
    ("worker-unknown-queue", ["worker", "--queues", "categorize", "bogus"], lambda s: {}, 2),
    ("dlq-redis-down", ["dlq", "list"], lambda s: {"BROKER_URL": NO_REDIS}, 2),
    ("dlq-rabbit-down", ["dlq", "list"], lambda s: {"BROKER_URL": NO_RABBIT}, 2),
    ("patterns-db-down", ["patterns", "list"], lambda s: {"DATABASE_URL": NO_POSTGRES}, 2),
    ("relay-db-down", ["relay", "--once"], lambda s: {"DATABASE_URL": NO_POSTGRES}, 2),
    ("status-broker-down", ["status"], lambda s: {"BROKER_URL": NO_REDIS}, 1),
]


def _env(settings: Settings, overrides: dict[str, str]) -> dict[str, str]:
    return settings_env(settings, **{f"CATFLEET_{k}": v for k, v in overrides.items()})


def _run(settings: Settings, *argv: str, **overrides: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "workers", *argv],
        env=_env(settings, overrides),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_an_undeclared_queue_is_refused_with_the_valid_ones(settings: Settings) -> None:
    done = _run(settings, "worker", "--queues", "bogus")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.splitlines() == [
        "catfleet worker: unknown queue(s) 'bogus': the fleet's queues are categorize, categorize_bulk, learn"
        " (a queue's delay queue is consumed with it)"
    ]


def test_correct_refuses_what_the_worker_would_dead_letter(
    settings: Settings, conn: psycopg.Connection[Any], cats: dict[str, int]
) -> None:
    """Unknown category or expense: one line, exit 1, nothing enqueued. Database down: enqueued,
    with one warning line."""
    [expense] = data.add_expenses(conn, ["STARBUCKS"], user_id=7)
    conn.execute("INSERT INTO categories (key, name, user_id) VALUES ('mine', 'Mine', 7), ('theirs', 'T', 8)")
    done = _run(settings, "correct", str(expense), "nosuch")
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.splitlines() == [
        "catfleet correct: unknown category 'nosuch' for user 7 (valid: coffee, dining, fuel, groceries,"
        " mine, rideshare; see catfleet categories list --user 7); nothing enqueued"
    ]
    assert _run(settings, "correct", str(expense), "theirs").returncode == 1  # another user's own key
    conn.execute("UPDATE expenses SET deleted_at = now() WHERE id = %s", (expense,))
    done = _run(settings, "correct", str(expense), "coffee")
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"catfleet correct: unknown expense {expense} (it does not exist or was deleted); nothing enqueued"
    ]
    assert queue_state(settings, LEARN_QUEUE)["messages"] == 0
    conn.execute("UPDATE expenses SET deleted_at = NULL WHERE id = %s", (expense,))
    done = _run(settings, "correct", str(expense), "mine", "--json")
    assert done.returncode == 0 and done.stderr == ""
    assert json.loads(done.stdout)["validated"] is True
    # the database cannot be asked: enqueued anyway, and said so
    done = _run(settings, "correct", str(expense), "coffee", "--json", DATABASE_URL=NO_POSTGRES)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["validated"] is False
    [warning] = done.stderr.splitlines()
    assert warning.startswith("catfleet correct: warning: expense and category not validated (database: ")
    assert warning.endswith("enqueued anyway: an unknown one is dead-lettered by the worker")
    assert queue_state(settings, LEARN_QUEUE)["messages"] == 2


def test_categories_list_names_the_keys_correct_accepts(
    settings: Settings, conn: psycopg.Connection[Any], cats: dict[str, int]
) -> None:
    conn.execute(
        "INSERT INTO categories (key, name, parent_id, user_id) VALUES ('latte', 'Latte', %s, 7), ('x8', 'X', NULL, 8)",
        (cats["coffee"],),
    )
    done = _run(settings, "categories", "list")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["key", "name", "parent", "user"]
    assert [line.split()[0] for line in lines[1:-1]] == sorted([*cats, "latte", "x8"])
    assert lines[-1] == "7 categories"
    assert ["latte", "Latte", "coffee", "7"] in [line.split() for line in lines]
    mine = json.loads(_run(settings, "categories", "list", "--user", "7", "--json").stdout)
    assert [c["key"] for c in mine] == sorted([*cats, "latte"])
    assert {c["key"]: (c["parent"], c["user_id"]) for c in mine}["latte"] == ("coffee", 7)


@pytest.mark.parametrize(("argv", "env", "code"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_one_line_and_the_documented_exit_code(settings: Settings, argv: list[str], env, code: int) -> None:  # type: ignore[no-untyped-def]
    done = subprocess.run(
        [sys.executable, "-m", "workers", *argv],
        env=_env(settings, env(settings)),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = done.stderr.splitlines()
    assert done.returncode == code, done.stderr
    assert "Traceback" not in done.stderr
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"catfleet {argv[0]}: "), lines[0]


@pytest.mark.parametrize("argv", [["status"], ["status", "--json"]])
def test_a_closed_stdout_ends_the_command_quietly(settings: Settings, argv: list[str]) -> None:
    """``catfleet status | head -1``: the reader is gone before the output is written."""
    with subprocess.Popen(
        [sys.executable, "-m", "workers", *argv],
        env=_env(settings, {}),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=60) == 1  # EXIT_STDOUT_CLOSED
    assert err == "", err


@pytest.fixture
def unmigrated(settings: Settings) -> Iterator[Settings]:
    """A database the server has, without catfleet's schema (``migrate`` not run yet)."""
    name = f"catfleet_bare_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url(settings.database_url), autocommit=True) as c:
        c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield msgspec.structs.replace(settings, database_url=with_dbname(settings.database_url, name))
    finally:
        drop_database(settings.database_url, name)


@pytest.mark.parametrize(
    "argv",
    [
        ["categories", "list"],
        ["patterns", "list"],
        ["backfill", "list"],
        ["backfill", "show", "backfill:0123"],
        ["backfill", "--all", "--no-follow"],
        ["rules", "show"],
        ["rules", "diff"],
    ],
    ids=" ".join,
)
def test_a_database_that_is_not_migrated_gets_one_line_naming_the_fix(
    unmigrated: Settings, argv: list[str]
) -> None:
    done = run_catfleet(unmigrated, *argv)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith(f"catfleet {argv[0]}: relation ") and line.endswith(
        "does not exist: the database is not migrated (run catfleet migrate) or CATFLEET_DATABASE_URL names another"
    ), line
