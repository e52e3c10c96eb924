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
from collections.abc import Callable, Collection, Mapping
from typing import Any

import msgspec
import psycopg

from pipeline.cache import LocalTier, PatternTier, SharedTier
from pipeline.cache.base import Entry
from pipeline.categorize import Categorizer
from pipeline.db import Database
from pipeline.errors import CacheUnavailable
from pipeline.matcher import MerchantKey, Thresholds
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


class Sightings:
    """Every key lookup of the simulated fleet, classified as it happens: whether the asking
    process, or any process, had asked for that key before (a first sighting no cache can
    answer), and which tier answered. Counts only while ``counting`` (after the warm-up)."""

    def __init__(self) -> None:
        self.counting = False
        self.counts: Counter[str] = Counter()
        self._fleet: set[tuple[int, MerchantKey]] = set()
        self._mine: list[set[tuple[int, MerchantKey]]] = []
        self._pending: dict[MerchantKey, str] = {}  # L1 misses, by why L1 missed

    def process(self) -> int:
        self._mine.append(set())
        return len(self._mine) - 1

    def l1(
        self, worker: int, version: int, keys: Collection[MerchantKey], found: Collection[MerchantKey]
    ) -> None:
        mine = self._mine[worker]
        self._pending = {}
        for key in keys:
            k = (version, key)
            fleet_first, first_here = k not in self._fleet, k not in mine
            self._fleet.add(k)
            mine.add(k)
            if key in found:
                why = "l1_hit"
            elif fleet_first:
                why = "first_sighting"
            elif first_here:
                why = "first_in_this_process"
            else:
                why = "seen_in_this_process"  # L1 lost it: evicted (size) or expired (TTL)
            if key not in found:
                self._pending[key] = why
            if self.counting:
                self.counts["lookups"] += 1
                self.counts["fleet_first"] += fleet_first
                self.counts["process_first"] += first_here
                self.counts[f"l1_{'hit' if key in found else 'miss_' + why}"] += 1

    def l2(self, keys: Collection[MerchantKey], found: Collection[MerchantKey] | None) -> None:
        if not self.counting:
            return
        for key in keys:
            why = self._pending.get(key, "unknown")
            if found is None:
                self.counts[f"l2_error_{why}"] += 1
            else:
                self.counts[f"l2_{'hit' if key in found else 'miss'}_{why}"] += 1


class RecordingL1(LocalTier):
    """A worker process's L1, reporting each lookup to ``sightings``."""

    def __init__(self, sightings: Sightings, *, max_entries: int, ttl_seconds: float):
        super().__init__(max_entries=max_entries, ttl_seconds=ttl_seconds)
        self.sightings = sightings
        self.worker = sightings.process()

    def get_merchants(self, version: int, keys: Collection[MerchantKey]) -> dict[MerchantKey, Entry]:
        found = super().get_merchants(version, keys)
        self.sightings.l1(self.worker, version, keys, found)
        return found


class RecordingL2(PatternTier):
    """The shared L2, reporting each lookup to ``sightings`` (everything else passed through)."""

    name = "l2"

    def __init__(self, inner: PatternTier, sightings: Sightings):
        self.inner = inner
        self.sightings = sightings

    def get_merchants(self, version: int, keys: Collection[MerchantKey]) -> dict[MerchantKey, Entry]:
        try:
            found = self.inner.get_merchants(version, keys)
        except CacheUnavailable:
            self.sightings.l2(keys, None)
            raise
        self.sightings.l2(keys, found)
        return found

    def put_merchants(self, version: int, entries: Mapping[MerchantKey, Entry]) -> None:
        self.inner.put_merchants(version, entries)

    def get_rules(self, version: int) -> Entry | None:
        return self.inner.get_rules(version)

    def put_rules(self, version: int, patterns: Entry) -> None:
        self.inner.put_rules(version, patterns)


def _share(part: float, whole: float) -> float:
    return round(part / whole, 4) if whole else 0.0


