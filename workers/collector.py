"""A Prometheus collector that reads the broker at scrape time: queue depth, delayed depth,
oldest message age and dead letters per queue, live worker processes, dead-letter replays and
purges. Every host exports the same fleet-wide values: aggregate them with ``max``."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from workers.backends.base import FLEET_QUEUES, Backend

log = logging.getLogger(__name__)


class BrokerCollector(Collector):
    def __init__(self, backend: Backend, queues: Sequence[str] = FLEET_QUEUES):
        self.backend = backend
        self.queues = queues

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        up = GaugeMetricFamily("catfleet_broker_up", "1 if the broker answered this scrape, else 0.")
        try:
            stats = self.backend.queue_stats(self.queues)
            seen = self.backend.workers_seen()
        except Exception as exc:  # a scrape must answer even when the broker does not
            log.warning("broker statistics unavailable: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        labels = ["queue"]
        ready = GaugeMetricFamily("catfleet_queue_messages", "Messages waiting in the queue.", labels=labels)
        delayed = GaugeMetricFamily(
            "catfleet_queue_delayed_messages", "Messages in the delay queue (retries, eta).", labels=labels
        )
        in_flight = GaugeMetricFamily(
            "catfleet_queue_in_flight_messages",
            "Messages fetched by a worker process and not yet acked (Redis and in-memory brokers).",
            labels=labels,
        )
        dead = GaugeMetricFamily(
            "catfleet_queue_dead_letters", "Messages in the dead-letter queue.", labels=labels
        )
        age = GaugeMetricFamily(
            "catfleet_queue_oldest_message_age_seconds",
            "Age of the next message to run (0 when the queue is empty; Redis broker only).",
            labels=labels,
        )
        replays = CounterMetricFamily(
            "catfleet_dead_letter_replays", "Dead letters replayed by the dead-letter tool.", labels=labels
        )
        purges = CounterMetricFamily(
            "catfleet_dead_letter_purges", "Dead letters purged by the dead-letter tool.", labels=labels
        )
        for s in stats:
            ready.add_metric([s.queue], s.ready)
            delayed.add_metric([s.queue], s.delayed)
            dead.add_metric([s.queue], s.dead)
            if s.in_flight is not None:
                in_flight.add_metric([s.queue], s.in_flight)
            replays.add_metric([s.queue], s.replayed)
            purges.add_metric([s.queue], s.purged)
            if s.oldest_age_s is not None or s.ready == 0:
                age.add_metric([s.queue], s.oldest_age_s or 0.0)
        yield from (ready, delayed, in_flight, dead, age, replays, purges)
        if seen is not None:
            workers = GaugeMetricFamily(
                "catfleet_broker_workers",
                "Broker clients with a fresh heartbeat: worker processes, and producers while they enqueue.",
            )
            workers.add_metric([], seen)
            yield workers
