"""The PostgreSQL floor of the throughput benchmark: bare PostgreSQL work per batch (read the
chunk by ``id = ANY``, upsert as many rows set-based; no queue, no matching), run in the
fleet's own shape: ``processes`` OS processes (spawned, so each has its own GIL, as a worker
process does) of ``threads`` threads each, one connection per thread, taking chunks of
``batch_size`` ids from one shared counter, as worker threads take messages from one queue.

Completion is heard by the bench's listener (the rows' NOTIFY after COMMIT), as for the fleet;
each process reports the pid and the threads that did the work, so the shape is observed, not
assumed."""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import msgspec

from workers.producer import chunked

READ = (
    "SELECT id, user_id, merchant_name, description, amount::float8, currency,"
    " transaction_date, transaction_time FROM expenses WHERE id = ANY(%s)"
)


class Shape(msgspec.Struct, frozen=True):
    processes: int
    threads: int
    batch_size: int


class FloorProcess(msgspec.Struct, frozen=True):
    """What one floor process did: its pid, its threads (and how many of them wrote), its chunks."""

    pid: int
    threads: int
    threads_wrote: int
    chunks: int
    largest_chunk: int


def _floor_process(
    url: str, chunks: list[list[int]], threads: int, cursor: Any, queue: Any, go: Any, leave: Any
) -> None:
    from pipeline.db import Database
    from pipeline.matcher import Decision
    from pipeline.stores import CategorizationStore, WriteMeta

    db = Database.connect(url, size=threads, wait=True)
    writer = CategorizationStore(db)
    decision = Decision(None, None, 0.0, "none", "none", {})
    meta = WriteMeta(ruleset_version=1)
    done: list[tuple[int, int]] = []  # (thread ident, chunk length)

    def work() -> None:
        while True:
            with cursor.get_lock():
                i = cursor.value
                cursor.value += 1
            if i >= len(chunks):
                return
            with db.connection() as conn:
                rows = conn.execute(READ, (chunks[i],)).fetchall()
            writer.upsert([(r[0], decision) for r in rows], meta)
            done.append((threading.get_ident(), len(chunks[i])))

    try:
        queue.put(("ready", os.getpid()))
        go.wait()
        pool = [threading.Thread(target=work) for _ in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        report = FloorProcess(
            pid=os.getpid(),
            threads=len(pool),
            threads_wrote=len({ident for ident, _ in done}),
            chunks=len(done),
            largest_chunk=max((n for _, n in done), default=0),
        )
        queue.put(("done", msgspec.json.encode(report)))
        leave.wait(60)  # the bench reads this process's and its backends' CPU first
    finally:
        db.close()


class FloorRun(msgspec.Struct):
    per_s: float
    shape: Shape  # as observed
    cpu_seconds: dict[str, float]


def run_floor(
    env: Any,
    ids: list[int],
    shape: Shape,
    *,
    cpu_window: Callable[[list[int]], Any],
    timeout: float = 1800.0,
) -> FloorRun:
    """One floor rep of ``ids`` (the results table reset first). ``cpu_window(pids)`` is a context
    manager that measures the CPU of the bench database's backends and of ``pids`` over its body:
    the timed part, from the start signal to the last row heard."""
    ctx = mp.get_context("spawn")  # the bench process has threads: never fork it
    chunks = list(chunked(ids, shape.batch_size))
    cursor = ctx.Value("l", 0)
    queue = ctx.Queue()
    go, leave = ctx.Event(), ctx.Event()
    env.reset_results()
    procs = [
        ctx.Process(
            target=_floor_process,
            args=(env.settings.database_url, chunks, shape.threads, cursor, queue, go, leave),
            daemon=True,
        )
        for _ in range(shape.processes)
    ]
    for p in procs:
        p.start()
    try:
        pids = [_expect(queue, "ready", procs, timeout=120) for _ in procs]
        with cpu_window(pids) as cpu:
            t0 = time.perf_counter()
            go.set()
            last = env.wait_rows(len(ids), timeout=timeout)
            reports = [
                msgspec.json.decode(_expect(queue, "done", procs, timeout=timeout), type=FloorProcess)
                for _ in procs
            ]
        leave.set()
        for p in procs:
            p.join(timeout=30)
    finally:
        leave.set()
        for p in procs:
            if p.is_alive():
                p.kill()
    observed = Shape(
        processes=len({r.pid for r in reports}),
        threads=min(r.threads for r in reports),
        batch_size=max(r.largest_chunk for r in reports),
    )
    return FloorRun(per_s=len(ids) / (last - t0), shape=observed, cpu_seconds=cpu.seconds)


def _expect(queue: Any, kind: str, procs: list[Any], *, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            got_kind, value = queue.get(timeout=0.5)
        except Exception:  # queue.Empty
            if any(p.exitcode not in (None, 0) for p in procs):
                raise RuntimeError("a floor process failed") from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"no {kind!r} from the floor processes after {timeout}s") from None
            continue
        if got_kind != kind:
            raise RuntimeError(f"floor process sent {got_kind!r}, expected {kind!r}")
        return value