def ceilings(counts: Counter[str]) -> dict[str, Any]:
    """Each tier's hit rate beside the ceiling that first sightings leave it, and the fraction of
    the ceiling reached. L1: a process's first sighting of a key is a miss no L1 of its own can
    avoid (1 - process first sightings / lookups). L1 + L2: only a first sighting in the whole
    fleet is (1 - distinct keys first seen / lookups). L2, of the L1 misses: all but the fleet's
    first sightings."""
    lookups = counts["lookups"]
    l1_hit = counts["l1_hit"]
    l1_miss = lookups - l1_hit
    l2_hit = sum(v for k, v in counts.items() if k.startswith("l2_hit_"))
    tiers = {
        "l1": (l1_hit, lookups, 1 - counts["process_first"] / lookups if lookups else 0.0),
        "l2_of_l1_misses": (l2_hit, l1_miss, 1 - counts["fleet_first"] / l1_miss if l1_miss else 0.0),
        "cache": (l1_hit + l2_hit, lookups, 1 - counts["fleet_first"] / lookups if lookups else 0.0),
    }
    out: dict[str, Any] = {}
    for name, (hits, of, ceiling) in tiers.items():
        rate = hits / of if of else 0.0
        out[name] = {
            "hit_rate": round(rate, 4),
            "ceiling": round(ceiling, 4),
            "of_ceiling": round(rate / ceiling, 4) if ceiling else 0.0,
        }
    missed = {k.removeprefix("l2_miss_"): v for k, v in counts.items() if k.startswith("l2_miss_")}
    missed.update(
        {f"l2_error:{k.removeprefix('l2_error_')}": v for k, v in counts.items() if k.startswith("l2_error_")}
    )
    out["cache_misses_by_cause"] = {k: _share(v, lookups) for k, v in sorted(missed.items())}
    out["l1_misses_by_cause"] = {
        k.removeprefix("l1_miss_"): _share(v, lookups)
        for k, v in sorted(counts.items())
        if k.startswith("l1_miss_")
    }
    return out


def hit_rates(
    db: Database,
    l2: SharedTier,
    ids: list[int],
    *,
    l1_entries: int,
    batch: int,
    warmup: float,
    workers: int,
) -> dict[str, Any]:
    """``workers`` worker processes (own L1, shared L2) take turns batch by batch; the lookups
    after the ``warmup`` share of the stream are counted, each classified by its first sighting."""
    sightings = Sightings()
    shared = RecordingL2(l2, sightings)
    fleet = [
        _categorizer(db, [RecordingL1(sightings, max_entries=l1_entries, ttl_seconds=3600), shared])
        for _ in range(workers)
    ]
    chunks = _batches(ids, batch)
    cut = int(len(chunks) * warmup)
    counts: Counter[str] = Counter()
    for n, chunk in enumerate(chunks):
        sightings.counting = n >= cut
        report = fleet[n % workers].categorize(chunk)
        if sightings.counting:
            counts.update(report.cache)
    got = sightings.counts
    lookups = got["lookups"]
    if lookups != counts["l1_hit"] + counts["l1_miss"] + counts["l1_error"]:
        raise RuntimeError("the recorded lookups disagree with the Categorizer's cache counters")
    l3 = counts["l3_hit"] + counts["l3_miss"]
    return {
        "workers": workers,
        "lookups": lookups,
        "distinct_keys_first_seen": got["fleet_first"],
        "l1": _share(counts["l1_hit"], lookups),
        "l2": _share(counts["l2_hit"], lookups),
        "l3": _share(l3, lookups),
        "cache": _share(counts["l1_hit"] + counts["l2_hit"], lookups),
        "l2_of_l1_misses": _share(counts["l2_hit"], counts["l1_miss"]),
        "against_ceiling": ceilings(got),
    }


