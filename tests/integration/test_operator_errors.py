"""Nothing an operator does stops a command with a traceback: a server that is missing or does
not speak its protocol, a database that does not exist, a file that is not there, a closed
stdout. Each answers with one line on stderr and the exit code the README documents."""

from __future__ import annotations

import subprocess
import sys

import pytest

from workers.harness.databases import with_dbname
from workers.harness.processes import ROOT, settings_env
from workers.settings import Settings

#: Where nothing listens.
NO_REDIS = "redis://127.0.0.1:1/0"
NO_RABBIT = "amqp://guest:guest@127.0.0.1:1/%2F"
NO_POSTGRES = "postgresql://postgres@127.0.0.1:1/catfleet"
#: A port that answers, in another protocol (the local Redis).
NOT_POSTGRES = "postgresql://postgres@127.0.0.1:6379/catfleet"


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
    ("correct-redis-down", ["correct", "1", "groceries"], lambda s: {"BROKER_URL": NO_REDIS}, 2),
    ("correct-rabbit-down", ["correct", "1", "groceries"], lambda s: {"BROKER_URL": NO_RABBIT}, 2),
    ("dlq-redis-down", ["dlq", "list"], lambda s: {"BROKER_URL": NO_REDIS}, 2),
    ("dlq-rabbit-down", ["dlq", "list"], lambda s: {"BROKER_URL": NO_RABBIT}, 2),
    ("patterns-db-down", ["patterns", "list"], lambda s: {"DATABASE_URL": NO_POSTGRES}, 2),
    ("relay-db-down", ["relay", "--once"], lambda s: {"DATABASE_URL": NO_POSTGRES}, 2),
    ("status-broker-down", ["status"], lambda s: {"BROKER_URL": NO_REDIS}, 1),
]


def _env(settings: Settings, overrides: dict[str, str]) -> dict[str, str]:
    return settings_env(settings, **{f"CATFLEET_{k}": v for k, v in overrides.items()})


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
