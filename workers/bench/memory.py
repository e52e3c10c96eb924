"""``catfleet bench memory``: worker RSS with a million distinct merchants flowing through and a
million merchant patterns in the cache, against the same workers' RSS idle after boot.

The data: ``patterns`` global merchant patterns and ``expenses`` expenses, each with a merchant
of its own (letters only: the normalizer drops tokens with digits), loaded with COPY (one
statement per table, so the ruleset version is bumped once). L2 (``CATFLEET_CACHE_URL``, a
private key prefix, deleted afterwards) is pre-filled with every global merchant entry through
the resolver, as the workers would back-fill it. Then real ``catfleet worker`` processes boot;
their RSS (VmRSS) is sampled every second: ``idle`` seconds idle (the baseline), then ``reps``
times every expense enqueued and categorized. L1 stays bounded by ``CATFLEET_L1_MAX_ENTRIES``.
"""

from __future__ import annotations

import io
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import msgspec
import psycopg

from pipeline.db import Database
from pipeline.normalize import normalize_merchant
from pipeline.resolver import PatternResolver
from pipeline.rules import canonical_value
from pipeline.stores import PatternStore
from workers.bench import rss
from workers.bench.cache import CATEGORIES
from workers.bench.env import BenchEnv, summarize
from workers.config import env_name
from workers.producer import Producer, chunked
from workers.runtime import shared_tier

#: Target of issue 6: at most this RSS per worker process, flat over time.
TARGET_MB = 150.0
#: "Flat": over the second half of the runs, the least-squares growth of each worker process's
#: RSS and of their sum stays within this share of its mean there (a batch in flight moves a
#: process's RSS by about 10 % up and down; a leak of 1M merchants would be hundreds of MB).
FLAT_GROWTH_SHARE = 0.10
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def merchant(i: int) -> str:
    """The ``i``-th distinct merchant name: ``Q`` and seven letters (base 26)."""
    out = []
    for _ in range(7):
        i, r = divmod(i, 26)
        out.append(_LETTERS[r])
    return "Q" + "".join(reversed(out))


def _copy_text(conn: psycopg.Connection[Any], sql: str, lines: Iterator[str]) -> None:
    with conn.cursor() as cur, cur.copy(sql) as cp:
        buf = io.StringIO()
        for n, line in enumerate(lines, 1):
            buf.write(line)
            if n % 50_000 == 0:
                cp.write(buf.getvalue())
                buf = io.StringIO()
        cp.write(buf.getvalue())


