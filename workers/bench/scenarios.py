"""The benchmark scenarios. Each runs its baseline in the same run; figures are medians of
``reps`` repetitions with min and max."""

from __future__ import annotations

import cProfile
import io
import json
import pstats
import statistics
import time
from collections.abc import Callable
from typing import Any

import dramatiq
import msgspec

from workers.bench import cpu
from workers.bench.env import BenchEnv, Written, batch_log_level, percentile, summarize
from workers.bench.floor import FloorRun, Shape, run_floor
from workers.bench.naive import NAIVE_ACTOR, NAIVE_QUEUE
from workers.config import env_name
from workers.harness.processes import own_records
from workers.producer import Producer, chunked
from workers.runtime import Runtime

Say = Callable[[str], None]


#: How the naive fleet boots (``catfleet worker --boot``).
NAIVE_BOOT = "workers.bench.naive:broker"
#: The log level the logging-cost row compares the bench's level with.
QUIET_LOG_LEVEL = "WARNING"


def _fleet_rate(env: BenchEnv, ids: list[int], *, batch_size: int) -> float:
    """Enqueue ``ids`` in batches; expenses per second until the last row's commit was heard."""
    env.reset_results()
    t0 = time.perf_counter()
    Producer(env.app.broker, batch_size=batch_size).enqueue(ids)
    return len(ids) / (env.wait_rows(len(ids)) - t0)


def _cpu_window(env: BenchEnv, **kwargs: Any) -> Any:
    return cpu.window(env.conn, exclude=env.control_pids(), **kwargs)


def fleet_shape(env: BenchEnv, proc: Any, batch_size: int) -> Shape:
    """The shape of a running ``catfleet worker`` as its processes describe themselves (their fleet
    records: one per worker process, each with its thread count), with the batch size sent to it."""
    from workers.backends import backend_for

    backend = backend_for(env.settings)
    state = backend.fleet_state()
    try:
        records = own_records(state, proc)
    finally:
        state.close()
        backend.close()
    threads = {r.threads for r in records}
    if len(threads) != 1:
        raise RuntimeError(f"worker processes disagree on their thread count: {sorted(threads)}")
    return Shape(processes=len(records), threads=threads.pop(), batch_size=batch_size)


def throughput_plan(reps: int, log_level: str) -> list[tuple[str, str]]:
    """The order of the runs: per rep the floor, the fleet at both log levels (which goes first
    alternates), the naive fleet. The floor and the fleet alternate: never all of one kind first."""
    levels = [log_level, QUIET_LOG_LEVEL if log_level != QUIET_LOG_LEVEL else "INFO"]
    plan: list[tuple[str, str]] = []
    for rep in range(reps):
        plan.append(("floor", ""))
        plan.extend(("fleet", level) for level in (levels if rep % 2 == 0 else levels[::-1]))
        plan.append(("naive", log_level))
    return plan


def _fleet_rep(env: BenchEnv, ids: list[int], shape: Shape, level: str, label: str) -> dict[str, Any]:
    batch = shape.batch_size
    extra = {env_name("log_level"): level}
    with env.workers(label, processes=shape.processes, threads=shape.threads, **extra) as proc:
        seen = fleet_shape(env, proc, batch)
        _fleet_rate(env, ids[: min(len(ids), 20 * batch)], batch_size=batch)  # warm-up
        with _cpu_window(env, worker_pgid=proc.pid) as used:
            rate = _fleet_rate(env, ids, batch_size=batch)
    return {"per_s": rate, "shape": seen, "cpu": used.seconds}


def _send_naive(env: BenchEnv, ids: list[int]) -> None:
    messages: list[dramatiq.Message[Any]] = [
        dramatiq.Message(queue_name=NAIVE_QUEUE, actor_name=NAIVE_ACTOR, args=(i,), kwargs={}, options={})
        for i in ids
    ]
    Producer(env.app.broker, batch_size=1).send(messages)


