"""``catfleet bench capacity``: the per-expense cost of each component, measured with real
``catfleet worker`` processes on a Redis broker, a capacity model built from it for target rates,
and the model's predictions checked against runs of the same bench (1 vs N processes, batch
sizes).

What is measured in each timed run (one ``_fleet_rate`` of ``expenses``):

- CPU (``cpu.window``): the worker process group, the bench database's PostgreSQL backends, the
  broker's and the cache's Redis (each a private ``redis-server`` of this run, so their CPU and
  ``INFO commandstats`` are this run's alone; the producer's enqueues are in the broker's figures).
- WAL bytes: ``pg_wal_lsn_diff`` of ``pg_current_wal_lsn()`` around the run. That LSN is the
  whole cluster's: another database written meanwhile on a shared server adds to it.
- Network bytes: ``ss -tinp`` ``bytes_sent + bytes_received`` of every established TCP socket of
  the worker processes (and of the bench's own to the broker: the producer) to the broker, the
  cache and PostgreSQL, diffed around the run. TCP payload, both directions, no headers.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import statistics
import subprocess
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import msgspec
import redis

from workers.bench import cpu
from workers.bench.console import private_redis
from workers.bench.env import BenchEnv, summarize
from workers.bench.scenarios import _cpu_window, _fleet_rate
from workers.config import env_name
from workers.settings import Settings

Say = Callable[[str], None]

BROKER_REDIS = "redis broker (private)"
CACHE_REDIS = "redis cache (private)"
#: An assumption: a host's network interface, for the network line of the model.
NIC_GBIT_S = 10.0
#: Each unit of the model runs at 70 % of its cores (or WAL limit): headroom for bursts.
UTILIZATION = 0.7


@contextlib.contextmanager
def private_servers(settings: Settings) -> Iterator[Settings]:
    """``settings`` with the broker and the cache on private ``redis-server`` processes of their own."""
    with private_redis() as broker, private_redis() as cache:
        yield msgspec.structs.replace(settings, broker_url=broker, cache_url=cache)


def _redis(url: str) -> tuple[redis.Redis, int, int]:
    """A client, the server's pid and its port."""
    client = redis.Redis.from_url(url)
    info = client.info("server")
    return client, int(info["process_id"]), int(info["tcp_port"])


def redis_commands(client: redis.Redis) -> tuple[int, int, float]:
    """Commands the server has run and the microseconds it spent running them (``INFO
    commandstats``: execution only, not its network I/O), less the ``INFO`` calls that read them;
    and its process CPU in microseconds (``INFO cpu``: getrusage, finer than /proc's 10 ms ticks)."""
    stats = client.info("commandstats")
    rows = [v for k, v in stats.items() if k != "cmdstat_info"]
    used = client.info("cpu")
    cpu_us = (float(used["used_cpu_sys"]) + float(used["used_cpu_user"])) * 1e6
    return sum(int(v["calls"]) for v in rows), sum(int(v["usec"]) for v in rows), cpu_us


_ADDR = re.compile(r":(\d+)$")
_PID = re.compile(r"pid=(\d+)")
_BYTES = re.compile(r"\bbytes_(?:sent|received):(\d+)")


