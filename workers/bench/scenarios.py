"""The benchmark scenarios. Each runs its baseline in the same run; figures are medians of
``reps`` repetitions with min and max."""

from __future__ import annotations

import cProfile
import io
import json
import pstats
import threading
import time
from collections.abc import Callable
from typing import Any

import dramatiq

from pipeline.db import Database
from pipeline.matcher import Decision
from pipeline.stores import CategorizationStore, WriteMeta
from workers.bench import cpu
from workers.bench.env import BenchEnv, percentile, summarize
from workers.bench.naive import NAIVE_ACTOR, NAIVE_QUEUE
from workers.config import env_name
from workers.producer import Producer, chunked
from workers.runtime import Runtime

Say = Callable[[str], None]


def _fleet_rate(env: BenchEnv, ids: list[int], *, batch_size: int) -> float:
    env.reset_results()
    t0 = time.time()
    Producer(env.app.broker, batch_size=batch_size).enqueue(ids)
    env.wait_rows(len(ids))
    return len(ids) / (env.last_commit_epoch() - t0)


def _naive_rate(env: BenchEnv, ids: list[int]) -> float:
    env.reset_results()
    producer = Producer(env.app.broker, batch_size=1)
    messages: list[dramatiq.Message[Any]] = [
        dramatiq.Message(queue_name=NAIVE_QUEUE, actor_name=NAIVE_ACTOR, args=(i,), kwargs={}, options={})
        for i in ids
    ]
    t0 = time.time()
    producer.send(messages)
    env.wait_rows(len(ids))
    return len(ids) / (env.last_commit_epoch() - t0)