def _naive_rep(
    env: BenchEnv, ids: list[int], shape: Shape, level: str, seconds: float, label: str
) -> dict[str, Any]:
    """The naive fleet for ``seconds`` (the fleet's duration on ``ids``), on a backlog sent
    beforehand (so the bench's enqueueing does not share the window): expenses committed in it.
    It writes one row per statement, so its window runs with the completion trigger off (a NOTIFY
    per row would slow every commit it makes): rows are counted at both ends, with a 500 ms poll
    in between that only checks the backlog lasts."""
    extra = {env_name("log_level"): level}
    try:
        with env.workers(
            label, processes=shape.processes, threads=shape.threads, boot=NAIVE_BOOT, **extra
        ) as proc:
            seen = fleet_shape(env, proc, 1)
            probe = ids[: min(len(ids), 200)]
            env.reset_results()
            t = time.perf_counter()
            _send_naive(env, probe)  # warm-up, and a first guess of the rate
            guess = len(probe) / (env.wait_rows(len(probe)) - t)
            # a backlog that outlasts the window: 3 x the guess, plus what runs during the sending
            todo = ids[: min(len(ids), int(3 * guess * (seconds + 2)) + len(probe))]
            env.set_notify(False)
            env.reset_results()
            _send_naive(env, todo)
            with _cpu_window(env, worker_pgid=proc.pid) as used:
                t0 = time.perf_counter()
                before = env.committed_rows()
                deadline = t0 + seconds
                while (left := deadline - time.perf_counter()) > 0:
                    time.sleep(min(0.5, left))
                    if left > 0.5 and env.committed_rows() >= len(todo):
                        raise RuntimeError("the naive fleet's backlog ran out before its window ended")
                done = env.committed_rows() - before
    finally:
        env.set_notify(True)
    env.flush_queues()
    if done >= len(todo) - before:
        raise RuntimeError("the naive fleet's backlog ran out before its window ended")
    return {"per_s": done / seconds, "expenses": done, "seconds": seconds, "shape": seen, "cpu": used.seconds}


def _ratios(a: list[float], b: list[float]) -> dict[str, float]:
    """Per-rep ratios a/b of alternated runs, summarized (median, min, max)."""
    return {
        k: round(v, 3) if k != "n" else v
        for k, v in summarize([x / y for x, y in zip(a, b, strict=True)]).items()
    }


def _median_us(runs: list[dict[str, float]], expenses: list[int]) -> dict[str, float]:
    """The median over reps of each component's CPU, in microseconds per expense."""
    names = sorted({k for r in runs for k in r})
    return {
        k: round(statistics.median(r.get(k, 0.0) * 1e6 / n for r, n in zip(runs, expenses, strict=True)), 1)
        for k in names
    }


def throughput(env: BenchEnv, *, expenses: int, reps: int, processes: int, say: Say) -> dict[str, Any]:
    """The fleet, the PostgreSQL floor in the fleet's own shape, the plain naive fleet for the
    fleet's duration, and the fleet at a quieter log level (the logging cost), alternated."""
    say(f"loading {expenses:,} expenses ...")
    ids = env.load(expenses)
    level = env.settings.log_level
    shape = Shape(
        processes=processes, threads=env.settings.worker_threads, batch_size=env.settings.batch_size
    )
    plan = throughput_plan(reps, level)
    quiet = next(lv for kind, lv in plan if kind == "fleet" and lv != level)
    fleet: dict[str, list[dict[str, Any]]] = {level: [], quiet: []}
    floor: list[FloorRun] = []
    naive: list[dict[str, Any]] = []
    for i, (kind, lv) in enumerate(plan):
        rep = sum(1 for k, _ in plan[: i + 1] if k == "floor")
        if kind == "floor":
            floor.append(
                run_floor(env, ids, shape, cpu_window=lambda pids: _cpu_window(env, others={"floor": pids}))
            )
            say(f"  rep {rep}: floor {floor[-1].per_s:,.0f} rows/s")
        elif kind == "fleet":
            fleet[lv].append(_fleet_rep(env, ids, shape, lv, f"fleet-{lv.lower()}-{rep}"))
            say(f"  rep {rep}: fleet at {lv} {fleet[lv][-1]['per_s']:,.0f} expenses/s")
        else:
            seconds = len(ids) / fleet[level][-1]["per_s"]
            naive.append(_naive_rep(env, ids, shape, lv, seconds, f"naive-{rep}"))
            say(
                f"  rep {rep}: naive {naive[-1]['per_s']:,.0f} expenses/s ({naive[-1]['expenses']:,} in {seconds:.1f} s)"
            )
    main = [r["per_s"] for r in fleet[level]]
    floors = [r.per_s for r in floor]
    naives = [r["per_s"] for r in naive]
    quiets = [r["per_s"] for r in fleet[quiet]]
    return {
        "expenses": len(ids),
        "log_level": level,
        "plan": [f"{kind} {lv}".strip() for kind, lv in plan],
        "shape": {
            "fleet": msgspec.structs.asdict(fleet[level][0]["shape"]),
            "floor": msgspec.structs.asdict(floor[0].shape),
            "naive": msgspec.structs.asdict(naive[0]["shape"]),
        },
        "fleet_per_s": summarize(main),
        "floor_per_s": summarize(floors),
        "naive_per_s": summarize(naives),
        "naive_expenses": [r["expenses"] for r in naive],
        "naive_seconds": [round(r["seconds"], 2) for r in naive],
        "fleet_vs_floor": _ratios(main, floors),
        "fleet_vs_naive": _ratios(main, naives),
        "logging": {
            "levels": [level, quiet],
            f"fleet_{quiet.lower()}_per_s": summarize(quiets),
            f"{quiet.lower()}_over_{level.lower()}": _ratios(quiets, main),
        },
        "cpu_us_per_expense": {
            "fleet": _median_us([r["cpu"] for r in fleet[level]], [len(ids)] * len(main)),
            "floor": _median_us([r.cpu_seconds for r in floor], [len(ids)] * len(floors)),
            "naive": _median_us([r["cpu"] for r in naive], [max(1, r["expenses"]) for r in naive]),
        },
    }


