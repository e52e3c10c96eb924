"""``catfleet bench SCENARIO``: builds its own database and broker namespace on the configured
servers, runs real worker processes, prints a table and writes a JSON file. The scenarios live in
``workers.bench``; this module is their command line."""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from workers.settings import Settings

#: The log levels ``--log-level`` takes; every bench defaults to production's (the settings' default).
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
#: ``bench cache``'s default stream: over a million key lookups after the warm-up (about 2.3 per
#: expense after the per-batch de-duplication, see the README's *Cache benchmark*).
CACHE_EXPENSES = 600_000
PRODUCTION_LOG_LEVEL: str = Settings().log_level

if TYPE_CHECKING:  # the scenarios import psycopg and redis
    from workers.bench.env import BenchEnv


def _say(line: str) -> None:
    print(line, flush=True)


class OneLineParser(argparse.ArgumentParser):
    """Bad input: one line on stderr (``catfleet bench SCENARIO: error: ...``), exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def limits_list(text: str) -> list[int]:
    """``0,8000`` -> [0, 8000]: whole numbers >= 0, comma separated."""
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected whole numbers >= 0, comma separated, got {text!r}"
        ) from None
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected whole numbers >= 0, comma separated, got {text!r}")
    return values


def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text!r}")
    return value


def _csv(kind: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    def parse(text: str) -> list[Any]:
        return [kind(x) for x in text.split(",")]

    return parse


def _on_off(text: str) -> bool:
    if text not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"expected on or off, got {text!r}")
    return text == "on"


def _shapes(text: str) -> list[tuple[int, int]]:
    try:
        shapes = [(int(p), int(t)) for p, t in (s.split("x") for s in text.split(","))]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected PROCESSESxTHREADS,..., got {text!r}") from None
    if any(p < 1 or t < 1 for p, t in shapes):
        raise argparse.ArgumentTypeError(f"processes and threads must be positive, got {text!r}")
    return shapes


def register(sub: Any) -> None:
    parser = sub.add_parser("bench", help="benchmarks on the configured servers (a throwaway database)")
    scenarios_sub = parser.add_subparsers(dest="scenario", required=True, parser_class=OneLineParser)
    count, number = _positive(int), _positive(float)

    def scenario(
        name: str, help: str, *, expenses: int = 200_000, reps: bool = True
    ) -> argparse.ArgumentParser:
        p = scenarios_sub.add_parser(name, help=help)
        p.add_argument("--expenses", type=count, default=expenses, help="expenses in the data set")
        if reps:
            p.add_argument("--reps", type=count, default=3, help="repetitions per figure (median, min, max)")
        p.add_argument("--processes", type=count, default=2, help="worker processes")
        p.add_argument(
            "--log-level",
            choices=LOG_LEVELS,
            default=PRODUCTION_LOG_LEVEL,
            help="log level of the workers (default: production's, %(default)s)",
        )
        p.add_argument("--json", dest="json_path", help="where to write the JSON result")
        p.set_defaults(func=run)
        return p

    scenario(
        "throughput",
        "the fleet vs the PostgreSQL floor in its shape vs the plain naive fleet, and the logging cost",
    )
    p = scenario("batch-size", "expenses/s and p95 batch latency per batch size", expenses=100_000)
    p.add_argument("--sizes", type=_csv(count), default=[50, 200, 500, 1000])
    p = scenario("latency", "enqueue-to-commit (after COMMIT) latency at steady rates", reps=False)
    p.add_argument("--rates", type=_csv(number), default=[10.0, 200.0], help="messages per second")
    p.add_argument("--samples", type=count, default=2000, help="messages (latency samples) per rate")
    p.add_argument("--polls", type=_csv(count), default=[1000], help="idle poll caps (ms) to compare")
    p.add_argument(
        "--wakeup",
        dest="wakeups",
        metavar="WAKEUP",
        type=_csv(_on_off),
        default=[True],
        help="consumer wake-up settings to compare: on, off or off,on",
    )
    p = scenario("scaling", "processes x threads on the same load, with CPU per component", expenses=100_000)
    p.add_argument("--shapes", type=_shapes, default=[(1, 4), (2, 4), (2, 8)], help="e.g. 1x4,2x4")
    scenario("profile", "the worker's hot path in-process under cProfile", expenses=20_000, reps=False)
    p = scenario(
        "cache",
        "pattern-cache hit rate per tier against its first-sighting ceiling (Zipf), throughput L2 healthy vs down",
        expenses=CACHE_EXPENSES,
    )
    p.add_argument("--merchants", type=count, default=20_000, help="distinct merchants")
    p.add_argument("--users", type=count, default=20)
    p.add_argument("--zipf", type=number, default=1.1, help="Zipf exponent of the merchant stream")
    p.add_argument("--batch", type=count, default=500, help="expenses per batch")
    p.add_argument("--workers", type=count, default=4, help="simulated worker processes (own L1, shared L2)")
    p.add_argument("--warmup", type=_fraction, default=0.2, help="share of the stream before counting")
    p.add_argument("--timed", type=count, default=20_000, help="expenses per timed run (L2 healthy vs down)")
    p = scenario(
        "relay", "outbox -> relay -> workers: burst throughput and added latency", expenses=50_000, reps=False
    )
    p.add_argument("--relays", type=_positive(int), default=1, help="relay processes")
    p.add_argument(
        "--samples", type=_positive(int), default=200, help="single-expense transactions for latency"
    )
    p.add_argument("--rate", type=_positive(float), default=20.0, help="their rate per second")

    _memory_and_degraded(scenario)
    _capacity(scenario)
    p = scenario(
        "storm", "kill -9 a random worker process every few seconds: nothing lost, calm vs storm", reps=False
    )
    p.add_argument("--interval", type=_positive(float), default=3.0, help="seconds between kills")
    p.add_argument(
        "--duration",
        type=_positive(float),
        default=60.0,
        help="seconds of kills (they stop once all is done)",
    )
    p.add_argument(
        "--restart-limit",
        type=_positive(int),
        default=1000,
        help="CATFLEET_WORKER_RESTART_LIMIT of the fleet",
    )
    p.add_argument(
        "--drain-timeout", type=_positive(float), default=300.0, help="longest wait for every row (s)"
    )

    p = scenarios_sub.add_parser(
        "quality", help="learn from the earlier months' labels, categorize the later months, score each band"
    )
    p.add_argument("--data", type=Path, required=True, help="labelled CSV: date, merchant, amount, label")
    p.add_argument("--mode", choices=("holdout", "gap", "online"), default="holdout")
    p.add_argument(
        "--split-month",
        metavar="YYYY-MM",
        help="holdout: first test month (default: the latest months holding about 25 %% of the rows)",
    )
    p.add_argument("--train-months", type=int, help="gap: calendar months learned from, from the first")
    p.add_argument("--gap-months", type=int, default=0, help="gap: months left out after them")
    for role in ("date", "merchant", "amount", "label", "description", "mcc"):
        p.add_argument(f"--{role}-column", metavar="NAME", help=f"header of the {role} column")
    p.add_argument("--date-format", metavar="STRPTIME", help="e.g. %%d/%%m/%%Y (default: ISO)")
    p.add_argument("--currency", default="GBP", help="currency of the expenses loaded")
    p.add_argument("--json", action="store_true", help="the report as one JSON object")
    p.set_defaults(func=run_quality)

    p = scenarios_sub.add_parser(
        "lanes", help="interactive latency alone vs during a bulk backfill, and the backfill's throughput"
    )
    p.add_argument("--backfill", type=count, default=100_000, help="expenses of the bulk backfill")
    p.add_argument("--rate", type=number, default=10.0, help="interactive expenses per second")
    p.add_argument("--samples", type=count, default=150, help="interactive samples alone")
    p.add_argument("--reps", type=count, default=1, help="repetitions (median, min, max)")
    p.add_argument("--processes", type=count, default=2, help="worker processes")
    p.add_argument("--threads", type=count, default=4, help="threads per process")
    p.add_argument(
        "--bulk-limits",
        type=limits_list,
        default=[0],
        metavar="N[,N...]",
        help="bulk lane limits (expenses/s, 0: none) to alternate, workers restarted for each (default 0)",
    )
    p.set_defaults(func=run_lanes)

    p = scenarios_sub.add_parser(
        "console", help="console pages timed with N dead letters and M worker records; broker commands/s"
    )
    p.add_argument("--letters", type=count, default=100_000, help="dead letters")
    p.add_argument(
        "--broker", choices=("redis", "rabbitmq"), default="redis",
        help="a private redis-server, or a private vhost on the local RabbitMQ (rabbitmqctl)",
    )  # fmt: skip
    p.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672/", help="the RabbitMQ to use")
    p.add_argument("--workers", type=count, default=20, help="worker process records (with heartbeats)")
    p.add_argument("--reps", type=count, default=15, help="requests per page after the first")
    p.add_argument("--watch", type=number, default=10.0, help="seconds the broker's commands are counted")
    p.add_argument("--json", action="store_true", help="the report as one JSON object")
    p.set_defaults(func=run_console)


def _memory_and_degraded(scenario: Callable[..., argparse.ArgumentParser]) -> None:
    p = scenario(
        "memory",
        "worker RSS with 1M distinct merchants through and 1M merchant patterns cached vs idle after boot",
        expenses=1_000_000,
    )
    p.set_defaults(reps=2)
    p.add_argument(
        "--patterns", type=_positive(int), default=1_000_000, help="global merchant patterns (in L2 too)"
    )
    p.add_argument("--users", type=_positive(int), default=1_000)
    p.add_argument("--idle", type=_positive(float), default=5.0, help="seconds of idle baseline after boot")
    p.add_argument("--interval", type=_positive(float), default=1.0, help="seconds between RSS samples")
    p = scenario(
        "degraded", "end-to-end throughput, pattern cache healthy vs down (L2 unreachable)", expenses=100_000
    )
    p.add_argument("--merchants", type=_positive(int), default=50_000, help="distinct merchants")
    p.add_argument("--users", type=_positive(int), default=20)
    p.add_argument("--zipf", type=_positive(float), default=1.1, help="Zipf exponent of the merchant stream")


def _sizes(text: str) -> list[int]:
    """Batch sizes for ``bench capacity``: at least three distinct positive whole numbers (the
    smallest and the largest fit the model, the others check it)."""
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        sizes = []
    if len(set(sizes)) < 3 or any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(
            f"expected at least three distinct positive batch sizes, comma separated, got {text!r}"
        )
    return sorted(set(sizes))


def _capacity(scenario: Callable[..., argparse.ArgumentParser]) -> None:
    p = scenario(
        "capacity",
        "per-expense cost of each component, a capacity model for target rates, its predictions vs measurements",
        expenses=20_000,
    )
    p.add_argument(
        "--batch-sizes", type=_sizes, default=[50, 200, 500, 1000],
        help="batch sizes (>= 3): the smallest and largest fit the model, the others check it",
    )  # fmt: skip
    p.add_argument(
        "--targets",
        type=_csv(_positive(int)),
        default=[10_000, 100_000, 1_000_000],
        help="expenses/s to size for",
    )
    p.add_argument(
        "--host-cores", type=_positive(int), help="cores of a host in the model (default: this machine's)"
    )
    p.add_argument(
        "--wal-mb-s", type=_positive(float), default=100.0,
        help="WAL MB/s a PostgreSQL primary sustains (an assumption, default %(default)s)",
    )  # fmt: skip


def _scenarios() -> dict[str, Callable[..., dict[str, Any]]]:
    from workers.bench import cache, capacity, degraded, memory, relay, scenarios, storm

    return {
        "throughput": scenarios.throughput,
        "batch-size": scenarios.batch_size,
        "latency": scenarios.latency,
        "scaling": scenarios.scaling,
        "profile": scenarios.profile,
        "cache": cache.cache,
        "relay": relay.relay,
        "memory": memory.memory,
        "degraded": degraded.degraded,
        "storm": storm.storm,
        "capacity": capacity.capacity,
    }


def _run_scenario(env: BenchEnv, args: argparse.Namespace) -> dict[str, Any]:
    """The scenario's function with each of its keyword parameters taken from the option of the
    same name (a parameter no option sets keeps its default)."""
    scenario = _scenarios()[args.scenario]
    names = [n for n in inspect.signature(scenario).parameters if n not in ("env", "say")]
    return scenario(env, say=_say, **{n: getattr(args, n) for n in names if hasattr(args, n)})


def run_quality(settings: Settings, args: argparse.Namespace) -> int:
    """Runs the learning path and the Categorizer in-process on its own throwaway database."""
    import msgspec

    from workers.bench.quality import Columns, format_report, run_quality_bench

    if not args.data.is_file():
        raise SystemExit(f"catfleet bench quality: no such file: {args.data}")
    roles = ("date", "merchant", "amount", "label", "description", "mcc")
    columns = Columns(**{r: getattr(args, f"{r}_column") for r in roles}, date_format=args.date_format)
    try:
        report = run_quality_bench(
            settings,
            args.data,
            mode=args.mode,
            split_month=args.split_month,
            train_months=args.train_months,
            gap_months=args.gap_months,
            columns=columns,
            currency=args.currency,
        )
    except ValueError as exc:
        raise SystemExit(f"catfleet bench quality: {exc}") from None
    print(msgspec.json.encode(report).decode() if args.json else format_report(report))
    return 0


def run_lanes(settings: Settings, args: argparse.Namespace) -> int:
    """A throwaway database and namespace, real ``catfleet worker`` processes."""
    from workers.bench import lanes

    reports = lanes.run(
        settings,
        backfill=args.backfill,
        rate=args.rate,
        samples=args.samples,
        reps=args.reps,
        processes=args.processes,
        threads=args.threads,
        bulk_limits=args.bulk_limits,
    )
    for report in reports:
        print(report.summary())
    return 0


def run_console(settings: Settings, args: argparse.Namespace) -> int:
    """A private redis-server and a throwaway database; a real ``catfleet console`` timed."""
    import msgspec

    from workers.bench import console

    with tempfile.TemporaryDirectory(prefix="catfleet-bench-console-") as tmp:
        report = console.run(
            settings,
            letters=args.letters,
            processes=args.workers,
            reps=args.reps,
            watch_s=args.watch,
            log=Path(tmp) / "console.log",
            broker=args.broker,
            amqp_url=args.amqp_url,
        )
    print(msgspec.json.encode(report).decode() if args.json else console.render(report))
    return 0


def run(settings: Settings, args: argparse.Namespace) -> int:
    from workers.bench.env import bench_env, write_results

    started = time.time()
    with contextlib.ExitStack() as stack:
        if args.scenario == "capacity":  # broker and cache on private redis-servers: their own figures
            from workers.bench.capacity import private_servers

            settings = stack.enter_context(private_servers(settings))
        env = stack.enter_context(bench_env(settings, log_level=args.log_level))
        result = _run_scenario(env, args)
    doc = {
        "scenario": args.scenario,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "seconds": round(time.time() - started, 1),
        "machine": {
            "cpus": len(os.sched_getaffinity(0)),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "settings": {
            "batch_size": settings.batch_size,
            "worker_threads": settings.worker_threads,
            "log_level": args.log_level,
        },
        "result": result,
    }
    path = write_results(args.scenario, doc, args.json_path)
    if args.scenario != "profile":
        print(json.dumps(result, indent=2, default=str))
    print(f"results: {path}")
    return 0