def _floor_rate(env: BenchEnv, ids: list[int], *, batch_size: int, concurrency: int) -> float:
    """Bare PostgreSQL: read each chunk by id = ANY, upsert as many rows set-based; no queue, no matching."""
    env.reset_results()
    db = Database.connect(env.settings.database_url, size=concurrency, wait=True)
    writer = CategorizationStore(db)
    chunks = list(chunked(ids, batch_size))
    decision = Decision(None, None, 0.0, "none", "none", {})
    meta = WriteMeta(ruleset_version=1)

    def work(mine: list[list[int]]) -> None:
        for chunk in mine:
            with db.connection() as conn:
                rows = conn.execute(
                    "SELECT id, user_id, merchant_name, description, amount::float8, currency,"
                    " transaction_date, transaction_time FROM expenses WHERE id = ANY(%s)",
                    (chunk,),
                ).fetchall()
            writer.upsert([(r[0], decision) for r in rows], meta)

    threads = [threading.Thread(target=work, args=(chunks[i::concurrency],)) for i in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    db.close()
    return len(ids) / elapsed


def throughput(
    env: BenchEnv, *, expenses: int, naive: int, reps: int, processes: int, say: Say
) -> dict[str, Any]:
    say(f"loading {expenses:,} expenses ...")
    ids = env.load(expenses)
    naive_ids = ids[: min(naive, len(ids))]
    batch = env.settings.batch_size
    fleet, slow, floor = [], [], []
    with env.workers("fleet", processes=processes) as proc:
        _fleet_rate(env, ids[: min(len(ids), 20 * batch)], batch_size=batch)  # warm-up
        before = cpu.snapshot(proc.pid)
        for rep in range(reps):
            fleet.append(_fleet_rate(env, ids, batch_size=batch))
            say(f"  fleet rep {rep + 1}: {fleet[-1]:,.0f} expenses/s")
        cpu_share = cpu.delta(before, cpu.snapshot(proc.pid))
    with env.workers("naive", processes=processes, boot="workers.bench.naive:broker"):
        for rep in range(reps):
            slow.append(_naive_rate(env, naive_ids))
            say(f"  naive rep {rep + 1}: {slow[-1]:,.0f} expenses/s ({len(naive_ids):,} expenses)")
    for rep in range(reps):
        floor.append(_floor_rate(env, ids, batch_size=batch, concurrency=processes))
        say(f"  floor rep {rep + 1}: {floor[-1]:,.0f} rows/s")
    f, n, fl = summarize(fleet), summarize(slow), summarize(floor)
    return {
        "expenses": len(ids),
        "naive_expenses": len(naive_ids),
        "processes": processes,
        "threads": env.settings.worker_threads,
        "batch_size": batch,
        "fleet_per_s": f,
        "naive_per_s": n,
        "floor_per_s": fl,
        "fleet_vs_naive": round(f["median"] / n["median"], 1),
        "fleet_vs_floor": round(f["median"] / fl["median"], 3),
        "cpu_seconds_during_fleet_reps": cpu_share,
    }


def batch_size(
    env: BenchEnv, *, expenses: int, sizes: list[int], reps: int, processes: int, say: Say
) -> dict[str, Any]:
    say(f"loading {expenses:,} expenses ...")
    ids = env.load(expenses)
    out: dict[str, Any] = {"expenses": len(ids), "processes": processes, "sizes": {}}
    for size in sizes:
        name = f"batch-{size}"
        with env.workers(name, processes=processes, **{env_name("log_level"): "INFO"}):
            _fleet_rate(env, ids[: min(len(ids), 10 * size)], batch_size=size)  # warm-up
            rates = []
            for _ in range(reps):
                rates.append(_fleet_rate(env, ids, batch_size=size))
        durations = sorted(
            float(doc["duration_ms"])
            for line in (env.log_dir / f"{name}.log").read_text().splitlines()
            if '"event":"batch"' in line
            for doc in [json.loads(line)]
            if doc.get("size") == size
        )
        out["sizes"][size] = {
            "per_s": summarize(rates),
            "batch_ms_p50": round(percentile(durations, 0.5), 1),
            "batch_ms_p95": round(percentile(durations, 0.95), 1),
        }
        say(
            f"  batch {size}: {out['sizes'][size]['per_s']['median']:,.0f}/s, p95 {out['sizes'][size]['batch_ms_p95']} ms"
        )
    return out


def _steady(env: BenchEnv, ids: list[int], rate: float) -> dict[str, float]:
    env.reset_results()
    broker = env.app.broker
    start = time.perf_counter()
    for i, expense_id in enumerate(ids):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        broker.enqueue(Producer.batch_message([expense_id]))
    env.wait_rows(len(ids))
    lat = env.latencies_ms()
    return {
        "messages": len(ids),
        "p50_ms": round(percentile(lat, 0.5), 2),
        "p95_ms": round(percentile(lat, 0.95), 2),
        "p99_ms": round(percentile(lat, 0.99), 2),
    }


def latency(
    env: BenchEnv,
    *,
    rates: list[float],
    seconds: float,
    polls: list[int],
    wakeups: list[bool],
    processes: int,
    say: Say,
) -> dict[str, Any]:
    """Each (idle poll, wake-up) configuration in turn, on fresh workers, at each rate."""
    needed = int(max(rates) * seconds)
    ids = env.load(needed)
    out: dict[str, Any] = {"seconds": seconds, "processes": processes, "configs": {}}
    for poll in polls:
        for wakeup in wakeups:
            label = f"idle_poll_{poll}ms_wakeup_{'on' if wakeup else 'off'}"
            out["configs"][label] = {}
            overrides = {env_name("worker_idle_poll_ms"): str(poll), env_name("worker_wakeup"): str(wakeup)}
            with env.workers(label, processes=processes, **overrides):
                time.sleep(1.5)  # let the consumers reach their idle back-off, as in production
                for rate in rates:
                    got = _steady(env, ids[: int(rate * seconds)], rate)
                    out["configs"][label][f"{rate:g}/s"] = got
                    say(
                        f"  {label} at {rate:g}/s: p50 {got['p50_ms']} p95 {got['p95_ms']}"
                        f" p99 {got['p99_ms']} ms"
                    )
    return out


def scaling(
    env: BenchEnv, *, expenses: int, shapes: list[tuple[int, int]], reps: int, say: Say
) -> dict[str, Any]:
    ids = env.load(expenses)
    out: dict[str, Any] = {"expenses": len(ids), "shapes": {}}
    for processes, threads in shapes:
        label = f"{processes}p x {threads}t"
        with env.workers(label.replace(" ", ""), processes=processes, threads=threads) as proc:
            _fleet_rate(
                env, ids[: min(len(ids), 10 * env.settings.batch_size)], batch_size=env.settings.batch_size
            )
            before = cpu.snapshot(proc.pid)
            rates = [_fleet_rate(env, ids, batch_size=env.settings.batch_size) for _ in range(reps)]
            share = cpu.delta(before, cpu.snapshot(proc.pid))
        s = summarize(rates)
        out["shapes"][label] = {
            "per_s": s,
            "per_process_per_s": round(s["median"] / processes),
            "cpu_seconds": share,
        }
        say(f"  {label}: {s['median']:,.0f}/s ({s['median'] / processes:,.0f}/s per process), cpu {share}")
    return out


def profile(env: BenchEnv, *, expenses: int, say: Say) -> dict[str, Any]:
    """The worker's hot path in-process under cProfile: where a batch spends its time."""
    ids = env.load(expenses)
    runtime = Runtime(env.settings, wait=True)
    batch = env.settings.batch_size
    runtime.categorizer.categorize(ids[:batch])  # warm the caches
    env.reset_results()
    t0 = time.perf_counter()
    for chunk in chunked(ids, batch):
        runtime.categorizer.categorize(chunk)
    elapsed = time.perf_counter() - t0  # timed without the profiler
    env.reset_results()
    profiler = cProfile.Profile()
    profiler.enable()
    for chunk in chunked(ids, batch):
        runtime.categorizer.categorize(chunk)
    profiler.disable()
    runtime.close()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(25)
    say(text.getvalue())
    return {
        "expenses": len(ids),
        "single_thread_per_s": round(len(ids) / elapsed),
        "profile_top": text.getvalue(),
    }
