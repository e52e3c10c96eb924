"""``catfleet bench SCENARIO``: builds its own database and broker namespace on the configured
servers, runs real worker processes, prints a table and writes a JSON file."""

from __future__ import annotations

import argparse
import json
import platform
import time
from typing import Any

from pipeline.settings import Settings
from workers.bench import scenarios
from workers.bench.env import bench_env, write_results

SCENARIOS = ("throughput", "latency", "scaling", "batch-size", "profile")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("bench", help="run a benchmark scenario against the configured servers")
    p.add_argument("scenario", choices=SCENARIOS)
    p.add_argument("--expenses", type=int, default=200_000, help="expenses in the data set")
    p.add_argument(
        "--naive", type=int, default=10_000, help="throughput: expenses sent through the naive fleet"
    )
    p.add_argument("--reps", type=int, default=3, help="repetitions per figure (median, min, max)")
    p.add_argument("--processes", type=int, default=2, help="worker processes")
    p.add_argument("--sizes", default="50,200,500,1000", help="batch-size: sizes to try")
    p.add_argument("--rates", default="10,200", help="latency: messages per second")
    p.add_argument("--seconds", type=float, default=10.0, help="latency: seconds per rate")
    p.add_argument("--polls", default="1000,5", help="latency: idle poll caps (ms) to compare")
    p.add_argument("--shapes", default="1x4,2x4,2x8", help="scaling: processes x threads")
    p.add_argument("--json", dest="json_path", help="where to write the JSON result")
    p.set_defaults(func=run)


def run(settings: Settings, args: argparse.Namespace) -> int:
    def say(line: str) -> None:
        print(line, flush=True)

    started = time.time()
    with bench_env(settings) as env:
        result: dict[str, Any]
        if args.scenario == "throughput":
            result = scenarios.throughput(
                env,
                expenses=args.expenses,
                naive=args.naive,
                reps=args.reps,
                processes=args.processes,
                say=say,
            )
        elif args.scenario == "batch-size":
            sizes = [int(s) for s in args.sizes.split(",")]
            result = scenarios.batch_size(
                env, expenses=args.expenses, sizes=sizes, reps=args.reps, processes=args.processes, say=say
            )
        elif args.scenario == "latency":
            result = scenarios.latency(
                env,
                rates=[float(r) for r in args.rates.split(",")],
                seconds=args.seconds,
                polls=[int(p) for p in args.polls.split(",")],
                processes=args.processes,
                say=say,
            )
        elif args.scenario == "scaling":
            shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]
            result = scenarios.scaling(
                env, expenses=args.expenses, shapes=[(p, t) for p, t in shapes], reps=args.reps, say=say
            )
        else:
            result = scenarios.profile(env, expenses=args.expenses, say=say)
    doc = {
        "scenario": args.scenario,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "seconds": round(time.time() - started, 1),
        "machine": {"cpus": _cpus(), "python": platform.python_version(), "platform": platform.platform()},
        "settings": {"batch_size": settings.batch_size, "worker_threads": settings.worker_threads},
        "result": result,
    }
    path = write_results(args.scenario, doc, args.json_path)
    if args.scenario != "profile":
        print(json.dumps(result, indent=2, default=str))
    print(f"results: {path}")
    return 0


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))