def batch_size(
    env: BenchEnv, *, expenses: int, sizes: list[int], reps: int, processes: int, say: Say
) -> dict[str, Any]:
    say(f"loading {expenses:,} expenses ...")
    ids = env.load(expenses)
    out: dict[str, Any] = {"expenses": len(ids), "processes": processes, "sizes": {}}
    for size in sizes:
        name = f"batch-{size}"
        with env.workers(name, processes=processes, **{env_name("log_level"): batch_log_level(env)}):
            _fleet_rate(env, ids[: min(len(ids), 10 * size)], batch_size=size)  # warm-up
            rates = []
            for _ in range(reps):
                rates.append(_fleet_rate(env, ids, batch_size=size))
        durations = sorted(
            float(doc["duration_ms"])
            for line in (env.log_dir / f"{name}.log").read_text().splitlines()
            if '"event":"batch"' in line
            for doc in [json.loads(line)]
            if doc.get("size") == size
        )
        out["sizes"][size] = {
            "per_s": summarize(rates),
            "batch_ms_p50": round(percentile(durations, 0.5), 1),
            "batch_ms_p95": round(percentile(durations, 0.95), 1),
        }
        say(
            f"  batch {size}: {out['sizes'][size]['per_s']['median']:,.0f}/s, p95 {out['sizes'][size]['batch_ms_p95']} ms"
        )
    return out


def after_commit_latencies_ms(events: list[Written], sent: dict[int, float]) -> list[float]:
    """Enqueue to commit, in ms, ascending: for each single-expense write the listener heard (its
    NOTIFY, delivered after COMMIT), its receipt time minus the time the expense was sent."""
    out = []
    for e in events:
        if e.rows != 1 or e.lo != e.hi:
            raise RuntimeError(f"latency samples are single-expense writes, got {e.rows} rows")
        out.append((e.at - sent[e.lo]) * 1000)
    return sorted(out)


LATENCY_QUANTILES = {"p50_ms": 0.5, "p95_ms": 0.95, "p99_ms": 0.99, "p99_9_ms": 0.999}


def latency_summary(lat: list[float]) -> dict[str, float]:
    return {
        "messages": len(lat),
        **{k: round(percentile(lat, q), 2) for k, q in LATENCY_QUANTILES.items()},
        "max_ms": round(lat[-1], 2),
    }


