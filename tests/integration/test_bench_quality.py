"""The quality benchmark on a few generated rows: it runs end to end and cleans up (no quality or
timing assertions: this keeps the command from rotting)."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import psycopg

from pipeline.dbadmin import admin_url
from pipeline.settings import Settings
from workers.bench.quality import default_split, read_rows, run_quality_bench
from workers.procs import ROOT, settings_env

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
    assert report.corrections == 20 and report.learned_patterns == 5
    assert sum(b.rows for b in report.bands.values()) == report.test_rows
    assert 0 <= report.auto_rate <= 1 and report.bands["auto"].rows > 0
    assert [m.phase for m in report.months] == ["train", "train", "test"]
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
    assert "auto-categorized" in out.stdout and "split month 2022-02" in out.stdout
    missing = subprocess.run(
        [sys.executable, "-m", "workers", "bench", "quality", "--data", str(tmp_path / "nope.csv")],
        env=settings_env(settings),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode != 0 and "no such file" in missing.stderr
