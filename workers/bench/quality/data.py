"""The labelled rows of a CSV and how a mode splits their months.

A CSV needs four columns: a date, a merchant, an amount and a label; a description and an MCC
are optional. Each is found by its flag (``--date-column`` ...) or, without one, by the first
header name of its ``CANDIDATES`` entry: the Birmingham purchase-card file
(``trans_date, merchant_name, amount_gbp, consumer_category``) and a bank statement
(``date, description, amount, label``: the description is its merchant) both work as they are.
"""

from __future__ import annotations

import csv
import datetime as dt
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import msgspec

#: Header names tried, in order, for a column no flag names.
CANDIDATES: dict[str, tuple[str, ...]] = {
    "date": ("trans_date", "transaction_date", "date"),
    "merchant": ("merchant_name", "merchant", "description"),
    "amount": ("amount_gbp", "amount"),
    "label": ("consumer_category", "label", "category"),
}
#: Without --split-month, the test months are the latest ones holding about this share of rows.
DEFAULT_TEST_SHARE = 0.25
MODES = ("holdout", "gap", "online")


class Columns(msgspec.Struct, frozen=True, kw_only=True):
    """Column names (None: the first of ``CANDIDATES`` in the header) and the date format
    (None: ISO, the first 10 characters, so ``2023-10-10 00:00:00`` and ``2023-10-27T00:00`` work)."""

    date: str | None = None
    merchant: str | None = None
    amount: str | None = None
    label: str | None = None
    description: str | None = None
    mcc: str | None = None
    date_format: str | None = None


class LabelledRow(msgspec.Struct, frozen=True):
    date: dt.date
    merchant: str
    amount: float
    label: str
    description: str = ""

    @property
    def month(self) -> str:
        return self.date.strftime("%Y-%m")


class Dataset(msgspec.Struct, kw_only=True):
    rows: list[LabelledRow]  # oldest first
    columns: dict[str, str]  # role -> header name used
    skipped: dict[str, int]  # reason -> rows left out


def _resolve(header: Sequence[str], columns: Columns) -> dict[str, str]:
    found: dict[str, str] = {}
    for role, names in CANDIDATES.items():
        chosen = getattr(columns, role)
        name = chosen if chosen is not None else next((n for n in names if n in header), None)
        if name is None or name not in header:
            wanted = repr(chosen) if chosen is not None else " or ".join(repr(n) for n in names)
            raise ValueError(
                f"no {role} column {wanted} in the header ({', '.join(header)}); name it with --{role}-column"
            )
        found[role] = name
    for role in ("description", "mcc"):
        name = getattr(columns, role)
        if name is not None:
            if name not in header:
                raise ValueError(f"no {role} column {name!r} in the header ({', '.join(header)})")
            found[role] = name
    return found


def _date(text: str, fmt: str | None) -> dt.date:
    text = text.strip()
    return dt.datetime.strptime(text, fmt).date() if fmt else dt.date.fromisoformat(text[:10])


def _amount(text: str) -> float:
    """``-1 175.56`` and ``1,175.56`` -> 1175.56 (spaces and commas are thousands separators)."""
    return abs(float(text.replace(" ", "").replace(",", "")))


def read_data(path: Path, columns: Columns | None = None) -> Dataset:
    """The labelled rows, oldest first. Rows without a label, with an unparsable or zero amount
    (under a cent) or an unparsable date are left out and counted; refunds count by absolute amount."""
    columns = columns or Columns()
    out = []
    skipped: Counter[str] = Counter()
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        found = _resolve(reader.fieldnames or [], columns)
        for raw in reader:
            label = (raw.get(found["label"]) or "").strip()
            if not label:
                skipped["no label"] += 1
                continue
            try:
                date = _date(raw.get(found["date"]) or "", columns.date_format)
            except ValueError:
                skipped["bad date"] += 1
                continue
            try:
                amount = round(_amount(raw.get(found["amount"]) or ""), 2)
            except ValueError:
                skipped["bad amount"] += 1
                continue
            if amount <= 0:
                skipped["zero amount"] += 1
                continue
            parts = [(raw.get(found["description"]) or "").strip()] if "description" in found else []
            if "mcc" in found and (raw.get(found["mcc"]) or "").strip():
                parts.append(f"mcc {(raw.get(found['mcc']) or '').strip()}")
            merchant = (raw.get(found["merchant"]) or "").strip()
            out.append(LabelledRow(date, merchant, amount, label, " ".join(p for p in parts if p)))
    out.sort(key=lambda r: r.date)
    return Dataset(rows=out, columns=found, skipped=dict(sorted(skipped.items())))


def read_rows(path: Path, columns: Columns | None = None) -> list[LabelledRow]:
    """The labelled rows, oldest first."""
    return read_data(path, columns).rows


def default_split(rows: Sequence[LabelledRow], test_share: float = DEFAULT_TEST_SHARE) -> str:
    """The first test month: the latest months hold about ``test_share`` of the rows."""
    per_month = Counter(r.month for r in rows)
    months = sorted(per_month)
    if len(months) < 2:
        raise ValueError("the data must span at least two months to split train and test by month")
    seen = 0
    for month in reversed(months[1:]):
        seen += per_month[month]
        if seen >= test_share * len(rows):
            return month
    return months[1]


def _month_index(month: str) -> int:
    year, mon = month.split("-")
    return int(year) * 12 + int(mon) - 1


def phases(
    rows: Sequence[LabelledRow],
    mode: str,
    *,
    split_month: str | None = None,
    train_months: int | None = None,
    gap_months: int = 0,
) -> dict[str, str]:
    """Each month of the data (oldest first) -> train | gap | test | online.

    holdout: test from ``split_month`` (default: ``default_split``); gap: the first
    ``train_months`` calendar months from the first month of the data train, the next
    ``gap_months`` are left out, the rest test; online: every month is categorized, then corrected."""
    months = sorted({r.month for r in rows})
    if not months:
        raise ValueError("no labelled rows")
    if mode == "online":
        return dict.fromkeys(months, "online")
    if mode == "holdout":
        split = split_month or default_split(rows)
        out = {m: "train" if m < split else "test" for m in months}
    elif mode == "gap":
        if train_months is None or train_months < 1 or gap_months < 0:
            raise ValueError("--mode gap needs --train-months N (N >= 1) and --gap-months M (M >= 0)")
        first = _month_index(months[0])
        out = {}
        for m in months:
            k = _month_index(m) - first
            out[m] = "train" if k < train_months else "gap" if k < train_months + gap_months else "test"
    else:
        raise ValueError(f"unknown mode {mode!r} (one of {', '.join(MODES)})")
    if "train" not in out.values() or "test" not in out.values():
        span = f"{months[0]}..{months[-1]}, {len(months)} months with rows"
        raise ValueError(f"{mode}: the split leaves no training or no test rows (data {span})")
    return out
