"""The one place that builds the fleet: settings -> backend -> the ordered middleware list ->
broker -> actors and the per-process runtime. Built once at the edge."""

from __future__ import annotations

from typing import Any

import dramatiq
import msgspec
from dramatiq.middleware import (
    AgeLimit,
    Callbacks,
    CurrentMessage,
    Middleware,
    Pipelines,
    ShutdownNotifications,
    TimeLimit,
)

from workers.actors import declare_actors
from workers.backends import backend_for
from workers.backends.base import Backend
from workers.encoder import MsgspecEncoder
from workers.failures import FailureLog
from workers.limits import FleetLimits
from workers.middleware.deliveries import DeliveryLimit
from workers.middleware.failures import RecordFailures
from workers.middleware.presence import FleetPresence
from workers.middleware.prometheus import FleetPrometheus
from workers.middleware.retries import SafeRetries
from workers.runtime import RuntimeHolder
from workers.settings import Settings


class App(msgspec.Struct, kw_only=True):
    settings: Settings
    backend: Backend
    broker: dramatiq.Broker
    runtime: RuntimeHolder
    actors: dict[str, dramatiq.Actor[Any, Any]]

    @property
    def failures(self) -> FailureLog:
        return self.backend.failures

    def close(self) -> None:
        admission = getattr(self.broker, "admission", None)
        if admission is not None:
            admission.close()
        self.backend.close()


def fleet_middleware(settings: Settings, backend: Backend, holder: RuntimeHolder) -> list[Middleware]:
    """Every middleware of a fleet broker, in order. Dramatiq calls ``before_*`` hooks in this
    order and ``after_*`` hooks in reverse, so ``RecordFailures`` (before ``SafeRetries``) sees
    each failure after the retry decision, as it stands."""
    return [
        # Dramatiq's per-actor metrics and the host's /metrics, /healthz, /readyz server (off: port 0).
        *([FleetPrometheus()] if settings.metrics_port else []),
        AgeLimit(),
        TimeLimit(time_limit=settings.time_limit_ms),
        ShutdownNotifications(),
        Callbacks(),
        Pipelines(),
        RecordFailures(backend.failures),
        SafeRetries(
            max_retries=settings.max_retries,
            min_backoff=settings.min_backoff_ms,
            max_backoff=settings.max_backoff_ms,
        ),
        CurrentMessage(),
        *backend.middleware(),
        holder,
        FleetPresence(backend.fleet_state(), beat_ms=settings.fleet_beat_ms, describe=holder.describe),
        DeliveryLimit(backend.deliveries, backend.failures, max_deliveries=settings.max_deliveries),
    ]


def build_app(settings: Settings, *, runtime: RuntimeHolder | None = None) -> App:
    """The fleet's broker with its middleware and actors; the msgspec encoder is installed and the
    broker set as Dramatiq's global one (Dramatiq's CLI and actors look it up there).
    ``runtime``: the per-process resources the actors use (default: opened from the settings)."""
    dramatiq.set_encoder(MsgspecEncoder())
    backend = backend_for(settings)
    holder = runtime or RuntimeHolder(settings)
    broker = backend.build_broker(fleet_middleware(settings, backend, holder))
    if hasattr(broker, "admission"):  # the Redis and RabbitMQ consumers apply the fleet's rate limits
        broker.admission = FleetLimits.from_settings(settings)
    actors = declare_actors(broker, holder)
    return App(settings=settings, backend=backend, broker=broker, runtime=holder, actors=actors)
