"""``catfleet bench cache``: the pattern cache measured on its own database.

1. Hit rate per tier on a Zipf-distributed merchant stream, after warm-up, with two simulated
   worker processes (each its own L1) sharing L2, as in the fleet.
2. Categorizer throughput with L2 healthy vs L2 down (breaker open), side by side, reps
   alternating, medians; every rep starts with an empty L1 (a fresh worker process), so the
   misses go to L2 or, with L2 down, to PostgreSQL.

Runs in the benchmark's throwaway database, with a private key prefix on ``CATFLEET_CACHE_URL``
(removed afterwards).
"""

from __future__ import annotations

import itertools
import random
import statistics
import string
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import msgspec
import psycopg

from pipeline.cache import LocalTier, PatternTier, SharedTier
from pipeline.categorize import Categorizer
from pipeline.db import Database
from pipeline.matcher import Thresholds
from pipeline.resolver import PatternResolver
from pipeline.rules import canonical_value
from pipeline.stores import CategorizationStore, ExpenseStore, PatternStore
from workers.bench.env import BenchEnv
from workers.runtime import shared_tier

CATEGORIES = ["coffee", "groceries", "rideshare", "dining", "fuel", "travel", "software", "utilities"]
#: Where "L2 down" points: nothing listens on port 1, so connections are refused at once.
DOWN_URL = "redis://127.0.0.1:1/0"


def _word(rng: random.Random) -> str:
    return "".join(rng.choices(string.ascii_uppercase, k=rng.randint(4, 9)))


def load_bench_data(
    conn: psycopg.Connection[Any], *, merchants: int, expenses: int, users: int, zipf: float, seed: int
) -> list[int]:
    """Wipe the tables; ``merchants`` distinct names (70 % with a global merchant pattern, a few
    user patterns) and ``expenses`` whose merchants follow Zipf(``zipf``). Returns the IDs."""
    rng = random.Random(seed)
    conn.execute(
        "TRUNCATE categorizations, corrections, categorization_patterns, expenses, categories RESTART IDENTITY"
    )
    cats = [
        conn.execute("INSERT INTO categories (key, name) VALUES (%s, %s) RETURNING id", (k, k)).fetchone()[0]  # type: ignore[index]
        for k in CATEGORIES
    ]
    names = list(dict.fromkeys(f"{_word(rng)} {_word(rng)}" for _ in range(merchants * 2)))[:merchants]
    with conn.cursor() as cur:
        with cur.copy(
            "COPY categorization_patterns (user_id, category_id, kind, value, weight) FROM STDIN"
        ) as cp:
            for i, name in enumerate(names):
                if i % 10 < 7:
                    cp.write_row(
                        (None, rng.choice(cats), "merchant", canonical_value("merchant", name), 0.95)
                    )
                if i % 50 == 0:
                    user = rng.randint(1, users)
                    cp.write_row(
                        (user, rng.choice(cats), "merchant", canonical_value("merchant", name), 0.97)
                    )
            for word in ("coffee", "pizza", "fuel", "hotel"):
                cp.write_row((None, rng.choice(cats), "keyword", word, 0.8))
        weights = list(itertools.accumulate(1 / (k**zipf) for k in range(1, len(names) + 1)))
        drawn = rng.choices(names, cum_weights=weights, k=expenses)
        with cur.copy("COPY expenses (user_id, merchant_name, amount, transaction_date) FROM STDIN") as cp:
            for name in drawn:
                cp.write_row(
                    (rng.randint(1, users), f"SQ *{name} #{rng.randint(1, 999)}", 12.5, "2026-03-14")
                )
    return [r[0] for r in conn.execute("SELECT id FROM expenses ORDER BY id").fetchall()]


def _categorizer(db: Database, tiers: list[PatternTier]) -> Categorizer:
    return Categorizer(
        expenses=ExpenseStore(db),
        resolver=PatternResolver(PatternStore(db), tiers),
        writer=CategorizationStore(db),
        thresholds=Thresholds(auto=0.85, suggest=0.70),
    )


def _batches(ids: list[int], size: int) -> list[list[int]]:
    return [ids[i : i + size] for i in range(0, len(ids), size)]


