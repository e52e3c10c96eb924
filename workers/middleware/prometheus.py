"""Dramatiq's own Prometheus middleware (per-actor latency, counts, errors, retries, dead
letters), multiprocess-safe, with catfleet's exposition server in place of Dramatiq's
metrics-only one: one server per host answers ``/metrics``, ``/healthz`` and ``/readyz``.

Its ``queue_name`` / ``actor_name`` labels are bounded: Dramatiq takes them from the message as
sent, so every made-up actor or queue name a producer sends would be a new time series (a
cardinality attack on the metrics store). Names the broker does not have are labelled
``UNKNOWN_LABEL`` instead.

Dramatiq reads ``dramatiq_prom_db`` / ``dramatiq_prom_host`` / ``dramatiq_prom_port`` when its
module is imported; ``catfleet worker`` maps them from the settings before it execs Dramatiq.
This module never imports ``prometheus_client`` itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dramatiq
from dramatiq.middleware.prometheus import Prometheus

#: The one label value of every actor or queue name the broker does not declare.
UNKNOWN_LABEL = "unknown"


class _Labelled:
    """The message as Dramatiq's hooks read it, with bounded ``queue_name`` and ``actor_name``."""

    __slots__ = ("_message", "actor_name", "queue_name")

    def __init__(self, message: Any, queue_name: str, actor_name: str):
        self._message = message
        self.queue_name = queue_name
        self.actor_name = actor_name

    def __getattr__(self, name: str) -> Any:
        return getattr(self._message, name)


def bounded(broker: dramatiq.Broker, message: Any) -> _Labelled:
    """``message`` with label values the broker knows: a declared queue (or its delay queue) and
    a declared actor, else ``UNKNOWN_LABEL``."""
    queue = message.queue_name
    actor = message.actor_name
    queues = broker.get_declared_queues()
    known_queue = isinstance(queue, str) and (queue in queues or queue.removesuffix(".DQ") in queues)
    queue_label = queue if known_queue else UNKNOWN_LABEL
    actor_label = actor if isinstance(actor, str) and actor in broker.actors else UNKNOWN_LABEL
    return _Labelled(message, queue_label, actor_label)


class FleetPrometheus(Prometheus):
    """Dramatiq's ``Prometheus`` middleware with bounded labels; its fork (the HTTP server) is ours."""

    def after_process_boot(self, broker: Any) -> None:
        super().after_process_boot(broker)
        from workers import metrics  # after the parent class has set the directory

        metrics.WORKER_PROCESSES.set(1)

    @property
    def forks(self) -> list[Callable[[], int]]:
        from workers.exposition import serve

        return [serve]

    def after_nack(self, broker: Any, message: Any) -> None:
        super().after_nack(broker, bounded(broker, message))

    def after_enqueue(self, broker: Any, message: Any, delay: Any) -> None:
        super().after_enqueue(broker, bounded(broker, message), delay)

    def before_delay_message(self, broker: Any, message: Any) -> None:
        super().before_delay_message(broker, bounded(broker, message))

    def before_process_message(self, broker: Any, message: Any) -> None:
        super().before_process_message(broker, bounded(broker, message))

    def after_process_message(
        self, broker: Any, message: Any, *, result: Any = None, exception: BaseException | None = None
    ) -> None:
        super().after_process_message(broker, bounded(broker, message), result=result, exception=exception)

    after_skip_message = after_process_message
