"""The quality benchmark's lookup baselines, its CSV reading and its month plans, on tiny
hand-made data (no database): every count below follows from the rows by hand.

January (learned from): TESCO STORES 1234 x2 and TESCO STORES 5678 (Groceries), SHELL 01
(Fuel), AMAZON (Books, then Groceries), BP 1 x3 (Fuel). February: both Tesco strings and a new
Tesco store, SHELL 01, SHELL 02, AMAZON, BP 1 (now Groceries), NEWSHOP. March: SHELL 02, BP 1.
The smoothed ratio (n + 0.5) / (N + 1): 2 of 2 -> 0.8333 (suggest), 3 of 3 -> 0.875 (auto),
1 of 1 -> 0.75 (suggest), 1 of 2 -> 0.5 (none), 3 of 4 -> 0.7 (suggest)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from pipeline.matcher import Thresholds
from workers.bench.quality import Columns, baselines, phases, read_data, read_rows, replay
from workers.bench.quality.score import method_score

THRESHOLDS = Thresholds(auto=0.85, suggest=0.70)
ROWS = [
    ("2022-01-03", "TESCO STORES 1234", "Groceries"),
    ("2022-01-04", "TESCO STORES 1234", "Groceries"),
    ("2022-01-05", "TESCO STORES 5678", "Groceries"),
    ("2022-01-06", "SHELL 01", "Fuel"),
    ("2022-01-07", "AMAZON", "Books"),
    ("2022-01-08", "AMAZON", "Groceries"),
    ("2022-01-09", "BP 1", "Fuel"),
    ("2022-01-10", "BP 1", "Fuel"),
    ("2022-01-11", "BP 1", "Fuel"),
    ("2022-02-01", "TESCO STORES 1234", "Groceries"),
    ("2022-02-02", "TESCO STORES 9999", "Groceries"),
    ("2022-02-03", "SHELL 01", "Fuel"),
    ("2022-02-04", "SHELL 02", "Fuel"),
    ("2022-02-05", "AMAZON", "Books"),
    ("2022-02-06", "BP 1", "Groceries"),
    ("2022-02-07", "NEWSHOP", "Books"),
    ("2022-03-01", "SHELL 02", "Fuel"),
    ("2022-03-02", "BP 1", "Fuel"),
]


def write(path: Path) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["trans_date", "merchant_name", "amount_gbp", "consumer_category"])
        for date, merchant, label in ROWS:
            w.writerow([date, merchant, "9.99", label])
    return path


def run(path: Path, mode: str, **kw: object) -> dict[str, tuple[object, ...]]:
    rows = read_rows(path)
    lookups = baselines(rows, THRESHOLDS)
    trace = replay(rows, phases(rows, mode, **kw), lookups)  # type: ignore[arg-type]
    out = {}
    for b in lookups:
        s = method_score(rows, trace, b.name)
        bands = tuple((x.rows, x.correct, x.precision) for x in s.overall.bands.values())
        slices = tuple((x.rows, x.bands["auto"].rows, x.wrong_or_missing) for x in s.slices.values())
        months = tuple((m.month, m.phase, m.rows, m.corrections, m.correction_rate) for m in s.months)
        out[b.name] = (bands, s.overall.wrong_or_missing, s.overall.correction_rate, slices, months)
    return out


def test_holdout_learns_january_and_scores_february_and_march(tmp_path: Path) -> None:
    got = run(write(tmp_path / "t.csv"), "holdout", split_month="2022-02")
    jan = ("2022-01", "train", 9, 9, 1.0)  # nothing known yet: every row missing, every row sent
    # exact: BP 1 auto (wrong in Feb, right in Mar); TESCO STORES 1234 and SHELL 01 suggest;
    # the new strings (TESCO STORES 9999, SHELL 02 twice), AMAZON (1 of 2) and NEWSHOP none
    assert got["exact_merchant"] == (
        ((2, 1, 0.5), (2, 2, 1.0), (5, 0, None)),
        6,
        0.6667,
        ((8, 2, 5), (1, 0, 1)),  # seen (normalized merchant in January): 8 rows; unseen: NEWSHOP
        (jan, ("2022-02", "test", 7, 0, 0.7143), ("2022-03", "test", 2, 0, 0.5)),
    )
    # normalized: 'tesco stores' 3 of 3 -> both Tesco rows auto; 'shell' suggest for SHELL 02 too
    assert got["normalized_merchant"] == (
        ((4, 3, 0.75), (3, 3, 1.0), (2, 0, None)),
        3,
        0.3333,
        ((8, 4, 2), (1, 0, 1)),
        (jan, ("2022-02", "test", 7, 0, 0.4286), ("2022-03", "test", 2, 0, 0.0)),
    )


def test_online_sends_only_wrong_or_missing_answers(tmp_path: Path) -> None:
    got = run(write(tmp_path / "t.csv"), "online")
    jan = ("2022-01", "online", 9, 9, 1.0)
    # February's right answers are not sent: TESCO STORES 1234 stays at 2 of 2 (suggest) for the
    # exact lookup; BP 1 corrected to Groceries is 3 of 4 Fuel in March: 0.7, suggest, right
    assert got["exact_merchant"] == (
        ((1, 0, 0.0), (4, 4, 1.0), (13, 0, None)),
        14,
        0.7778,
        ((8, 1, 4), (10, 0, 10)),  # seen before its month: February's 6 + March's 2
        (jan, ("2022-02", "online", 7, 5, 0.7143), ("2022-03", "online", 2, 0, 0.0)),
    )
    assert got["normalized_merchant"] == (
        ((3, 2, 0.6667), (4, 4, 1.0), (11, 0, None)),
        12,
        0.6667,
        ((8, 3, 2), (10, 0, 10)),
        (jan, ("2022-02", "online", 7, 3, 0.4286), ("2022-03", "online", 2, 0, 0.0)),
    )


def test_gap_leaves_months_out(tmp_path: Path) -> None:
    rows = read_rows(write(tmp_path / "t.csv"))
    assert phases(rows, "gap", train_months=1, gap_months=1) == {
        "2022-01": "train",
        "2022-02": "gap",
        "2022-03": "test",
    }
    got = run(tmp_path / "t.csv", "gap", train_months=1, gap_months=1)
    # March only: SHELL 02 (exact unseen: none; 'shell' 1 of 1: suggest), BP 1 (3 of 3 Fuel: auto)
    assert got["exact_merchant"][:3] == (((1, 1, 1.0), (0, 0, None), (1, 0, None)), 1, 0.5)
    assert got["normalized_merchant"][:3] == (((1, 1, 1.0), (1, 1, 1.0), (0, 0, None)), 0, 0.0)
    with pytest.raises(ValueError, match="--train-months"):
        phases(rows, "gap")
    with pytest.raises(ValueError, match="no training or no test rows"):
        phases(rows, "gap", train_months=2, gap_months=1)


def test_a_bank_statement_reads_with_the_default_columns(tmp_path: Path) -> None:
    path = tmp_path / "statement.csv"
    path.write_text(
        "description,amount,label,balance,date\n"
        "POS Purchase Woolworths  * 23 Aug,-1 175.56,Groceries,10.00,2023-08-24 00:00:00\n"
        "Fusion Interest Rebate,22.85,Interest Received,1 000.00,2023-10-27T00:00:00\n"
        "Bank Fee,Bank,Bank Charges,1.00,2023-10-28 00:00:00\n"
        "Nothing,-0.001,Bank Charges,1.00,2023-10-28 00:00:00\n"
        "Unlabelled,-3.00,,1.00,2023-10-29 00:00:00\n"
        "Bad date,-3.00,Fees,1.00,29/10/2023\n"
    )
    data = read_data(path)
    assert data.columns == {"date": "date", "merchant": "description", "amount": "amount", "label": "label"}
    assert data.skipped == {"bad amount": 1, "bad date": 1, "no label": 1, "zero amount": 1}
    assert [(r.month, r.merchant, r.amount, r.label) for r in data.rows] == [
        ("2023-08", "POS Purchase Woolworths  * 23 Aug", 1175.56, "Groceries"),
        ("2023-10", "Fusion Interest Rebate", 22.85, "Interest Received"),
    ]
    named = read_data(path, Columns(date="date", merchant="label", label="description", mcc="balance"))
    assert named.rows[0].merchant == "Groceries" and named.rows[0].description == "mcc 10.00"
    with pytest.raises(ValueError, match=r"no date column 'when' .*; name it with --date-column"):
        read_data(path, Columns(date="when"))
    dayfirst = read_data(path, Columns(date_format="%d/%m/%Y"))
    assert [r.merchant for r in dayfirst.rows] == ["Bad date"]  # the ISO dates fail that format
