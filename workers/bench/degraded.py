"""``catfleet bench degraded``: end-to-end throughput of real workers with the pattern cache
healthy vs down, and proof that the categorizations are the same either way.

The data is the cache bench's (``merchants`` distinct merchants, 70 % with a global pattern,
``expenses`` drawn Zipf). One unmeasured healthy run fills L2 (a private key prefix on
``CATFLEET_CACHE_URL``, deleted afterwards) and gives the reference rows. Then ``reps`` times
both modes, alternating which goes first; every run starts fresh worker processes (an empty L1),
so L1 misses go to L2 (healthy) or, with L2 on an unreachable URL (the breaker opens after
``CATFLEET_BREAKER_FAIL_MAX`` failures), to PostgreSQL (down). Each run's
(expense_id, category_id, band, confidence) rows are compared with the reference.
"""

from __future__ import annotations

import json
import statistics
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

from workers.bench.cache import DOWN_URL, load_bench_data
from workers.bench.env import BenchEnv, batch_log_level, summarize
from workers.bench.memory import clear_l2
from workers.bench.scenarios import _fleet_rate
from workers.config import env_name

#: Target of issue 6: degraded throughput at least this share of healthy.
TARGET_RATIO = 0.5
MODES = ("healthy", "down")
_ROWS = "SELECT expense_id, category_id, band, confidence FROM categorizations"
_MISMATCHES = (
    f"SELECT count(*) FROM (({_ROWS} EXCEPT SELECT * FROM bench_reference)"
    f" UNION ALL (SELECT * FROM bench_reference EXCEPT {_ROWS})) AS d"
)


def _batch_cache_counts(log: str) -> tuple[Counter[str], bool]:
    """The summed ``cache`` counters of the batch log lines, and whether a breaker opened."""
    counts: Counter[str] = Counter()
    for line in log.splitlines():
        if '"event":"batch"' in line:
            counts.update(json.loads(line).get("cache", {}))
    return counts, '"new_state":"open"' in log


def degraded(
    env: BenchEnv,
    *,
    expenses: int,
    merchants: int,
    users: int,
    zipf: float,
    reps: int,
    processes: int,
    say: Callable[[str], None],
    seed: int = 1,
) -> dict[str, Any]:
    say(f"loading {expenses:,} expenses over {merchants:,} merchants (Zipf s={zipf}) ...")
    ids = load_bench_data(env.conn, merchants=merchants, expenses=expenses, users=users, zipf=zipf, seed=seed)
    prefix = f"{env.settings.cache_prefix}-bench-{uuid.uuid4().hex[:8]}"
    url = {"healthy": env.settings.cache_url, "down": DOWN_URL}
    rates: dict[str, list[float]] = {m: [] for m in MODES}
    cache: dict[str, Counter[str]] = {m: Counter() for m in MODES}
    mismatched: dict[str, list[int]] = {m: [] for m in MODES}
    opened: dict[str, list[bool]] = {m: [] for m in MODES}

    def run(mode: str, label: str) -> float:
        extra = {
            env_name("cache_prefix"): prefix,
            env_name("cache_url"): url[mode],
            env_name("log_level"): batch_log_level(env),
        }
        with env.workers(label, processes=processes, **extra):
            rate = _fleet_rate(env, ids, batch_size=env.settings.batch_size)
        counts, breaker_opened = _batch_cache_counts((env.log_dir / f"{label}.log").read_text())
        if label != "degraded-warmup":
            cache[mode].update(counts)
            opened[mode].append(breaker_opened)
        return rate

    try:
        say(f"  warm-up (healthy, fills L2, reference rows): {run('healthy', 'degraded-warmup'):,.0f}/s")
        env.conn.execute(f"CREATE TABLE bench_reference AS {_ROWS}")
        for rep in range(reps):
            for mode in MODES if rep % 2 == 0 else MODES[::-1]:
                rates[mode].append(run(mode, f"degraded-{mode}-{rep + 1}"))
                mismatched[mode].append(env.conn.execute(_MISMATCHES).fetchone()[0])  # type: ignore[index]
                say(
                    f"  rep {rep + 1} {mode}: {rates[mode][-1]:,.0f} expenses/s, {mismatched[mode][-1]} rows differ"
                )
    finally:
        say(f"  removed {clear_l2(env, prefix):,} L2 keys under {prefix}")
    medians = {m: statistics.median(rates[m]) for m in MODES}
    ratio = medians["down"] / medians["healthy"]
    result = {
        "params": {"expenses": len(ids), "merchants": merchants, "users": users, "zipf": zipf, "reps": reps,
                   "processes": processes, "threads": env.settings.worker_threads,
                   "batch_size": env.settings.batch_size, "l1_max_entries": env.settings.l1_max_entries,
                   "down_url": DOWN_URL},
        "per_s": {m: {k: round(v) for k, v in summarize(rates[m]).items()} for m in MODES},
        "runs_per_s": {m: [round(x) for x in rates[m]] for m in MODES},
        "down_over_healthy": round(ratio, 3),
        "target_ratio": TARGET_RATIO,
        "meets_target": ratio >= TARGET_RATIO,
        "cache_lookups": {m: dict(sorted(cache[m].items())) for m in MODES},
        "breaker_opened": {m: opened[m] for m in MODES},
        "rows_differing_from_reference": mismatched,
        "identical": all(n == 0 for m in MODES for n in mismatched[m]),
    }  # fmt: skip
    say(
        f"degraded bench: median healthy {medians['healthy']:,.0f}/s, L2 down"
        f" {medians['down']:,.0f}/s, ratio {ratio:.2f} (target >= {TARGET_RATIO});"
        f" categorizations identical: {result['identical']}"
    )
    return result
