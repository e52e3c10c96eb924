"""Explicit broker bootstrap from the settings: Redis by default, RabbitMQ for amqp:// URLs."""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.middleware import (
    AgeLimit,
    Callbacks,
    CurrentMessage,
    Middleware,
    Pipelines,
    ShutdownNotifications,
    TimeLimit,
)

from workers.encoder import MsgspecEncoder
from workers.middleware.maintenance import BrokerMaintenance
from workers.middleware.prometheus import FleetPrometheus
from workers.middleware.retries import SafeRetries
from workers.redis_broker import SafeRedisBroker
from workers.settings import Settings


def is_rabbitmq(settings: Settings) -> bool:
    return settings.broker_url.startswith(("amqp://", "amqps://"))


def build_broker(settings: Settings, *, extra_middleware: list[Middleware] | None = None) -> dramatiq.Broker:
    """A new broker with catfleet's middleware; also installs the msgspec encoder and sets it
    as Dramatiq's global broker (Dramatiq's CLI and actors look it up there)."""
    dramatiq.set_encoder(MsgspecEncoder())
    middleware: list[Middleware] = [
        # Dramatiq's per-actor metrics and the host's /metrics, /healthz, /readyz server (off: port 0).
        *([FleetPrometheus()] if settings.metrics_port else []),
        AgeLimit(),
        TimeLimit(time_limit=settings.time_limit_ms),
        ShutdownNotifications(),
        Callbacks(),
        Pipelines(),
        SafeRetries(
            max_retries=settings.max_retries,
            min_backoff=settings.min_backoff_ms,
            max_backoff=settings.max_backoff_ms,
        ),
        CurrentMessage(),
        BrokerMaintenance(interval_ms=settings.broker_maintenance_interval_ms),
        *(extra_middleware or []),
    ]
    broker: dramatiq.Broker
    if is_rabbitmq(settings):
        broker = RabbitmqBroker(url=settings.broker_url, confirm_delivery=True, middleware=middleware)
    else:
        broker = SafeRedisBroker(
            url=settings.broker_url,
            namespace=settings.broker_namespace,
            heartbeat_timeout=settings.broker_heartbeat_timeout_ms,
            maintenance_chance=settings.broker_maintenance_chance,
            middleware=middleware,
            wakeup=settings.worker_wakeup,
        )
    dramatiq.set_broker(broker)
    return broker