def hit_rates(
    db: Database, l2: SharedTier, ids: list[int], *, l1_entries: int, batch: int, warmup: float
) -> dict[str, Any]:
    """Two worker processes (own L1, shared L2) take turns; counts after the warm-up part."""
    workers = [_categorizer(db, [LocalTier(max_entries=l1_entries, ttl_seconds=3600), l2]) for _ in range(2)]
    chunks = _batches(ids, batch)
    cut = int(len(chunks) * warmup)
    counts: Counter[str] = Counter()
    for n, chunk in enumerate(chunks):
        report = workers[n % 2].categorize(chunk)
        if n >= cut:
            counts.update(report.cache)
    lookups = counts["l1_hit"] + counts["l1_miss"] + counts["l1_error"]
    l3 = counts["l3_hit"] + counts["l3_miss"]
    return {
        "lookups": lookups,
        "l1": counts["l1_hit"] / lookups,
        "l2": counts["l2_hit"] / lookups,
        "l3": l3 / lookups,
        "cache": (counts["l1_hit"] + counts["l2_hit"]) / lookups,
        "l2_of_l1_misses": counts["l2_hit"] / max(1, counts["l1_miss"]),
    }


def _timed_run(
    conn: psycopg.Connection[Any], db: Database, l2: SharedTier, ids: list[int], batch: int
) -> float:
    conn.execute("TRUNCATE categorizations")
    categorizer = _categorizer(db, [LocalTier(max_entries=50_000, ttl_seconds=3600), l2])
    started = time.perf_counter()
    for chunk in _batches(ids, batch):
        categorizer.categorize(chunk)
    return len(ids) / (time.perf_counter() - started)


def cache(
    env: BenchEnv,
    *,
    merchants: int,
    expenses: int,
    users: int,
    zipf: float,
    reps: int,
    batch: int,
    say: Callable[[str], None],
    seed: int = 1,
) -> dict[str, Any]:
    settings, conn = env.settings, env.conn
    ids = load_bench_data(conn, merchants=merchants, expenses=expenses, users=users, zipf=zipf, seed=seed)
    bench = msgspec.structs.replace(
        settings, cache_prefix=f"{settings.cache_prefix}-bench-{uuid.uuid4().hex[:8]}"
    )
    db = Database.connect(settings.database_url, size=2, wait=True)
    healthy = shared_tier(bench)
    down = shared_tier(msgspec.structs.replace(bench, cache_url=DOWN_URL))
    try:
        rates = hit_rates(db, healthy, ids, l1_entries=settings.l1_max_entries, batch=batch, warmup=0.5)
        tail = ids[len(ids) // 2 :]
        _timed_run(conn, db, down, tail[: batch * 6], batch)  # trips the breaker: open from here on
        speeds: dict[str, list[float]] = {"healthy": [], "down": []}
        for _ in range(reps):
            speeds["healthy"].append(_timed_run(conn, db, healthy, tail, batch))
            speeds["down"].append(_timed_run(conn, db, down, tail, batch))
        assert down.breaker.state == "open", "the L2-down runs must have the breaker open"
    finally:
        healthy.clear()
        healthy.close()
        down.close()
        db.close()
    medians = {k: statistics.median(v) for k, v in speeds.items()}
    result = {
        "params": {"merchants": merchants, "expenses": expenses, "users": users, "zipf": zipf, "batch": batch,
                   "reps": reps, "l1_max_entries": settings.l1_max_entries},
        "hit_rate_after_warmup": {k: round(v, 4) if isinstance(v, float) else v for k, v in rates.items()},
        "throughput_per_s": {k: [round(x) for x in v] for k, v in speeds.items()},
        "median_per_s": {k: round(v) for k, v in medians.items()},
        "down_over_healthy": round(medians["down"] / medians["healthy"], 3),
    }  # fmt: skip
    say(_text(result))
    return result


def _text(r: dict[str, Any]) -> str:
    p, h, m = r["params"], r["hit_rate_after_warmup"], r["median_per_s"]
    return "\n".join(
        [
            f"pattern cache bench: {p['expenses']} expenses, {p['merchants']} merchants (Zipf s={p['zipf']}),"
            f" {p['users']} users, batches of {p['batch']}, L1 {p['l1_max_entries']} entries",
            f"hit rate after warm-up ({h['lookups']} key lookups, 2 worker processes sharing L2):",
            f"  L1 {h['l1']:.1%}  L2 {h['l2']:.1%}  L3 {h['l3']:.1%}  -> cache (L1+L2) {h['cache']:.1%};"
            f" L2 served {h['l2_of_l1_misses']:.1%} of L1 misses",
            f"throughput, cold L1 each rep, median of {p['reps']}: L2 healthy {m['healthy']}/s,"
            f" L2 down (breaker open) {m['down']}/s, ratio down/healthy {r['down_over_healthy']:.2f}",
        ]
    )
