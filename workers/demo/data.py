"""Generated demo data: categories, seed patterns and messy card-transaction strings.

Deterministic for a given seed. Merchant strings look like what card networks send:
``PAYPAL *STARBUCKS 402935``, ``UBER *TRIP HELP.UBER.COM``, ``TST* WALMART STORE #4567``.
"""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

import psycopg

from pipeline.rules import canonical_value

CATEGORIES: list[tuple[str, str, str | None]] = [
    ("food", "Food & Drink", None),
    ("food:groceries", "Groceries", "food"),
    ("food:dining", "Dining out", "food"),
    ("food:coffee", "Coffee shops", "food"),
    ("transport", "Transport", None),
    ("transport:rideshare", "Rideshare & taxi", "transport"),
    ("transport:fuel", "Fuel", "transport"),
    ("transport:parking", "Parking", "transport"),
    ("shopping", "Shopping", None),
    ("shopping:online", "Online shopping", "shopping"),
    ("shopping:home", "Home improvement", "shopping"),
    ("bills", "Bills", None),
    ("bills:streaming", "Streaming", "bills"),
    ("bills:telecom", "Phone & internet", "bills"),
    ("bills:software", "Software subscriptions", "bills"),
    ("travel", "Travel", None),
    ("travel:air", "Flights", "travel"),
    ("travel:hotel", "Hotels", "travel"),
    ("health", "Health", None),
    ("health:pharmacy", "Pharmacy", "health"),
    ("health:fitness", "Fitness", "health"),
]

# brand as printed, category, relative popularity (Zipf-like)
BRANDS: list[tuple[str, str, int]] = [
    ("STARBUCKS", "food:coffee", 90), ("WALMART", "food:groceries", 80), ("AMAZON", "shopping:online", 85),
    ("UBER *TRIP", "transport:rideshare", 60), ("UBER EATS", "food:dining", 40), ("LYFT", "transport:rideshare", 30),
    ("SHELL OIL", "transport:fuel", 45), ("CHEVRON", "transport:fuel", 35), ("EXXONMOBIL", "transport:fuel", 25),
    ("WHOLE FOODS MARKET", "food:groceries", 40), ("TRADER JOE'S", "food:groceries", 35), ("KROGER", "food:groceries", 35),
    ("COSTCO WHSE", "food:groceries", 30), ("MCDONALD'S", "food:dining", 50), ("CHIPOTLE", "food:dining", 35),
    ("DUNKIN", "food:coffee", 30), ("BLUE BOTTLE COFFEE", "food:coffee", 10), ("NETFLIX.COM", "bills:streaming", 30),
    ("SPOTIFY", "bills:streaming", 30), ("HULU", "bills:streaming", 10), ("VERIZON WIRELESS", "bills:telecom", 20),
    ("COMCAST CABLE", "bills:telecom", 15), ("GITHUB", "bills:software", 8), ("ADOBE CREATIVE CLOUD", "bills:software", 8),
    ("DELTA AIR LINES", "travel:air", 10), ("UNITED AIRLINES", "travel:air", 10), ("MARRIOTT", "travel:hotel", 10),
    ("HILTON HOTELS", "travel:hotel", 8), ("CVS PHARMACY", "health:pharmacy", 30), ("WALGREENS", "health:pharmacy", 25),
    ("PLANET FITNESS", "health:fitness", 10), ("THE HOME DEPOT", "shopping:home", 25), ("LOWE'S", "shopping:home", 15),
    ("TARGET", "shopping:online", 30), ("SQ *SWEETGREEN", "food:dining", 15), ("DOORDASH", "food:dining", 25),
]  # fmt: skip
# Keyword rules catch merchants nobody has a pattern for: "JOE'S PIZZA NYC" -> dining.
KEYWORDS: list[tuple[str, str, float]] = [
    ("pizza", "food:dining", 0.8), ("coffee", "food:coffee", 0.8), ("cafe", "food:coffee", 0.72),
    ("grill", "food:dining", 0.75), ("taxi", "transport:rideshare", 0.85), ("parking", "transport:parking", 0.9),
    ("fuel", "transport:fuel", 0.85), ("pharmacy", "health:pharmacy", 0.85), ("hotel", "travel:hotel", 0.8),
    ("airlines", "travel:air", 0.8), ("market", "food:groceries", 0.6), ("gym", "health:fitness", 0.85),
]  # fmt: skip
# Small merchants: some match a keyword, some match nothing at all.
LOCAL_WORDS = [
    "JOE'S",
    "MARIO'S",
    "GOLDEN",
    "CITY",
    "CORNER",
    "SUNRISE",
    "HARBOR",
    "OAK",
    "RED",
    "BLUE",
    "LUCKY",
]
LOCAL_KINDS = ["PIZZA", "COFFEE", "CAFE", "GRILL", "TAXI", "PARKING", "FUEL", "PHARMACY", "HOTEL", "GYM",
               "TAILOR", "BOUTIQUE", "HARDWARE", "FLORIST", "BARBER", "BAKERY"]  # fmt: skip