def load_distinct(
    conn: psycopg.Connection[Any], *, expenses: int, patterns: int, users: int
) -> tuple[list[int], list[str]]:
    """Wipe the tables; ``patterns`` global merchant patterns for merchants 0..patterns-1 and
    ``expenses`` expenses for merchants 0..expenses-1 (one each). Returns the expense IDs and
    the patterns' values."""
    conn.execute(
        "TRUNCATE categorizations, corrections, categorization_patterns, expenses, categories RESTART IDENTITY"
    )
    cats = [
        conn.execute("INSERT INTO categories (key, name) VALUES (%s, %s) RETURNING id", (k, k)).fetchone()[0]  # type: ignore[index]
        for k in CATEGORIES
    ]
    for i in range(0, max(expenses, patterns), max(1, max(expenses, patterns) // 97)):
        # the stored value is what the normalizer makes of the expense's string
        name = merchant(i)
        assert (
            canonical_value("merchant", name) == normalize_merchant(f"SQ *{name} #{i % 1000}") == name.lower()
        )
    values = [merchant(i).lower() for i in range(patterns)]
    _copy_text(
        conn,
        "COPY categorization_patterns (user_id, category_id, kind, value, weight) FROM STDIN",
        (f"\\N\t{cats[i % len(cats)]}\tmerchant\t{v}\t0.95\n" for i, v in enumerate(values)),
    )
    _copy_text(
        conn,
        "COPY expenses (user_id, merchant_name, amount, transaction_date) FROM STDIN",
        (f"{1 + i % users}\tSQ *{merchant(i)} #{i % 1000}\t12.50\t2026-03-14\n" for i in range(expenses)),
    )
    conn.execute("ANALYZE expenses")
    conn.execute("ANALYZE categorization_patterns")
    ids = [r[0] for r in conn.execute("SELECT id FROM expenses ORDER BY id").fetchall()]
    return ids, values


def prefill_l2(env: BenchEnv, prefix: str, values: list[str], *, chunk: int = 2_000) -> int:
    """Every global merchant entry into L2, through the resolver (L3 read, L2 back-filled)."""
    settings = msgspec.structs.replace(env.settings, cache_prefix=prefix, cache_timeout_ms=2_000)
    version = env.conn.execute("SELECT version FROM ruleset").fetchone()[0]  # type: ignore[index]
    db = Database.connect(settings.database_url, size=1, wait=True)
    l2 = shared_tier(settings)
    stats: Counter[str] = Counter()
    try:
        resolver = PatternResolver(PatternStore(db), [l2])
        for part in chunked(values, chunk):
            resolver.merchants(version, {(0, v) for v in part}, stats)
            if stats["l2_error"]:
                raise RuntimeError(f"L2 at {settings.cache_url} failed while pre-filling")
    finally:
        l2.close()
        db.close()
    return stats["l3_hit"]


def clear_l2(env: BenchEnv, prefix: str) -> int:
    settings = msgspec.structs.replace(env.settings, cache_prefix=prefix, cache_timeout_ms=5_000)
    l2 = shared_tier(settings)
    try:
        return l2.clear()
    finally:
        l2.close()


def _levels(samples: list[tuple[float, dict[int, float]]], pids: list[int]) -> dict[str, Any]:
    """Start, peak and end RSS (MB) of each process and of their sum over ``samples``."""
    sums = [rss.total(s) for _, s in samples]
    return {
        "sum": {"start": sums[0], "peak": max(sums), "end": sums[-1]},
        "per_process": {
            pid: {"start": samples[0][1][pid], "peak": max(s[pid] for _, s in samples), "end": samples[-1][1][pid]}
            for pid in pids
        },
    }  # fmt: skip


def _r(value: float) -> float:
    return round(value, 1)


def memory(
    env: BenchEnv,
    *,
    expenses: int,
    patterns: int,
    users: int,
    reps: int,
    processes: int,
    idle: float,
    interval: float,
    say: Callable[[str], None],
) -> dict[str, Any]:
    prefix = f"{env.settings.cache_prefix}-bench-{uuid.uuid4().hex[:8]}"
    t = time.perf_counter()
    say(
        f"loading {patterns:,} merchant patterns and {expenses:,} expenses with distinct merchants (COPY) ..."
    )
    ids, values = load_distinct(env.conn, expenses=expenses, patterns=patterns, users=users)
    load_s = time.perf_counter() - t
    try:
        t = time.perf_counter()
        say(f"  loaded in {load_s:.0f} s; pre-filling L2 with {len(values):,} merchant entries ...")
        in_l2 = prefill_l2(env, prefix, values)
        prefill_s = time.perf_counter() - t
        say(f"  {in_l2:,} entries in L2 in {prefill_s:.0f} s; starting {processes} worker process(es)")
        rates: list[float] = []
        windows: list[tuple[float, float]] = []
        with env.workers("memory", processes=processes, **{env_name("cache_prefix"): prefix}) as proc:
            pids = rss.worker_pids(proc.pid, processes)
            with rss.Sampler(pids, interval=interval) as sampler:
                # explicit samples bound the idle window, so it is never empty whatever the
                # sampler thread's timing
                t_idle = time.monotonic()
                sampler.sample()
                time.sleep(idle)
                sampler.sample()
                idle_window = (t_idle, time.monotonic())
                for rep in range(reps):
                    env.reset_results()
                    started, t0 = time.monotonic(), time.perf_counter()
                    Producer(env.app.broker, batch_size=env.settings.batch_size).enqueue(ids)
                    rates.append(len(ids) / (env.wait_rows(len(ids)) - t0))
                    sampler.sample()
                    windows.append((started, time.monotonic()))
                    say(f"  rep {rep + 1}: {rates[-1]:,.0f} expenses/s, RSS now {_now(sampler, pids)}")
            main_mb = (rss.rss_bytes(proc.pid) or 0) / rss.MB
    finally:
        say(f"  removed {clear_l2(env, prefix):,} L2 keys under {prefix}")
    idle_samples = sampler.between(*idle_window)
    idle_mb = {pid: statistics.median(s[pid] for _, s in idle_samples) for pid in pids}
    per_rep = [_levels(sampler.between(*w), pids) for w in windows]
    run = sampler.between(windows[0][0], windows[-1][1])
    half = (run[0][0] + run[-1][0]) / 2
    second = [(t, s) for t, s in run if t >= half]
    minutes = (second[-1][0] - second[0][0]) / 60 if len(second) > 1 else 0.0
    series: dict[Any, list[tuple[float, float]]] = {pid: [(t, s[pid]) for t, s in second] for pid in pids}
    series["sum"] = [(t, rss.total(s)) for t, s in second]
    slopes = {who: rss.slope_mb_per_min(points) for who, points in series.items()}
    growth = {who: slopes[who] * minutes for who in series}
    means = {who: statistics.fmean(v for _, v in points) for who, points in series.items()}

    def across(values: list[float]) -> dict[str, float]:
        return {k: _r(v) if isinstance(v, float) else v for k, v in summarize(values).items()}

    levels = ("start", "peak", "end")
    sums = {k: across([r["sum"][k] for r in per_rep]) for k in levels}
    largest = {k: across([max(p[k] for p in r["per_process"].values()) for r in per_rep]) for k in levels}
    each = {pid: {k: across([r["per_process"][pid][k] for r in per_rep]) for k in levels} for pid in pids}
    peak_per_process = max(p["peak"] for r in per_rep for p in r["per_process"].values())
    flat = all(growth[who] <= FLAT_GROWTH_SHARE * means[who] for who in series)
    result = {
        "params": {"expenses": len(ids), "distinct_merchants": len(ids), "merchant_patterns": len(values),
                   "merchant_entries_in_l2": in_l2, "users": users, "reps": reps, "processes": processes,
                   "threads": env.settings.worker_threads, "batch_size": env.settings.batch_size,
                   "l1_max_entries": env.settings.l1_max_entries, "sample_interval_s": interval,
                   "load_s": _r(load_s), "prefill_l2_s": _r(prefill_s)},
        "worker_pids": pids,
        "per_s": {k: round(v) for k, v in summarize(rates).items()},
        "baseline_idle_mb": {"sum": _r(sum(idle_mb.values())), "per_process": {p: _r(v) for p, v in idle_mb.items()}},
        "run_mb": {"sum": sums, "max_per_process": largest, "per_process": each},
        "second_half": {"minutes": round(minutes, 2), "samples": len(second),
                        "mean_mb": {w: _r(v) for w, v in means.items()},
                        "slope_mb_per_min": {w: round(v, 2) for w, v in slopes.items()},
                        "fitted_growth_mb": {w: round(v, 2) for w, v in growth.items()},
                        "flat_if_growth_within": f"{FLAT_GROWTH_SHARE:.0%} of the mean"},
        "flat": flat,
        "peak_per_process_mb": _r(peak_per_process),
        "peak_over_idle_mb": {p: _r(max(r["per_process"][p]["peak"] for r in per_rep) - idle_mb[p]) for p in pids},
        "dramatiq_main_process_mb": _r(main_mb),
        "target_per_process_mb": TARGET_MB,
        "meets_target": peak_per_process <= TARGET_MB and flat,
    }  # fmt: skip
    say(_text(result))
    return result


def _now(sampler: rss.Sampler, pids: list[int]) -> str:
    last = sampler.samples[-1][1]
    return " + ".join(f"{last[p]:.0f}" for p in pids) + " MB"


def _text(r: dict[str, Any]) -> str:
    p, run = r["params"], r["run_mb"]
    mx = run["max_per_process"]
    return "\n".join(
        [
            f"memory bench: {p['expenses']:,} expenses with distinct merchants, {p['merchant_patterns']:,}"
            f" merchant patterns ({p['merchant_entries_in_l2']:,} in L2), {p['processes']} processes x"
            f" {p['threads']} threads, L1 {p['l1_max_entries']:,} entries, {p['reps']} rep(s)",
            f"  idle after boot (baseline): {r['baseline_idle_mb']['sum']} MB in all,"
            f" per process {r['baseline_idle_mb']['per_process']}",
            f"  during the runs, largest process (median of reps): start {mx['start']['median']} MB,"
            f" peak {mx['peak']['median']} MB, end {mx['end']['median']} MB;"
            f" sum peak {run['sum']['peak']['median']} MB",
            f"  second half: slope {r['second_half']['slope_mb_per_min']} MB/min, flat: {r['flat']}",
            f"  peak per process {r['peak_per_process_mb']} MB (target <= {r['target_per_process_mb']:.0f},"
            f" flat): {'met' if r['meets_target'] else 'NOT met'}; throughput {r['per_s']['median']:,} expenses/s",
        ]
    )
