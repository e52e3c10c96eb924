"""The benchmark commands run end to end on tiny sizes, so they never rot (no timing assertions)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
import redis

from pipeline.settings import Settings
from workers.procs import ROOT, settings_env


def bench(settings: Settings, tmp_path: Path, *args: str) -> dict[str, object]:
    out = tmp_path / "result.json"
    done = subprocess.run(
        [sys.executable, "-m", "workers", "bench", *args, "--json", str(out)],
        env=settings_env(settings),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"bench {args[0]} exited {done.returncode}:\n{done.stderr[-4000:]}"
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
        (["latency", "--rates", "20", "--seconds", "1", "--polls", "10", "--wakeup", "off,on"], "configs"),
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


def test_memory_reports_rss_of_each_worker_process_idle_and_during_runs(
    settings: Settings, tmp_path: Path
) -> None:
    args = ["--expenses", "1500", "--patterns", "1000", "--reps", "2", "--idle", "1", "--processes", "2"]
    result = bench(settings, tmp_path, "memory", *args)
    assert result["params"]["distinct_merchants"] == 1500  # type: ignore[index]
    assert result["params"]["merchant_entries_in_l2"] == 1000  # type: ignore[index]
    pids = result["worker_pids"]
    assert len(pids) == 2  # type: ignore[arg-type]
    for pid in pids:  # type: ignore[attr-defined]
        assert result["baseline_idle_mb"]["per_process"][str(pid)] > 10  # type: ignore[index]
        peak = result["run_mb"]["per_process"][str(pid)]["peak"]  # type: ignore[index]
        assert peak["n"] == 2 and peak["min"] <= peak["median"] <= peak["max"]
    assert result["per_s"]["median"] > 0 and isinstance(result["flat"], bool)  # type: ignore[index]
    assert _cache_keys(settings) == []  # its private L2 keys are gone


def test_degraded_compares_healthy_and_down_runs_and_their_rows(settings: Settings, tmp_path: Path) -> None:
    args = ["--expenses", "2000", "--merchants", "300", "--reps", "1", "--processes", "1"]
    # 4 batches: a breaker opening after 2 failures opens in every down run
    result = bench(msgspec.structs.replace(settings, breaker_fail_max=2), tmp_path, "degraded", *args)
    assert result["identical"] is True
    assert result["rows_differing_from_reference"] == {"healthy": [0], "down": [0]}
    assert result["breaker_opened"] == {"healthy": [False], "down": [True]}
    lookups = result["cache_lookups"]
    assert lookups["healthy"]["l2_hit"] > 0 and "l2_error" not in lookups["healthy"]  # type: ignore[index]
    assert lookups["down"]["l2_error"] > 0 and "l2_hit" not in lookups["down"]  # type: ignore[index]
    assert result["down_over_healthy"] > 0


def _cache_keys(settings: Settings) -> list[bytes]:
    client = redis.Redis.from_url(settings.cache_url)
    try:
        return list(client.scan_iter(f"{settings.cache_prefix}-bench-*", count=1000))
    finally:
        client.close()