PREFIXES = ["", "", "", "PAYPAL *", "SQ *", "TST* ", "SP * ", "POS PURCHASE "]
CITIES = ["SEATTLE WA", "NEW YORK NY", "AUSTIN TX", "CHICAGO IL", "DENVER CO", "BOSTON MA", ""]
URLS = {
    "UBER *TRIP": "HELP.UBER.COM",
    "AMAZON": "AMZN.COM/BILL",
    "NETFLIX.COM": "866-579-7172",
    "LYFT": "LYFT.COM",
}


def messy(rng: random.Random, brand: str) -> str:
    """One card-network rendering of a brand."""
    parts = [rng.choice(PREFIXES) + brand]
    roll = rng.random()
    if brand in URLS and roll < 0.6:
        parts.append(URLS[brand])
    elif roll < 0.35:
        parts.append(f"#{rng.randint(100, 9999)}")
    elif roll < 0.55:
        parts.append(str(rng.randint(100000, 999999)))
    elif roll < 0.75:
        parts.append(f"STORE #{rng.randint(10, 9999)}")
    if rng.random() < 0.4:
        parts.append(rng.choice(CITIES))
    text = " ".join(p for p in parts if p)
    return text.lower() if rng.random() < 0.1 else text


def generate_expenses(n: int, *, users: int, seed: int = 7) -> list[tuple[Any, ...]]:
    rng = random.Random(seed)
    weights = [w for _, _, w in BRANDS]
    start = dt.date(2026, 1, 1)
    rows = []
    for _ in range(n):
        user = rng.randint(1, users)
        if rng.random() < 0.85:
            brand = rng.choices(BRANDS, weights)[0][0]
            merchant = messy(rng, brand)
        else:
            merchant = f"{rng.choice(LOCAL_WORDS)} {rng.choice(LOCAL_KINDS)} {rng.choice(CITIES)}".strip()
        amount = round(rng.lognormvariate(3.0, 1.0) + 0.5, 2)
        day = start + dt.timedelta(days=rng.randint(0, 300))
        when = dt.time(rng.randint(6, 23), rng.randint(0, 59))
        rows.append((user, merchant, "", amount, "USD", day, when))
    return rows


def load_demo_data(conn: psycopg.Connection[Any], *, expenses: int, users: int, seed: int = 7) -> list[int]:
    """Wipe the demo tables and load fresh data; returns the expense IDs (some soft-deleted)."""
    conn.execute(
        "TRUNCATE categorizations, corrections, categorization_patterns, expenses, categories RESTART IDENTITY"
    )
    ids: dict[str, int] = {}
    for key, name, parent in CATEGORIES:
        row = conn.execute(
            "INSERT INTO categories (key, name, parent_id) VALUES (%s, %s, %s) RETURNING id",
            (key, name, ids.get(parent) if parent else None),
        ).fetchone()
        assert row is not None
        ids[key] = row[0]
    patterns = [(None, ids[c], "merchant", canonical_value("merchant", b), 0.95) for b, c, _ in BRANDS]
    patterns += [(None, ids[c], "keyword", canonical_value("keyword", k), w) for k, c, w in KEYWORDS]
    patterns.append((None, ids["food:dining"], "regex", r"^uber\s*\*?\s*eats", 0.97))
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO categorization_patterns (user_id, category_id, kind, value, weight) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            patterns,
        )
        with cur.copy(
            "COPY expenses (user_id, merchant_name, description, amount, currency, transaction_date, "
            "transaction_time) FROM STDIN"
        ) as copy:
            for row in generate_expenses(expenses, users=users, seed=seed):
                copy.write_row(row)
    # A few expenses deleted by their users after being queued: counted as missing, never lost.
    conn.execute("UPDATE expenses SET deleted_at = now() WHERE id % 997 = 0")
    return [r[0] for r in conn.execute("SELECT id FROM expenses ORDER BY id").fetchall()]
