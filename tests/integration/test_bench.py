"""The benchmark commands run end to end on tiny sizes, so they never rot (no timing assertions)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis

from workers.harness.processes import ROOT, settings_env
from workers.settings import Settings


def bench(settings: Settings, tmp_path: Path, *args: str, log_level: str = "INFO") -> dict[str, object]:
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
    assert set(doc) == {"scenario", "started", "seconds", "machine", "settings", "result"}
    assert doc["scenario"] == args[0] and doc["seconds"] >= 0
    assert set(doc["machine"]) == {"cpus", "python", "platform"}
    assert doc["machine"]["cpus"] == len(os.sched_getaffinity(0))  # the same host as this test
    assert doc["settings"] == {
        "batch_size": settings.batch_size,
        "worker_threads": settings.worker_threads,
        "log_level": log_level,  # production's default unless --log-level says otherwise
    }
    return doc["result"]  # type: ignore[no-any-return]


def assert_summary(s: Any, n: int) -> None:
    """A ``summarize`` of ``n`` positive figures: its keys, count and order."""
    assert set(s) == {"median", "min", "max", "n"} and s["n"] == n
    assert 0 < s["min"] <= s["median"] <= s["max"]
    if n == 1:
        assert s["min"] == s["median"] == s["max"]


def assert_percentiles(p: Any) -> None:
    assert set(p) == {"p50_ms", "p95_ms", "p99_ms"}
    assert 0 < p["p50_ms"] <= p["p95_ms"] <= p["p99_ms"]


def test_throughput_runs_the_floor_in_the_fleets_shape_alternated(settings: Settings, tmp_path: Path) -> None:
    result: Any = bench(settings, tmp_path, "throughput", "--expenses", "4000", "--reps", "2")
    assert set(result) == {
        "expenses",
        "log_level",
        "plan",
        "shape",
        "fleet_per_s",
        "floor_per_s",
        "naive_per_s",
        "naive_expenses",
        "naive_seconds",
        "fleet_vs_floor",
        "fleet_vs_naive",
        "logging",
        "cpu_us_per_expense",
    }
    assert (result["expenses"], result["log_level"]) == (4000, "INFO")
    # floor shape equals fleet shape, as each observed it: the fleet's processes from their fleet
    # records, the floor's from its own processes and threads; the naive fleet runs the same
    want = {"processes": 2, "threads": settings.worker_threads, "batch_size": settings.batch_size}
    assert result["shape"]["fleet"] == result["shape"]["floor"] == want
    assert result["shape"]["naive"] == {**want, "batch_size": 1}  # one message per expense
    # alternated, never in blocks; the log level that goes first alternates too
    assert result["plan"] == [
        "floor", "fleet INFO", "fleet WARNING", "naive INFO",
        "floor", "fleet WARNING", "fleet INFO", "naive INFO",
    ]  # fmt: skip
    for key in ("fleet_per_s", "naive_per_s", "floor_per_s"):
        assert_summary(result[key], 2)
    assert len(result["naive_expenses"]) == len(result["naive_seconds"]) == 2
    assert all(n > 0 for n in result["naive_expenses"]) and all(s > 0 for s in result["naive_seconds"])
    for key in ("fleet_vs_floor", "fleet_vs_naive"):  # per-rep ratios of the alternated runs
        assert result[key]["n"] == 2 and 0 < result[key]["min"] <= result[key]["median"] <= result[key]["max"]
    logging = result["logging"]
    assert logging["levels"] == ["INFO", "WARNING"]
    assert_summary(logging["fleet_warning_per_s"], 2)
    assert logging["warning_over_info"]["n"] == 2
    cpu = result["cpu_us_per_expense"]
    assert set(cpu) == {"fleet", "floor", "naive"}
    components = {
        "workers",
        "postgresql (bench db backends)",
        "redis (whole server)",
        "bench (producer)",
        "floor",
    }
    assert "workers" in cpu["fleet"] and "floor" in cpu["floor"] and "workers" in cpu["naive"]
    for run in cpu.values():
        assert set(run) <= components and "postgresql (bench db backends)" in run
        assert all(us >= 0 for us in run.values())


def test_bad_input_gets_one_line_and_exit_code_2(settings: Settings) -> None:
    for args in (
        ["throughput", "--reps", "0"],
        ["latency", "--rates", "x"],
        ["cache", "--warmup", "1"],
        ["capacity", "--batch-sizes", "50,100"],  # two sizes fit the model and leave nothing to check
        ["capacity", "--targets", "0"],
        ["capacity", "--wal-mb-s", "x"],
    ):
        done = subprocess.run(
            [sys.executable, "-m", "workers", "bench", *args],
            env=settings_env(settings),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2, args
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert done.stderr.startswith(f"catfleet bench {args[0]}: error: argument {args[1]}"), done.stderr


def check_batch_size(result: Any, settings: Settings) -> None:
    assert result.keys() == {"expenses", "processes", "sizes"}
    assert (result["expenses"], result["processes"]) == (400, 2)
    assert list(result["sizes"]) == ["50", "200"]  # JSON object keys, in the order given
    for size in result["sizes"].values():
        assert size.keys() == {"per_s", "batch_ms_p50", "batch_ms_p95"}
        assert_summary(size["per_s"], 1)
        assert 0 < size["batch_ms_p50"] <= size["batch_ms_p95"]  # from that size's batch log lines


def check_latency(result: Any, settings: Settings) -> None:
    assert result.keys() == {"samples", "processes", "log_level", "clock", "configs"}
    assert (result["samples"], result["processes"], result["log_level"]) == (20, 2, "INFO")
    assert result["configs"].keys() == {"idle_poll_10ms_wakeup_off", "idle_poll_10ms_wakeup_on"}
    for config in result["configs"].values():
        assert list(config) == ["40/s"]
        got = config["40/s"]
        assert got.keys() == {"messages", "p50_ms", "p95_ms", "p99_ms", "p99_9_ms", "max_ms"}
        assert got["messages"] == 20  # --samples per rate
        assert 0 < got["p50_ms"] <= got["p95_ms"] <= got["p99_ms"] <= got["p99_9_ms"] <= got["max_ms"]


def check_scaling(result: Any, settings: Settings) -> None:
    assert result.keys() == {"expenses", "shapes"}
    assert result["expenses"] == 3000 and list(result["shapes"]) == ["1p x 2t"]
    shape = result["shapes"]["1p x 2t"]
    assert shape.keys() == {"per_s", "per_process_per_s", "cpu_seconds", "cpu_us_per_expense"}
    assert_summary(shape["per_s"], 1)
    assert shape["per_process_per_s"] == round(shape["per_s"]["median"] / 1)
    assert "workers" in shape["cpu_seconds"] and all(v > 0 for v in shape["cpu_seconds"].values())
    assert shape["cpu_us_per_expense"].keys() == shape["cpu_seconds"].keys()


def check_cache(result: Any, settings: Settings) -> None:
    assert result.keys() == {
        "params",
        "hit_rate_after_warmup",
        "throughput_per_s",
        "median_per_s",
        "down_over_healthy",
    }
    assert result["params"] == {
        "merchants": 300,
        "expenses": 3000,
        "users": 20,
        "zipf": 1.1,
        "batch": 250,
        "reps": 1,
        "l1_max_entries": settings.l1_max_entries,
        "workers": 3,
        "warmup": 0.25,
        "timed_expenses": 1000,
    }
    rates = result["hit_rate_after_warmup"]
    assert rates.keys() == {
        "workers", "lookups", "distinct_keys_first_seen", "l1", "l2", "l3", "cache", "l2_of_l1_misses",
        "against_ceiling",
    }  # fmt: skip
    assert isinstance(rates["lookups"], int) and rates["lookups"] > 0 and rates["workers"] == 3
    assert 0 < rates["distinct_keys_first_seen"] < rates["lookups"]
    ceiling = rates["against_ceiling"]
    assert ceiling.keys() == {"l1", "l2_of_l1_misses", "cache", "cache_misses_by_cause", "l1_misses_by_cause"}
    for tier in ("l1", "l2_of_l1_misses", "cache"):
        t = ceiling[tier]
        assert 0 < t["hit_rate"] <= t["ceiling"] <= 1  # no cache beats its first sightings
        assert t["of_ceiling"] == pytest.approx(t["hit_rate"] / t["ceiling"], abs=2e-4)
    assert ceiling["cache"]["hit_rate"] == pytest.approx(rates["cache"], abs=1e-4)
    assert ceiling["cache"]["ceiling"] == pytest.approx(
        1 - rates["distinct_keys_first_seen"] / rates["lookups"], abs=1e-4
    )
    # every cache miss (an L3 lookup) has a cause, first sightings among them
    assert sum(ceiling["cache_misses_by_cause"].values()) == pytest.approx(rates["l3"], abs=1e-3)
    assert ceiling["cache_misses_by_cause"]["first_sighting"] > 0
    # every L1 lookup ends in L1, L2 or L3 (shares rounded to 4 places)
    assert abs(rates["l1"] + rates["l2"] + rates["l3"] - 1) <= 2e-4
    assert abs(rates["cache"] - (rates["l1"] + rates["l2"])) <= 1e-4
    assert rates["l2"] > 0 and 0 < rates["l2_of_l1_misses"] <= 1  # two L1s share one L2
    speeds = result["throughput_per_s"]
    assert speeds.keys() == {"healthy", "down"} and all(len(v) == 1 and v[0] > 0 for v in speeds.values())
    assert result["median_per_s"] == {mode: v[0] for mode, v in speeds.items()}  # median of one rep
    medians = result["median_per_s"]
    assert result["down_over_healthy"] == pytest.approx(medians["down"] / medians["healthy"], rel=0.01)


def check_relay(result: Any, settings: Settings) -> None:
    assert result.keys() == {
        "relays",
        "processes",
        "burst",
        "relay_drain_per_s",
        "end_to_end_per_s",
        "trickle",
        "relay_added",
        "fleet",
        "end_to_end",
        "host_insert_commit_p50_ms",
    }
    assert (result["relays"], result["processes"], result["burst"]) == (1, 2, 300)  # a request per expense
    assert result["trickle"] == {"samples": 5, "rate_per_s": 50.0}
    assert result["relay_drain_per_s"] > 0 and result["end_to_end_per_s"] > 0
    for key in ("relay_added", "end_to_end"):  # both on the database's clock
        assert_percentiles(result[key])
    assert result["fleet"].keys() == {"p50_ms", "p95_ms", "p99_ms"}
    assert result["fleet"]["p50_ms"] <= result["fleet"]["p95_ms"] <= result["fleet"]["p99_ms"]
    assert result["host_insert_commit_p50_ms"] > 0


@pytest.mark.parametrize(
    ("args", "check"),
    [
        (["batch-size", "--expenses", "400", "--sizes", "50,200", "--reps", "1"], check_batch_size),
        (
            ["latency", "--rates", "40", "--samples", "20", "--polls", "10", "--wakeup", "off,on"],
            check_latency,
        ),
        # enough work that the workers' CPU is many clock ticks (10 ms each), however loaded the machine
        (["scaling", "--expenses", "3000", "--shapes", "1x2", "--reps", "1"], check_scaling),
        (
            [
                "cache",
                "--expenses",
                "3000",
                "--merchants",
                "300",
                "--reps",
                "1",
                "--batch",
                "250",
                "--workers",
                "3",
                "--warmup",
                "0.25",
                "--timed",
                "1000",
            ],
            check_cache,
        ),
        (["relay", "--expenses", "300", "--samples", "5", "--rate", "50"], check_relay),
    ],
    ids=["batch-size", "latency", "scaling", "cache", "relay"],
)
def test_other_scenarios_produce_their_tables(
    settings: Settings, tmp_path: Path, args: list[str], check: Callable[[Any, Settings], None]
) -> None:
    check(bench(settings, tmp_path, *args), settings)


def test_memory_reports_rss_of_each_worker_process_idle_and_during_runs(
    settings: Settings, tmp_path: Path
) -> None:
    args = ["--expenses", "1500", "--patterns", "1000", "--reps", "2", "--idle", "1", "--processes", "2"]
    result: Any = bench(settings, tmp_path, "memory", *args)
    params = result["params"]
    assert (params["expenses"], params["distinct_merchants"], params["merchant_patterns"]) == (
        1500,
        1500,
        1000,
    )
    assert params["merchant_entries_in_l2"] == 1000  # every pattern pre-filled
    assert (params["reps"], params["processes"], params["users"]) == (2, 2, 1000)
    pids = result["worker_pids"]
    assert len(pids) == len(set(pids)) == 2 and all(isinstance(pid, int) for pid in pids)
    idle = result["baseline_idle_mb"]["per_process"]
    assert set(idle) == {str(pid) for pid in pids} and all(mb > 10 for mb in idle.values())
    assert result["baseline_idle_mb"]["sum"] == pytest.approx(sum(idle.values()), abs=0.15)
    assert set(result["run_mb"]["per_process"]) == {str(pid) for pid in pids}
    for pid in pids:
        levels = result["run_mb"]["per_process"][str(pid)]
        assert set(levels) == {"start", "peak", "end"}
        for level in levels.values():
            assert_summary(level, 2)
        assert levels["peak"]["max"] >= max(levels["start"]["max"], levels["end"]["max"])
    assert_summary(result["per_s"], 2)
    assert isinstance(result["flat"], bool) and result["target_per_process_mb"] == 150.0
    peak = result["peak_per_process_mb"]
    assert peak == result["run_mb"]["max_per_process"]["peak"]["max"]  # the largest of any process and rep
    assert result["meets_target"] == (peak <= 150.0 and result["flat"])
    assert _cache_keys(settings) == []  # its private L2 keys are gone


def test_degraded_compares_healthy_and_down_runs_and_their_rows(settings: Settings, tmp_path: Path) -> None:
    args = ["--expenses", "2000", "--merchants", "300", "--reps", "1", "--processes", "1"]
    # 4 batches: a breaker opening after 2 failures opens in every down run
    result: Any = bench(msgspec.structs.replace(settings, breaker_fail_max=2), tmp_path, "degraded", *args)
    assert result["identical"] is True
    assert result["rows_differing_from_reference"] == {"healthy": [0], "down": [0]}
    assert result["breaker_opened"] == {"healthy": [False], "down": [True]}
    params = result["params"]
    assert (params["expenses"], params["merchants"], params["reps"], params["processes"]) == (2000, 300, 1, 1)
    assert params["down_url"] == "redis://127.0.0.1:1/0"
    lookups = result["cache_lookups"]
    assert lookups["healthy"]["l2_hit"] > 0 and "l2_error" not in lookups["healthy"]
    assert lookups["down"]["l2_error"] > 0 and "l2_hit" not in lookups["down"]
    for counts in lookups.values():  # L2 is asked what L1 missed, L3 what L2 missed or failed on
        l2_missed = counts.get("l2_miss", 0) + counts.get("l2_error", 0)
        assert counts["l1_hit"] + counts["l1_miss"] > 0
        assert counts.get("l2_hit", 0) + l2_missed == counts["l1_miss"]
        assert counts.get("l3_hit", 0) + counts.get("l3_miss", 0) == l2_missed
    runs = result["runs_per_s"]
    assert runs.keys() == {"healthy", "down"} and all(len(v) == 1 and v[0] > 0 for v in runs.values())
    for mode in ("healthy", "down"):
        assert_summary(result["per_s"][mode], 1)
        assert result["per_s"][mode]["median"] == runs[mode][0]
    ratio = result["per_s"]["down"]["median"] / result["per_s"]["healthy"]["median"]
    assert result["down_over_healthy"] == pytest.approx(ratio, rel=0.01)
    assert result["target_ratio"] == 0.5 and isinstance(result["meets_target"], bool)


def _cache_keys(settings: Settings) -> list[bytes]:
    client = redis.Redis.from_url(settings.cache_url)
    try:
        return list(client.scan_iter(f"{settings.cache_prefix}-bench-*", count=1000))
    finally:
        client.close()


def test_capacity_reports_costs_a_model_and_predictions_beside_measurements(
    settings: Settings, tmp_path: Path
) -> None:
    args = ["--expenses", "3000", "--reps", "1", "--batch-sizes", "50,100,200", "--targets", "10000,1000000"]
    result: Any = bench(settings, tmp_path, "capacity", *args)
    assert result.keys() == {
        "expenses", "reps", "machine_cores", "method", "per_expense", "per_expense_l1_off", "processes",
        "batch_sizes", "model",
    }  # fmt: skip
    assert (result["expenses"], result["reps"]) == (3000, 1)
    for costs in (result["per_expense"], result["per_expense_l1_off"]):
        assert_summary(costs["per_s"], 1)
        assert set(costs["cpu_us"]) == {
            "workers", "postgresql (bench db backends)", "redis broker (private)", "redis cache (private)",
        }  # fmt: skip
        assert (
            costs["cpu_us"]["workers"]["median"] > 0
            and costs["cpu_us"]["redis broker (private)"]["median"] > 0
        )
        assert costs["wal_bytes"]["median"] > 0 and costs["broker_commands"]["median"] > 0
        assert costs["machine_cpu_us"]["median"] > 0
        assert costs["net_bytes_per_batch"]["broker"]["median"] > 0
        assert costs["net_bytes_per_batch"]["postgresql"]["median"] > 0
    # L1 of one entry: the lookups reach the cache Redis
    assert result["per_expense_l1_off"]["cache_commands"]["median"] > 0
    assert result["per_expense_l1_off"]["net_bytes_per_batch"]["cache"]["median"] > 0
    two = result["processes"]["2"]
    assert two["predicted_per_s"] > 0 and two["per_s"]["median"] > 0 and isinstance(two["error_pct"], float)
    sizes = result["batch_sizes"]
    assert sizes["fit"]["sizes"] == [50, 200] and list(sizes["measured_per_s"]) == ["50", "100", "200"]
    assert list(sizes["checks"]) == ["100"]
    check = sizes["checks"]["100"]
    assert check["predicted_per_s"] > 0 and check["measured_per_s"]["median"] > 0
    model = result["model"]
    assert model["assumed"]["host_cores"] == result["machine_cores"]
    assert model["saturates_first"] in model["per_unit_expenses_per_s"]
    assert all(v > 0 for v in model["per_unit_expenses_per_s"].values())
    assert list(model["targets"]) == ["10000", "1000000"]
    small, big = model["targets"]["10000"], model["targets"]["1000000"]
    for unit in ("worker_host", "postgresql_primary", "broker_node (one queue)", "redis_cluster_node"):
        assert 1 <= small[unit] <= big[unit]
