"""The benchmark commands run end to end on tiny sizes, so they never rot (no timing assertions)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.settings import Settings
from workers.procs import ROOT, settings_env


def bench(settings: Settings, tmp_path: Path, *args: str) -> dict[str, object]:
    out = tmp_path / "result.json"
    subprocess.run(
        [sys.executable, "-m", "workers", "bench", *args, "--json", str(out)],
        env=settings_env(settings),
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=300,
    )
    doc = json.loads(out.read_text())
    assert doc["machine"]["cpus"] >= 1
    return doc["result"]  # type: ignore[no-any-return]


def test_throughput_runs_fleet_naive_and_floor(settings: Settings, tmp_path: Path) -> None:
    result = bench(settings, tmp_path, "throughput", "--expenses", "600", "--naive", "40", "--reps", "1")
    assert result["expenses"] == 600 and result["naive_expenses"] == 40
    for key in ("fleet_per_s", "naive_per_s", "floor_per_s"):
        assert result[key]["median"] > 0  # type: ignore[index]
    assert result["fleet_vs_naive"] > 0 and "workers" in result["cpu_seconds_during_fleet_reps"]  # type: ignore[operator]


@pytest.mark.parametrize(
    ("args", "key"),
    [
        (["batch-size", "--expenses", "400", "--sizes", "50,200", "--reps", "1"], "sizes"),
        (["latency", "--rates", "20", "--seconds", "1", "--polls", "1000,10"], "configs"),
        (["scaling", "--expenses", "400", "--shapes", "1x2", "--reps", "1"], "shapes"),
        (["cache", "--expenses", "2000", "--merchants", "300", "--reps", "1"], "hit_rate_after_warmup"),
        (["relay", "--expenses", "300", "--samples", "5", "--rate", "50"], "relay_added"),
    ],
)
def test_other_scenarios_produce_their_tables(
    settings: Settings, tmp_path: Path, args: list[str], key: str
) -> None:
    result = bench(settings, tmp_path, *args)
    assert result[key]