def socket_bytes(pids: set[int], ports: dict[int, str], producer: int | None) -> dict[tuple[str, str], int]:
    """``(local, peer) -> bytes sent + received`` of each established TCP socket owned by one of
    ``pids`` whose peer port is in ``ports`` (and of ``producer``'s to the ``broker``)."""
    text = subprocess.run(
        ["ss", "-tinpH", "state", "established"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    out: dict[tuple[str, str], int] = {}
    key: tuple[str, str] | None = None
    for line in text.splitlines():
        if not line[:1].isspace():
            key = None
            parts = line.split()
            if len(parts) < 4:
                continue
            local, peer = parts[2], parts[3]
            m = _ADDR.search(peer)
            owners = {int(p) for p in _PID.findall(line)}
            if not m or int(m.group(1)) not in ports:
                continue
            name = ports[int(m.group(1))]
            if owners & pids or (producer in owners and name == "broker"):
                key = (name, f"{local}>{peer}")
        elif key is not None:
            out[key] = out.get(key, 0) + sum(int(b) for b in _BYTES.findall(line))
            key = None
    return out


def _bytes_delta(before: dict[tuple[str, str], int], after: dict[tuple[str, str], int]) -> dict[str, int]:
    totals: Counter[str] = Counter()
    for k, v in after.items():
        totals[k[0]] += v - before.get(k, 0)
    return dict(totals)


def machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy (``/proc/stat``: all but idle and iowait)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / cpu.TICKS


class Probe:
    """The servers a run is measured on: the broker and cache Redis, PostgreSQL's port."""

    def __init__(self, env: BenchEnv):
        self.env = env
        self.broker, self.broker_pid, broker_port = _redis(env.settings.broker_url)
        self.cache, self.cache_pid, cache_port = _redis(env.settings.cache_url)
        pg_port = urlsplit(env.settings.database_url).port or 5432
        self.ports = {broker_port: "broker", cache_port: "cache", pg_port: "postgresql"}

    def close(self) -> None:
        self.broker.close()
        self.cache.close()

    def _wal(self) -> str:
        return str(self.env.conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0])  # type: ignore[index]

    def run(self, ids: list[int], *, batch_size: int, worker_pgid: int) -> dict[str, Any]:
        """One timed run of ``ids``: its rate and every per-run figure."""
        env = self.env
        pids = {p for p, (name, _) in cpu.snapshot(worker_pgid=worker_pgid).items() if name == cpu.WORKERS}
        wal0, (b0, bu0, bc0), (c0, cu0, cc0) = (
            self._wal(),
            redis_commands(self.broker),
            redis_commands(self.cache),
        )
        net0 = socket_bytes(pids, self.ports, os.getpid())
        with _cpu_window(env, worker_pgid=worker_pgid) as used:
            busy0 = machine_busy_s()
            rate = _fleet_rate(env, ids, batch_size=batch_size)
            busy = machine_busy_s() - busy0
            net1 = socket_bytes(pids, self.ports, os.getpid())
        (b1, bu1, bc1), (c1, cu1, cc1) = redis_commands(self.broker), redis_commands(self.cache)
        wal = int(
            env.conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", (wal0,)).fetchone()[0]  # type: ignore[index]
        )
        return {
            "per_s": rate,
            "expenses": len(ids),
            "batch_size": batch_size,
            "cpu": {**used.seconds, BROKER_REDIS: (bc1 - bc0) / 1e6, CACHE_REDIS: (cc1 - cc0) / 1e6},
            "wal_bytes": wal,
            "machine_busy_s": busy,
            # INFO's own calls left out (redis_commands)
            "broker_commands": b1 - b0,
            "cache_commands": c1 - c0,
            "broker_exec_us": bu1 - bu0,
            "cache_exec_us": cu1 - cu0,
            "net_bytes": _bytes_delta(net0, net1),
        }


def costs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per expense (and per batch for bytes), median over ``runs`` with min and max."""
    n = runs[0]["expenses"]
    batches = math.ceil(n / runs[0]["batch_size"])

    def s(values: list[float]) -> dict[str, float]:
        return {k: round(v, 3) if k != "n" else v for k, v in summarize(values).items()}

    cpu_names = (cpu.WORKERS, cpu.POSTGRESQL, BROKER_REDIS, CACHE_REDIS)
    out: dict[str, Any] = {
        "cpu_us": {name: s([r["cpu"].get(name, 0.0) * 1e6 / n for r in runs]) for name in cpu_names},
        "wal_bytes": s([r["wal_bytes"] / n for r in runs]),
        # everything this machine ran meanwhile: the components, PostgreSQL's own background
        # processes (WAL writer, checkpointer), the kernel's loopback work, the bench, other users
        "machine_cpu_us": s([r["machine_busy_s"] * 1e6 / n for r in runs]),
        "broker_commands": s([r["broker_commands"] / n for r in runs]),
        "cache_commands": s([r["cache_commands"] / n for r in runs]),
        "net_bytes_per_batch": {
            peer: s([r["net_bytes"].get(peer, 0) / batches for r in runs])
            for peer in ("broker", "cache", "postgresql")
        },
    }
    # the time the commands took to execute (commandstats usec), beside the server's whole CPU
    for key in ("broker", "cache"):
        out[f"{key}_exec_us"] = s([r[f"{key}_exec_us"] / n for r in runs])
    return out


def per_core(c: dict[str, Any], cold: dict[str, Any], *, wal_bytes_s: float) -> dict[str, float]:
    """What one unit of each component does on this machine's cores, in expenses/s."""

    def rate(us: float) -> float:
        return 1e6 / us if us > 0 else math.inf

    out = {
        "worker_core": rate(c["cpu_us"][cpu.WORKERS]["median"]),
        "postgresql_core": rate(c["cpu_us"][cpu.POSTGRESQL]["median"]),
        "postgresql_primary_wal": wal_bytes_s / c["wal_bytes"]["median"]
        if c["wal_bytes"]["median"]
        else math.inf,
    }
    # one Redis node runs its commands on one core; the cache's load is the L1-off runs' (every
    # lookup a worker makes reaches L2: cold workers, or right after a rule change)
    out["broker_node"] = rate(c["cpu_us"][BROKER_REDIS]["median"])
    out["cache_node"] = rate(cold["cpu_us"][CACHE_REDIS]["median"])
    return {k: round(v, 1) for k, v in out.items()}


def model(
    c: dict[str, Any],
    cold: dict[str, Any],
    *,
    targets: list[int],
    host_cores: int,
    wal_bytes_s: float,
    batch_size: int,
) -> dict[str, Any]:
    """Units of each component a fleet needs for each target rate, and which saturates first."""
    unit = per_core(c, cold, wal_bytes_s=wal_bytes_s)
    # one unit of each: a worker host (host_cores at UTILIZATION), a PostgreSQL primary (host_cores
    # of CPU or its WAL, whichever is less), a Redis node (one core); one broker queue lives on one node
    units = {
        "worker_host": unit["worker_core"] * host_cores * UTILIZATION,
        "postgresql_primary": min(
            unit["postgresql_core"] * host_cores * UTILIZATION, unit["postgresql_primary_wal"]
        ),
        "broker_node (one queue)": unit["broker_node"] * UTILIZATION,
        "redis_cluster_node": unit["cache_node"] * UTILIZATION,
    }
    pg_limit = (
        "wal"
        if unit["postgresql_primary_wal"] < unit["postgresql_core"] * host_cores * UTILIZATION
        else "cpu"
    )
    first = min(units, key=lambda k: units[k])
    # the ones that do not grow by adding a unit: one categorizations table on one primary, one
    # broker queue per lane on one node
    single = {
        "postgresql_primary": units["postgresql_primary"],
        "broker_node (one queue)": units["broker_node (one queue)"],
    }
    ceiling = min(single, key=lambda k: single[k])
    per_batch = sum(v["median"] for k, v in c["net_bytes_per_batch"].items() if k != "cache")
    per_batch += cold["net_bytes_per_batch"]["cache"]["median"]
    out: dict[str, Any] = {
        "assumed": {
            "host_cores": host_cores,
            "utilization": UTILIZATION,
            "wal_bytes_per_s_per_primary": wal_bytes_s,
            "redis_node_cores": 1,
            "nic_gbit_s": NIC_GBIT_S,
            "batch_size": batch_size,
        },
        "per_core_expenses_per_s": unit,
        "per_unit_expenses_per_s": {k: round(v, 1) for k, v in units.items()},
        "postgresql_primary_limited_by": pg_limit,
        "saturates_first": first,
        "first_single_instance_ceiling": {"component": ceiling, "expenses_per_s": round(single[ceiling], 1)},
        "targets": {},
    }
    for target in targets:
        need = {k: math.ceil(target / v) if v > 0 and math.isfinite(v) else 0 for k, v in units.items()}
        wire = target / batch_size * per_batch * 8 / 1e9  # Gbit/s, every link of the fleet summed
        out["targets"][str(target)] = {
            **need,
            "broker_queues_per_lane": need["broker_node (one queue)"],
            "wal_mb_per_s": round(target * c["wal_bytes"]["median"] / 1e6, 1),
            "network_gbit_s_total": round(wire, 2),
            "network_of_one_nic": round(wire / NIC_GBIT_S, 3),  # the fleet's traffic over one assumed NIC
        }
    return out


def predict_processes(base: dict[str, Any], many: int, cores: int) -> float:
    """N processes from one: N x the one-process rate, capped by this machine's cores at the
    machine's whole busy CPU per expense of the one-process runs (workers, PostgreSQL, both Redis
    and the producer share these cores, and so does whatever else ran meanwhile)."""
    return min(many * base["per_s"]["median"], cores * 1e6 / base["machine_cpu_us"]["median"])


def fit_batches(rates: dict[int, float]) -> tuple[float, float]:
    """``1/rate = a + b/batch`` (a per-expense cost and a per-batch one) through the smallest and
    the largest batch size."""
    lo, hi = min(rates), max(rates)
    b = (1 / rates[lo] - 1 / rates[hi]) / (1 / lo - 1 / hi)
    return 1 / rates[hi] - b / hi, b


def _err(predicted: float, measured: float) -> float:
    return round((predicted - measured) / measured * 100, 1)


def capacity(
    env: BenchEnv,
    *,
    expenses: int,
    reps: int,
    processes: int,
    batch_sizes: list[int],
    targets: list[int],
    host_cores: int | None,
    wal_mb_s: float,
    say: Say,
) -> dict[str, Any]:
    cores = len(os.sched_getaffinity(0))
    host = host_cores or cores
    say(f"loading {expenses:,} expenses ...")
    ids = env.load(expenses)
    batch = env.settings.batch_size
    probe = Probe(env)
    try:
        shapes: dict[int, list[dict[str, Any]]] = {}
        for n in (1, processes):
            with env.workers(f"capacity-{n}p", processes=n) as proc:
                _fleet_rate(env, ids[: min(len(ids), 10 * batch)], batch_size=batch)  # warm-up
                shapes[n] = [probe.run(ids, batch_size=batch, worker_pgid=proc.pid) for _ in range(reps)]
            say(
                f"  {n} process(es), batch {batch}: {statistics.median(r['per_s'] for r in shapes[n]):,.0f}/s"
            )
        # L1 of one entry: every lookup goes to L2 (the cache's worst case)
        with env.workers("capacity-l1-off", processes=1, **{env_name("l1_max_entries"): "1"}) as proc:
            _fleet_rate(env, ids[: min(len(ids), 10 * batch)], batch_size=batch)
            cold_runs = [probe.run(ids, batch_size=batch, worker_pgid=proc.pid) for _ in range(reps)]
        say(f"  1 process, L1 off: {statistics.median(r['per_s'] for r in cold_runs):,.0f}/s")
        sizes: dict[int, list[dict[str, Any]]] = {}
        with env.workers("capacity-batches", processes=processes) as proc:
            for size in batch_sizes:
                _fleet_rate(env, ids[: min(len(ids), 4 * size)], batch_size=size)  # warm-up
                sizes[size] = [probe.run(ids, batch_size=size, worker_pgid=proc.pid) for _ in range(reps)]
                say(
                    f"  {processes} processes, batch {size}: {statistics.median(r['per_s'] for r in sizes[size]):,.0f}/s"
                )
    finally:
        probe.close()

    base = costs(shapes[1])
    base["per_s"] = summarize([r["per_s"] for r in shapes[1]])
    base["producer_us"] = round(
        statistics.median(r["cpu"].get(cpu.BENCH, 0.0) * 1e6 / r["expenses"] for r in shapes[1]), 1
    )
    cold = costs(cold_runs)
    cold["per_s"] = summarize([r["per_s"] for r in cold_runs])
    many = summarize([r["per_s"] for r in shapes[processes]])
    predicted = predict_processes(base, processes, cores)
    rates = {size: statistics.median(r["per_s"] for r in runs) for size, runs in sizes.items()}
    a, b = fit_batches(rates)
    fitted = (min(rates), max(rates))
    batch_checks = {
        str(size): {
            "predicted_per_s": round(1 / (a + b / size), 1),
            "measured_per_s": summarize([r["per_s"] for r in sizes[size]]),
            "error_pct": _err(1 / (a + b / size), rates[size]),
        }
        for size in rates
        if size not in fitted
    }
    result: dict[str, Any] = {
        "expenses": len(ids),
        "reps": reps,
        "machine_cores": cores,
        "method": {
            "cpu": "workers and bench db backends from /proc; each private redis-server from its INFO cpu",
            "wal": "pg_wal_lsn_diff of pg_current_wal_lsn() around each run (the whole cluster's WAL)",
            "redis_commands": "INFO commandstats diff of each private redis-server (its whole server: this run only)",
            "network": "ss -tinp bytes_sent+bytes_received of the workers' (and the producer's broker) TCP sockets",
        },
        "per_expense": {**base, "batch_size": batch},
        "per_expense_l1_off": cold,
        "processes": {
            "1": {"per_s": base["per_s"]},
            str(processes): {
                "per_s": many,
                "predicted_per_s": round(predicted, 1),
                "error_pct": _err(predicted, many["median"]),
                "cpu_us": costs(shapes[processes])["cpu_us"],
            },
        },
        "batch_sizes": {
            "processes": processes,
            "fit": {
                "sizes": list(fitted),
                "per_expense_us": round(a * 1e6, 2),
                "per_batch_us": round(b * 1e6, 1),
            },
            "measured_per_s": {str(k): summarize([r["per_s"] for r in v]) for k, v in sizes.items()},
            "checks": batch_checks,
        },
        "model": model(
            base, cold, targets=targets, host_cores=host, wal_bytes_s=wal_mb_s * 1e6, batch_size=batch
        ),
    }
    for line in render(result):
        say(line)
    return result


def render(r: dict[str, Any]) -> list[str]:
    """The report as text lines."""
    pe, m, cold = r["per_expense"], r["model"], r["per_expense_l1_off"]
    cu = pe["cpu_us"]
    lines = [
        f"per expense (batch {pe['batch_size']}, 1 process, median of {r['reps']}):",
        *(f"  cpu {k}: {v['median']} us ({v['min']}-{v['max']})" for k, v in cu.items()),
        f"  machine busy: {pe['machine_cpu_us']['median']} us ({pe['machine_cpu_us']['min']}-{pe['machine_cpu_us']['max']})",
        f"  wal: {pe['wal_bytes']['median']} bytes; broker commands {pe['broker_commands']['median']};"
        f" cache commands {pe['cache_commands']['median']}",
        "  network bytes per batch: "
        + ", ".join(f"{k} {v['median']:,.0f}" for k, v in pe["net_bytes_per_batch"].items()),
        f"  redis commands' exec us: broker {pe['broker_exec_us']['median']}, cache {pe['cache_exec_us']['median']};"
        f" L1 off: cache commands {cold['cache_commands']['median']}, cache redis cpu"
        f" {cold['cpu_us'][CACHE_REDIS]['median']} us (exec {cold['cache_exec_us']['median']}),"
        f" {cold['net_bytes_per_batch']['cache']['median']:,.0f} cache bytes per batch",
        "one unit (expenses/s): "
        + ", ".join(f"{k} {v:,.0f}" for k, v in m["per_unit_expenses_per_s"].items()),
        f"saturates first: {m['saturates_first']} (postgresql primary limited by {m['postgresql_primary_limited_by']});"
        f" first single-instance ceiling: {m['first_single_instance_ceiling']['component']}"
        f" at {m['first_single_instance_ceiling']['expenses_per_s']:,.0f}/s",
    ]
    for target, need in m["targets"].items():
        lines.append(f"  {int(target):,}/s: " + ", ".join(f"{k} {v}" for k, v in need.items()))
    for n, p in r["processes"].items():
        if "predicted_per_s" in p:
            lines.append(
                f"{n} processes: predicted {p['predicted_per_s']:,.0f}/s, measured {p['per_s']['median']:,.0f}/s"
                f" ({p['per_s']['min']:,.0f}-{p['per_s']['max']:,.0f}), error {p['error_pct']} %"
            )
    for size, chk in r["batch_sizes"]["checks"].items():
        lines.append(
            f"batch {size}: predicted {chk['predicted_per_s']:,.0f}/s, measured {chk['measured_per_s']['median']:,.0f}/s"
            f" ({chk['measured_per_s']['min']:,.0f}-{chk['measured_per_s']['max']:,.0f}), error {chk['error_pct']} %"
        )
    return lines
