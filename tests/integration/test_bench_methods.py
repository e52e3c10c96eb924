"""The bench's method choices that matter, pinned: the latency clock stops after COMMIT (as a
producer's service would see it), completion is heard without a polling query, and CPU is
attributed to the bench database's own backends only."""

from __future__ import annotations

import time

import psycopg

from workers.bench import cpu
from workers.bench.env import bench_env
from workers.bench.scenarios import after_commit_latencies_ms
from workers.producer import Producer
from workers.settings import Settings

HOLD_KEY = 4242
#: In the bench's throwaway database only: at COMMIT of a transaction that inserted a
#: categorization, wait for the advisory lock the test holds. The row is written (and its NOTIFY
#: queued) inside the worker's transaction, which stays open until the test lets it commit.
HOLD_AT_COMMIT = f"""
CREATE FUNCTION bench_test_hold() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_advisory_xact_lock_shared({HOLD_KEY}); RETURN NULL; END $$;
CREATE CONSTRAINT TRIGGER bench_test_hold AFTER INSERT ON categorizations
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION bench_test_hold();
"""
WAITING_AT_COMMIT = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = %s AND NOT granted"


def test_the_latency_clock_stops_after_commit(settings: Settings) -> None:
    hold_s = 0.4
    with bench_env(settings) as env:
        ids = env.load(3)
        env.conn.execute(HOLD_AT_COMMIT.encode())
        with (
            env.workers("hold-at-commit", processes=1),
            psycopg.connect(env.settings.database_url, autocommit=True) as locker,
        ):
            locker.execute("SELECT pg_advisory_lock(%s)", (HOLD_KEY,))
            env.reset_results()
            sent = {ids[0]: time.perf_counter()}
            env.app.broker.enqueue(Producer.batch_message([ids[0]]))
            deadline = time.monotonic() + 30
            while locker.execute(WAITING_AT_COMMIT, (HOLD_KEY,)).fetchone() != (1,):
                assert time.monotonic() < deadline, "the worker's write never reached its COMMIT"
                time.sleep(0.01)
            time.sleep(hold_s)  # the row is written, its transaction open
            assert env.listener.events() == [] and env.count() == 0  # no sample before the commit
            released = time.perf_counter()
            locker.execute("SELECT pg_advisory_unlock(%s)", (HOLD_KEY,))
            env.wait_rows(1, timeout=30)
        (heard,) = env.listener.events()
        assert heard.at >= released  # taken after the commit, never before
        (sample,) = after_commit_latencies_ms([heard], sent)
        assert sample >= (released - sent[ids[0]]) * 1000 >= hold_s * 1000
        # the old clock (clock_timestamp() inside the INSERT) stopped before the wait for COMMIT
        row = env.conn.execute(
            "SELECT extract(epoch FROM categorized_at - enqueued_at) * 1000 FROM categorizations"
        ).fetchone()
        assert row is not None and float(row[0]) < sample - hold_s * 1000 / 2


def test_completion_is_heard_without_polling_and_cpu_counts_only_the_bench_databases_backends(
    settings: Settings,
) -> None:
    with (
        bench_env(settings) as env,
        psycopg.connect(settings.database_url, autocommit=True) as elsewhere,  # another database
    ):
        ids = env.load(40)
        with env.workers("heard", processes=1) as proc:
            env.reset_results()
            with cpu.window(env.conn, exclude=env.control_pids(), worker_pgid=proc.pid) as used:
                workload = cpu.bench_backends(env.conn, env.control_pids())
                t0 = time.perf_counter()
                Producer(env.app.broker, batch_size=10).enqueue(ids)
                last = env.wait_rows(len(ids), timeout=60)
            assert last > t0 and env.count() == len(ids)
            assert [e.rows for e in env.listener.events()] == [10, 10, 10, 10]  # one NOTIFY per batch write
            # the bench's waits send no query: its own backends were idle all along
            states = env.conn.execute(
                "SELECT pid, query FROM pg_stat_activity WHERE pid = %s",
                (env.listener.backend_pid,),
            ).fetchall()
            assert states and "LISTEN" in states[0][1]
        assert elsewhere.info.backend_pid not in workload  # another database's backend: not ours
        assert not set(env.control_pids()) & workload  # the bench's own connections: not the workload's
        assert workload, "the workers' pool has backends on the bench database"
        assert "workers" in used.seconds and set(used.seconds) <= {
            cpu.WORKERS,
            cpu.POSTGRESQL,
            cpu.REDIS,
            cpu.BENCH,
        }
