"""What an operator does to the fleet's queues, once for the CLI (``catfleet queue``) and the
console: pause, resume, list. A pause is kept in the fleet's state until resumed (a restarted
worker reads it on boot) and audited (who, when)."""

from __future__ import annotations

import msgspec

from pipeline.errors import CatfleetError
from workers.backends.base import FLEET_QUEUES, Backend
from workers.fleet.state import PauseEntry, QueueAction


class QueueState(msgspec.Struct, kw_only=True):
    queue: str
    paused: PauseEntry | None


def check_queue(queue: str) -> str:
    if queue not in FLEET_QUEUES:
        raise CatfleetError(f"no such queue: {queue!r} (the fleet's queues: {', '.join(FLEET_QUEUES)})")
    return queue


def pause(backend: Backend, queue: str, operator: str) -> bool:
    """Pause ``queue`` fleet-wide: every worker process stops fetching from it within a beat and
    finishes what it holds. False: it already was paused (nothing done, nothing audited)."""
    state = backend.fleet_state()
    try:
        return state.pause(check_queue(queue), operator)
    finally:
        state.close()


def resume(backend: Backend, queue: str, operator: str) -> bool:
    state = backend.fleet_state()
    try:
        return state.resume(check_queue(queue), operator)
    finally:
        state.close()


def queue_states(backend: Backend) -> list[QueueState]:
    state = backend.fleet_state()
    try:
        paused = state.paused()
    finally:
        state.close()
    return [QueueState(queue=q, paused=paused.get(q)) for q in FLEET_QUEUES]


def queue_actions(backend: Backend, *, limit: int = 50) -> list[QueueAction]:
    state = backend.fleet_state()
    try:
        return state.actions(limit=limit)
    finally:
        state.close()
