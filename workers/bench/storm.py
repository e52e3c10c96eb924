"""``catfleet bench storm``: kill -9 a random worker process every few seconds while the fleet
works through a backlog, with nothing above ``catfleet worker`` to restart it. Its supervisor
must replace each process; every expense must get exactly one row and nothing may be
dead-lettered. The baseline is a calm run of the same backlog in the same invocation."""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from workers.bench.env import BenchEnv
from workers.config import env_name
from workers.producer import Producer
from workers.supervisor.child import WORKER_NAME

Say = Callable[[str], None]


def _stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, name) of ``pid``, or None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2 :].split()[1]), stat[stat.index("(") + 1 : stat.rindex(")")]


def worker_pids(supervisor: int) -> list[int]:
    """The live worker processes of the ``catfleet worker`` whose supervisor is ``supervisor``
    (its children named ``WORKER_NAME``; the metrics server is not one)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (got := _stat(int(entry))) and got[0] == supervisor and got[1] == WORKER_NAME:
            pids.append(int(entry))
    return sorted(pids)


def _counts(env: BenchEnv) -> tuple[int, int]:
    row = env.conn.execute("SELECT count(*), count(DISTINCT expense_id) FROM categorizations").fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def _dead_letters(env: BenchEnv) -> int:
    from workers.backends import backend_for

    backend = backend_for(env.settings)
    try:
        return sum(q.dead for q in backend.queue_stats())
    finally:
        backend.close()


def _wait_all(env: BenchEnv, total: int, timeout: float) -> float | None:
    """Monotonic time at which every expense had its row; None after ``timeout``."""
    try:
        env.wait_rows(total, timeout=timeout)  # the listener: no polling query on the server
    except RuntimeError:
        return None
    return time.monotonic()


def _respawned(supervisor: int, killed: int, processes: int, timeout: float = 10.0) -> float | None:
    """Seconds until the supervisor has ``processes`` worker processes again, ``killed`` not among them."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        pids = worker_pids(supervisor)
        if len(pids) >= processes and killed not in pids:
            return time.monotonic() - t0
        time.sleep(0.005)
    return None


def storm(
    env: BenchEnv,
    *,
    expenses: int,
    processes: int,
    interval: float,
    duration: float,
    restart_limit: int,
    drain_timeout: float,
    say: Say,
) -> dict[str, Any]:
    say(f"loading {expenses:,} expenses ...")
    ids = env.load(expenses)
    total, batch = len(ids), env.settings.batch_size
    overrides = {env_name("worker_restart_limit"): str(restart_limit)}

    say("calm run ...")
    env.reset_results()
    with env.workers("storm-calm", processes=processes, **overrides):
        t0 = time.monotonic()
        Producer(env.app.broker, batch_size=batch).enqueue(ids)
        done = _wait_all(env, total, drain_timeout)
        calm_s = (done or time.monotonic()) - t0
    calm_rate = total / calm_s
    say(f"  calm: {total:,} expenses in {calm_s:.1f} s = {calm_rate:,.0f}/s")

    say(f"storm: kill -9 a random worker process every {interval:g} s for up to {duration:g} s ...")
    env.reset_results()
    rng = random.Random()
    kills: list[dict[str, Any]] = []
    with env.workers("storm", processes=processes, **overrides) as proc:
        t0 = time.monotonic()
        Producer(env.app.broker, batch_size=batch).enqueue(ids)
        while time.monotonic() - t0 < duration and env.count() < total:
            next_kill = t0 + (len(kills) + 1) * interval
            while time.monotonic() < next_kill and env.count() < total:
                time.sleep(0.05)
            pids = worker_pids(proc.pid)
            if not pids or env.count() >= total or time.monotonic() - t0 >= duration:
                break
            victim = rng.choice(pids)
            os.kill(victim, signal.SIGKILL)
            at = time.monotonic()
            kills.append(
                {
                    "at_s": round(at - t0, 2),
                    "pid": victim,
                    "rows": env.count(),
                    "respawn_s": _round(_respawned(proc.pid, victim, processes)),
                }
            )
            say(
                f"  kill {len(kills)} at {at - t0:.1f} s: pid {victim}, respawned in {kills[-1]['respawn_s']} s"
            )
        last_kill = t0 + kills[-1]["at_s"] if kills else t0
        done = _wait_all(env, total, drain_timeout)
        storm_s = (done or time.monotonic()) - t0
        supervisor_alive = proc.poll() is None
    rows, distinct = _counts(env)
    log = (env.log_dir / "storm.log").read_text(errors="replace").splitlines()
    events = [json.loads(line).get("event") for line in log if line.startswith("{") and '"event"' in line]
    respawns = [k["respawn_s"] for k in kills if k["respawn_s"] is not None]
    result = {
        "method": (
            f"{total:,} expenses enqueued at once in batches of {batch}, {processes} worker processes; calm run,"
            f" then the same backlog while a random worker process gets SIGKILL every {interval:g} s for"
            f" {duration:g} s (or until done); nothing restarts catfleet worker; restart limit {restart_limit}"
            f" (kills are deaths: the default 10 per 60 s would end the storm as a crash loop); broker heartbeat"
            f" timeout {env.settings.broker_heartbeat_timeout_ms} ms, maintenance every"
            f" {env.settings.broker_maintenance_interval_ms} ms"
        ),
        "expenses": total,
        "processes": processes,
        "kills": len(kills),
        "kill_log": kills,
        "restarts_logged": events.count("worker_replaced"),
        "crash_loop": "crash_loop" in events,
        "supervisor_alive": supervisor_alive,
        "respawn_s_max": round(max(respawns), 3) if respawns else None,
        "lost": total - distinct,
        "duplicate_rows": rows - distinct,
        "dead_letters": _dead_letters(env),
        "storm_s": round(storm_s, 1),
        "kills_ended_by": "duration" if kills and kills[-1]["at_s"] + interval >= duration else "all done",
        "last_kill_to_done_s": round(done - last_kill, 2) if done else None,
        "done_within_s": drain_timeout if done is None else None,
        "calm_per_s": round(calm_rate),
        "storm_per_s": round(total / storm_s),
        "storm_over_calm": round(total / storm_s / calm_rate, 3),
        "targets": {"lost": 0, "duplicate_rows": 0, "dead_letters": 0, "last_kill_to_done_s": 20},
    }
    say(
        f"  storm: {len(kills)} kills, lost {result['lost']}, duplicates {result['duplicate_rows']}, dead letters"
        f" {result['dead_letters']}, last kill to done {result['last_kill_to_done_s']} s,"
        f" {result['storm_per_s']:,}/s vs calm {result['calm_per_s']:,}/s"
    )
    return result


def _round(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)
