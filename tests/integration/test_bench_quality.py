"""The quality benchmark on a few generated rows, in every mode: it runs end to end and cleans up
(no timing assertions: this keeps the command from rotting). The rows are few and fully
determined, so the report's counts are exact: a merchant corrected four times alike is
auto-categorized, twice alike suggested; one whose labels disagree, or one never seen, gets
nothing. On these rows the lookup baselines answer exactly as catfleet does."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import psycopg

from workers.bench.quality import default_split, read_rows, run_quality_bench
from workers.harness.databases import admin_url
from workers.harness.processes import ROOT, settings_env
from workers.settings import Settings

MERCHANTS = [
    ("tesco pfs 4471", "Transport:Fuel"),
    ("asda groceries online", "Groceries"),
    ("bt business bp", "Utilities & Telecom"),
    ("amznmktplace", "Groceries"),
    ("amznmktplace", "Education, Books & Stationery"),
]


def write_csv(path: Path) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["trans_date", "merchant_name", "amount_gbp", "mcc", "expense_desc", "consumer_category"])
        for month in ("2022-01", "2022-02", "2022-03"):
            for day in (3, 17):
                for merchant, label in MERCHANTS:
                    w.writerow([f"{month}-{day:02d}", merchant, "12.50", "", "desc", label])
        w.writerow(["2022-03-20", "unlabelled shop", "5", "", "Misc", ""])  # skipped: no label
        w.writerow(["2022-03-21", "refund shop", "-5", "", "Misc", "Groceries"])  # counted by |amount|


def bench_databases(settings: Settings) -> list[str]:
    with psycopg.connect(admin_url(settings.database_url), autocommit=True) as conn:
        rows = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE '%%_qbench_%%'").fetchall()
    return sorted(r[0] for r in rows)


def test_quality_bench_runs_on_generated_rows(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "tiny.csv"
    write_csv(path)
    rows = read_rows(path)
    assert len(rows) == 31 and default_split(rows) == "2022-03"
    existing = bench_databases(settings)

    report = run_quality_bench(settings, path)
    assert (report.split_month, report.train_rows, report.test_rows) == ("2022-03", 20, 11)
    assert (report.train_months, report.test_months) == (["2022-01", "2022-02"], ["2022-03"])
    assert report.data == str(path) and report.categories == 4  # one per distinct label
    assert report.corrections == 20  # every training row, once
    assert report.learned_patterns == 5  # a merchant pattern per (merchant, label) pair
    assert (report.auto_threshold, report.suggest_threshold) == (
        settings.auto_threshold,
        settings.suggest_threshold,
    )
    assert list(report.bands) == ["auto", "suggest", "none"]
    assert sum(b.rows for b in report.bands.values()) == report.test_rows
    for name, band in report.bands.items():
        assert band.share == round(band.rows / report.test_rows, 4) and 0 <= band.correct <= band.rows
        expected = None if name == "none" or band.rows == 0 else round(band.correct / band.rows, 4)
        assert band.precision == expected
    assert abs(sum(b.share for b in report.bands.values()) - 1) <= 1.5e-4  # rounded to 4 places
    # tesco, asda and bt (2 test rows each, 4 consistent corrections each): auto and right;
    # amznmktplace (labels disagree, 4 rows) and the unseen refund shop (1 row): none
    got = {name: (b.rows, b.correct, b.precision) for name, b in report.bands.items()}
    assert got == {"auto": (6, 6, 1.0), "suggest": (0, 0, None), "none": (5, 0, None)}
    assert (report.auto_rate, report.auto_precision) == (report.bands["auto"].share, 1.0) == (0.5455, 1.0)
    assert report.meets_target is False  # 54.5 % auto is under the 75 % target
    assert report.top_auto_errors == []  # every auto answer was right
    assert [(m.month, m.phase, m.rows, m.auto_rate, m.auto_precision) for m in report.months] == [
        ("2022-01", "train", 10, 0.0, None),  # nothing learned yet
        ("2022-02", "train", 10, 0.0, None),  # two corrections per merchant: suggest, not auto
        ("2022-03", "test", 11, 0.5455, 1.0),
    ]
    assert set(report.seconds) == {"load", "categorize", "learn", "score"}
    assert (report.mode, report.gap_months, report.correction_rate) == ("holdout", [], 0.4545)
    assert report.skipped == {"no label": 1}
    assert list(report.methods) == ["catfleet", "exact_merchant", "normalized_merchant"]
    for name, m in report.methods.items():  # the baselines learned the same 20 corrections
        assert (m.overall.bands["auto"].rows, m.overall.bands["none"].rows, m.corrections) == (6, 5, 20), name
        # seen: the 10 rows of known merchants; unseen: the refund shop
        assert [(s.rows, s.bands["auto"].rows) for s in m.slices.values()] == [(10, 6), (1, 0)]
        assert [(x.month, x.corrections, x.correction_rate) for x in m.months] == [
            ("2022-01", 10, 1.0),
            ("2022-02", 10, 0.4),
            ("2022-03", 0, 0.4545),
        ]
    assert report.versus["exact_merchant"]["overall"] == {
        "auto_rate": {"minus": 0.0, "over": 1.0},
        "auto_precision": {"minus": 0.0, "over": 1.0},
        "correction_rate": {"minus": 0.0, "over": 1.0},
    }
    assert bench_databases(settings) == existing  # the throwaway database is gone

    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "workers",
            "bench",
            "quality",
            "--data",
            str(path),
            "--split-month",
            "2022-02",
        ],
        env=settings_env(settings),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    lines = [line.strip() for line in out.stdout.splitlines()]
    assert f"quality bench: {path}" in lines
    assert "train: 10 labelled rows, 2022-01..2022-01 -> 10 corrections, 5 learned patterns" in lines
    assert (
        "test:  21 labelled rows, 2022-02..2022-03 (split month 2022-02; nothing learned from them)" in lines
    )
    # after January's two corrections per merchant: suggestions (all right), nothing automatic
    assert "suggest     12   57.1 %    100.0 %" in lines and "auto         0    0.0 %          -" in lines
    assert any(line.startswith("auto-categorized 0.0 % at - precision (MISSES the target") for line in lines)
    missing = subprocess.run(
        [sys.executable, "-m", "workers", "bench", "quality", "--data", str(tmp_path / "nope.csv")],
        env=settings_env(settings),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 1  # SystemExit with a message
    assert missing.stderr.strip() == f"catfleet bench quality: no such file: {tmp_path / 'nope.csv'}"


def test_quality_bench_gap_mode(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "tiny.csv"
    write_csv(path)
    report = run_quality_bench(settings, path, mode="gap", train_months=1, gap_months=1)
    assert (report.train_months, report.gap_months, report.test_months) == (
        ["2022-01"],
        ["2022-02"],
        ["2022-03"],
    )
    assert (report.train_rows, report.test_rows, report.corrections, report.split_month) == (
        10,
        11,
        10,
        "2022-03",
    )
    for name, m in report.methods.items():
        # two corrections alike: 0.83, suggest (tesco, asda, bt); amazon 1 to 1 and the refund shop: none
        got = {band: (b.rows, b.correct) for band, b in m.overall.bands.items()}
        assert got == {"auto": (0, 0), "suggest": (6, 6), "none": (5, 0)}, name
        assert [x.month for x in m.months] == ["2022-01", "2022-03"]  # February is not categorized
    assert report.versus["normalized_merchant"]["overall"]["auto_rate"] == {"minus": 0.0, "over": None}


def test_quality_bench_online_mode(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "tiny.csv"
    write_csv(path)
    report = run_quality_bench(settings, path, mode="online")
    assert (report.mode, report.split_month, report.train_rows, report.test_rows) == ("online", None, 0, 31)
    for name, m in report.methods.items():
        # January: nothing known, all 10 corrected; then the right suggestions are not sent, so
        # tesco/asda/bt stay at two corrections (suggest); amazon (4 a month) and the refund shop
        # are corrected every time
        got = {band: (b.rows, b.correct) for band, b in m.overall.bands.items()}
        assert got == {"auto": (0, 0), "suggest": (12, 12), "none": (19, 0)}, name
        assert (m.corrections, m.overall.correction_rate) == (19, 0.6129), name
        assert [(x.month, x.phase, x.rows, x.corrections, x.correction_rate) for x in m.months] == [
            ("2022-01", "online", 10, 10, 1.0),
            ("2022-02", "online", 10, 4, 0.4),
            ("2022-03", "online", 11, 5, 0.4545),
        ]
        assert [s.rows for s in m.slices.values()] == [20, 11]  # seen in an earlier month or not
    assert report.corrections == 19 and report.learned_patterns == 6  # the refund shop was corrected too


def test_quality_bench_command_names_the_columns(settings: Settings, tmp_path: Path) -> None:
    """Other column names and a day-first date, named by flags; online mode as JSON."""
    path = tmp_path / "renamed.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["when", "shop", "value", "kind"])
        for month in (1, 2, 3):
            for day in (3, 17):
                for merchant, label in MERCHANTS:
                    w.writerow([f"{day:02d}/{month:02d}/2022", merchant, "-12.50", label])
    flags = ["--date-column", "when", "--merchant-column", "shop", "--amount-column", "value"]
    flags += ["--label-column", "kind", "--date-format", "%d/%m/%Y", "--currency", "ZAR"]
    out = quality_command(settings, "--data", str(path), "--mode", "online", "--json", *flags)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["columns"] == {"date": "when", "merchant": "shop", "amount": "value", "label": "kind"}
    assert (doc["test_rows"], doc["corrections"], doc["correction_rate"]) == (30, 18, 0.6)
    assert doc["methods"]["normalized_merchant"]["overall"]["wrong_or_missing"] == 18
    assert doc["versus"]["exact_merchant"]["overall"]["correction_rate"] == {"minus": 0.0, "over": 1.0}
    bad = quality_command(settings, "--data", str(path), "--mode", "gap", *flags)
    assert bad.returncode == 1
    assert bad.stderr.strip() == (
        "catfleet bench quality: --mode gap needs --train-months N (N >= 1) and --gap-months M (M >= 0)"
    )
    unnamed = quality_command(settings, "--data", str(path))
    assert unnamed.returncode == 1
    assert unnamed.stderr.strip().startswith("catfleet bench quality: no date column 'trans_date' or")


def quality_command(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "workers", "bench", "quality", *args],
        env=settings_env(settings),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