def _timed_run(
    conn: psycopg.Connection[Any], db: Database, l2: SharedTier, ids: list[int], batch: int, l1_entries: int
) -> float:
    conn.execute("TRUNCATE categorizations")
    categorizer = _categorizer(db, [LocalTier(max_entries=l1_entries, ttl_seconds=3600), l2])
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
    workers: int,
    warmup: float,
    timed: int,
    say: Callable[[str], None],
    seed: int = 1,
) -> dict[str, Any]:
    settings, conn = env.settings, env.conn
    say(f"loading {expenses:,} expenses over {merchants:,} merchants (Zipf s={zipf}) ...")
    ids = load_bench_data(conn, merchants=merchants, expenses=expenses, users=users, zipf=zipf, seed=seed)
    l1 = settings.l1_max_entries
    bench = msgspec.structs.replace(
        settings, cache_prefix=f"{settings.cache_prefix}-bench-{uuid.uuid4().hex[:8]}"
    )
    db = Database.connect(settings.database_url, size=2, wait=True)
    healthy = shared_tier(bench)
    down = shared_tier(msgspec.structs.replace(bench, cache_url=DOWN_URL))
    try:
        say(f"  hit rates: {workers} simulated worker processes, {warmup:.0%} of the stream as warm-up ...")
        rates = hit_rates(db, healthy, ids, l1_entries=l1, batch=batch, warmup=warmup, workers=workers)
        tail = ids[-min(timed, len(ids)) :]
        _timed_run(conn, db, down, tail[: batch * 6], batch, l1)  # trips the breaker: open from here on
        speeds: dict[str, list[float]] = {"healthy": [], "down": []}
        for _ in range(reps):
            speeds["healthy"].append(_timed_run(conn, db, healthy, tail, batch, l1))
            speeds["down"].append(_timed_run(conn, db, down, tail, batch, l1))
        assert down.breaker.state == "open", "the L2-down runs must have the breaker open"
    finally:
        healthy.clear()
        healthy.close()
        down.close()
        db.close()
    medians = {k: statistics.median(v) for k, v in speeds.items()}
    result = {
        "params": {"merchants": merchants, "expenses": expenses, "users": users, "zipf": zipf, "batch": batch,
                   "reps": reps, "l1_max_entries": l1, "workers": workers, "warmup": warmup,
                   "timed_expenses": len(tail)},
        "hit_rate_after_warmup": rates,
        "throughput_per_s": {k: [round(x) for x in v] for k, v in speeds.items()},
        "median_per_s": {k: round(v) for k, v in medians.items()},
        "down_over_healthy": round(medians["down"] / medians["healthy"], 3),
    }  # fmt: skip
    say(_text(result))
    return result


def _text(r: dict[str, Any]) -> str:
    p, h, m = r["params"], r["hit_rate_after_warmup"], r["median_per_s"]
    c = h["against_ceiling"]

    def tier(name: str, label: str) -> str:
        t = c[name]
        return f"  {label}: {t['hit_rate']:.1%} of a ceiling of {t['ceiling']:.1%} -> {t['of_ceiling']:.1%} of it"

    return "\n".join(
        [
            f"pattern cache bench: {p['expenses']:,} expenses, {p['merchants']:,} merchants (Zipf s={p['zipf']}),"
            f" {p['users']} users, batches of {p['batch']}, L1 {p['l1_max_entries']:,} entries",
            f"hit rate after warm-up ({h['lookups']:,} key lookups, {h['distinct_keys_first_seen']:,} first"
            f" sightings, {p['workers']} worker processes sharing L2):",
            f"  L1 {h['l1']:.1%}  L2 {h['l2']:.1%}  L3 {h['l3']:.1%}  -> cache (L1+L2) {h['cache']:.1%};"
            f" L2 served {h['l2_of_l1_misses']:.1%} of L1 misses",
            "against the ceiling set by first sightings:",
            tier("l1", "L1"),
            tier("l2_of_l1_misses", "L2 (of L1 misses)"),
            tier("cache", "cache (L1+L2)"),
            f"  cache misses by cause (share of lookups): {c['cache_misses_by_cause']}",
            f"  L1 misses by cause (share of lookups): {c['l1_misses_by_cause']}",
            f"throughput, cold L1 each rep, {p['timed_expenses']:,} expenses, median of {p['reps']}: L2 healthy"
            f" {m['healthy']}/s, L2 down (breaker open) {m['down']}/s, ratio down/healthy {r['down_over_healthy']:.2f}",
        ]
    )
