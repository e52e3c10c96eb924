from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pipeline.cache import LocalTier
from pipeline.categorize import Categorizer
from pipeline.db import Database
from pipeline.learning import Learner
from tests.support import cache, data
from tests.support.services import WorkerProcess, flush_namespace, isolated_settings
from workers.app import App, build_app
from workers.settings import Settings

pytest_plugins = ["tests.support.cluster"]  # redis_cluster / redis_single fixtures


@pytest.fixture(scope="session")
def settings() -> Iterator[Settings]:
    """One throwaway database and Redis namespace for the whole run (real servers: they must be up)."""
    with isolated_settings() as s:
        yield s


@pytest.fixture
def conn(settings: Settings) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(settings.database_url, autocommit=True) as c:
        yield c


@pytest.fixture
def cats(conn: psycopg.Connection[Any], settings: Settings) -> dict[str, int]:
    """A clean database with categories and the standard patterns; a clean broker namespace."""
    flush_namespace(settings)
    ids = data.reset(conn)
    data.seed_patterns(conn, ids)
    return ids


@pytest.fixture
def db(settings: Settings) -> Iterator[Database]:
    """A pool on the run's database (a module may define its own, e.g. one that counts queries)."""
    database = Database.connect(settings.database_url, size=2, wait=True)
    yield database
    database.close()


@pytest.fixture
def learner(db: Database) -> Learner:
    return Learner(db)


@pytest.fixture
def categorizer(db: Database) -> Categorizer:
    """The Categorizer on ``db`` with a private L1 as its only cache tier."""
    return cache.categorizer(db, [LocalTier(max_entries=1000, ttl_seconds=60)])


@pytest.fixture
def app(settings: Settings) -> Iterator[App]:
    """The fleet's app (its broker is a producer here), closed afterwards."""
    a = build_app(settings)
    yield a
    a.close()


@pytest.fixture
def worker(settings: Settings, tmp_path: Path, cats: dict[str, int]) -> Iterator[WorkerProcess]:
    w = WorkerProcess(settings, tmp_path / "worker.log")
    try:
        w.wait_ready()
        yield w
    finally:
        w.stop()