def _steady(env: BenchEnv, ids: list[int], rate: float) -> dict[str, float]:
    """One single-expense message per id at ``rate`` per second; the clock starts before each
    enqueue and stops when the listener hears the committed row."""
    env.reset_results()
    broker = env.app.broker
    sent: dict[int, float] = {}
    start = time.perf_counter()
    for i, expense_id in enumerate(ids):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        sent[expense_id] = time.perf_counter()
        broker.enqueue(Producer.batch_message([expense_id]))
    env.wait_rows(len(ids))
    return latency_summary(after_commit_latencies_ms(env.listener.events(), sent))


def latency(
    env: BenchEnv,
    *,
    rates: list[float],
    samples: int,
    polls: list[int],
    wakeups: list[bool],
    processes: int,
    say: Say,
) -> dict[str, Any]:
    """Each (idle poll, wake-up) configuration in turn, on fresh workers, ``samples`` messages at
    each rate."""
    ids = env.load(samples)[:samples]
    if len(ids) < samples:
        raise RuntimeError(f"only {len(ids)} live expenses for {samples} samples")
    out: dict[str, Any] = {"samples": samples, "processes": processes, "log_level": env.settings.log_level,
                           "clock": "enqueue -> NOTIFY of the committed row heard by a listener",
                           "configs": {}}  # fmt: skip
    for poll in polls:
        for wakeup in wakeups:
            label = f"idle_poll_{poll}ms_wakeup_{'on' if wakeup else 'off'}"
            out["configs"][label] = {}
            overrides = {env_name("worker_idle_poll_ms"): str(poll), env_name("worker_wakeup"): str(wakeup)}
            with env.workers(label, processes=processes, **overrides):
                _steady(env, ids[: min(len(ids), 20)], 20.0)  # warm-up (first batches, rule set), not counted
                time.sleep(1.5)  # let the consumers reach their idle back-off, as in production
                for rate in rates:
                    got = _steady(env, ids, rate)
                    out["configs"][label][f"{rate:g}/s"] = got
                    say(
                        f"  {label} at {rate:g}/s ({got['messages']} samples): p50 {got['p50_ms']}"
                        f" p95 {got['p95_ms']} p99 {got['p99_ms']} p99.9 {got['p99_9_ms']} ms"
                    )
    return out


def scaling(
    env: BenchEnv, *, expenses: int, shapes: list[tuple[int, int]], reps: int, say: Say
) -> dict[str, Any]:
    ids = env.load(expenses)
    out: dict[str, Any] = {"expenses": len(ids), "shapes": {}}
    batch = env.settings.batch_size
    for processes, threads in shapes:
        label = f"{processes}p x {threads}t"
        with env.workers(label.replace(" ", ""), processes=processes, threads=threads) as proc:
            _fleet_rate(env, ids[: min(len(ids), 10 * batch)], batch_size=batch)
            with _cpu_window(env, worker_pgid=proc.pid) as used:
                rates = [_fleet_rate(env, ids, batch_size=batch) for _ in range(reps)]
        s = summarize(rates)
        out["shapes"][label] = {
            "per_s": s,
            "per_process_per_s": round(s["median"] / processes),
            "cpu_seconds": used.seconds,
            "cpu_us_per_expense": cpu.per_expense_us(used.seconds, len(ids) * reps),
        }
        say(
            f"  {label}: {s['median']:,.0f}/s ({s['median'] / processes:,.0f}/s per process), cpu {used.seconds}"
        )
    return out


def profile(env: BenchEnv, *, expenses: int, say: Say) -> dict[str, Any]:
    """The worker's hot path in-process under cProfile: where a batch spends its time."""
    ids = env.load(expenses)
    runtime = Runtime(env.settings, wait=True)
    batch = env.settings.batch_size
    runtime.categorizer.categorize(ids[:batch])  # warm the caches
    env.reset_results()
    t0 = time.perf_counter()
    for chunk in chunked(ids, batch):
        runtime.categorizer.categorize(chunk)
    elapsed = time.perf_counter() - t0  # timed without the profiler
    env.reset_results()
    profiler = cProfile.Profile()
    profiler.enable()
    for chunk in chunked(ids, batch):
        runtime.categorizer.categorize(chunk)
    profiler.disable()
    runtime.close()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(25)
    say(text.getvalue())
    return {
        "expenses": len(ids),
        "single_thread_per_s": round(len(ids) / elapsed),
        "profile_top": text.getvalue(),
    }
