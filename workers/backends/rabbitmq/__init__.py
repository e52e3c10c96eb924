"""The RabbitMQ backend: Dramatiq's RabbitMQ broker with publisher confirms; the failure log and
delivery counter in PostgreSQL; dead letters in ``<queue>.XQ``; statistics from queue declares.
Classic or quorum queues (``CATFLEET_RABBITMQ_QUEUE_TYPE``, ``queues``); a broker URL may name
several nodes of a cluster (``urls``), tried in turn by every connection."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import dramatiq
import pika
from dramatiq.middleware import Middleware

from pipeline.settings import KEEPALIVE_COUNT, KEEPALIVE_INTERVAL_S
from workers.backends.base import FLEET_QUEUES, Backend, Check, QueueStats
from workers.backends.rabbitmq.broker import FleetRabbitmqBroker
from workers.backends.rabbitmq.clusterdlq import ClusterDeadLetterStore
from workers.backends.rabbitmq.deadletters import RabbitmqDeadLetterStore
from workers.backends.rabbitmq.fleetstate import PostgresFleetState
from workers.backends.rabbitmq.letterindex import RabbitmqLetterIndex
from workers.backends.rabbitmq.queues import QueueMismatch
from workers.backends.rabbitmq.records import PostgresDeliveryCounter, PostgresFailureLog
from workers.backends.rabbitmq.urls import node_urls
from workers.dlq.base import AuditLog
from workers.failures import LazyDatabase
from workers.settings import Settings

#: Seconds the health check waits for RabbitMQ.
CHECK_TIMEOUT_S = 2


def fail_fast_url(url: str, *, keepalive_s: int, user_timeout_ms: int) -> str:
    """``url`` with pika's ``tcp_options`` (keepalive probes after ``keepalive_s`` idle seconds,
    every second, 3 of them; ``TCP_USER_TIMEOUT``), as for every PostgreSQL and Redis connection;
    a ``tcp_options`` the URL already has is kept."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(k == "tcp_options" for k, _ in query):
        return url
    options = {
        "TCP_KEEPIDLE": keepalive_s,
        "TCP_KEEPINTVL": KEEPALIVE_INTERVAL_S,
        "TCP_KEEPCNT": KEEPALIVE_COUNT,
        "TCP_USER_TIMEOUT": user_timeout_ms,
    }
    return urlunsplit(parts._replace(query=urlencode([*query, ("tcp_options", repr(options))])))


class RabbitmqBackend(Backend):
    kind = "rabbitmq"

    def __init__(self, settings: Settings):
        super().__init__(settings)
        #: One URL per node of the broker URL (``urls.node_urls``), each with the fail-fast options.
        self.urls = [
            fail_fast_url(
                u, keepalive_s=settings.tcp_keepalive_s, user_timeout_ms=settings.tcp_user_timeout_ms
            )
            for u in node_urls(settings.broker_url)
        ]
        #: The URL of a single node; with several, Dramatiq's form (``;`` separated).
        self.url = ";".join(self.urls)
        self.database = LazyDatabase(settings.database_url)
        self._failures = PostgresFailureLog(self.database)
        #: The dead-letter index of this broker's vhost (one vhost for all the nodes).
        self.letter_index = RabbitmqLetterIndex(self.database, pika.URLParameters(self.urls[0]).virtual_host)
        self._deliveries = PostgresDeliveryCounter(self.database)
        self._stats_broker: FleetRabbitmqBroker | None = None
        self._lock = threading.Lock()

    @property
    def failures(self) -> PostgresFailureLog:
        return self._failures

    @property
    def deliveries(self) -> PostgresDeliveryCounter:
        return self._deliveries

    def _make_broker(self, middleware: list[Middleware]) -> dramatiq.Broker:
        return FleetRabbitmqBroker(
            url=self.urls,
            confirm_delivery=True,
            middleware=middleware,
            failure_log=self._failures,
            dead_letter_index=self.letter_index,
            max_message_bytes=self.settings.max_message_bytes,
            **self._queue_options(),
        )

    def _queue_options(self) -> dict[str, Any]:
        return {
            "queue_type": self.settings.rabbitmq_queue_type,
            "delivery_limit": self.settings.max_deliveries,
        }

    def dead_letters(
        self, audit: AuditLog, *, queues: Sequence[str] = FLEET_QUEUES
    ) -> RabbitmqDeadLetterStore:
        """``queues``' dead letters (AMQP cannot list queues), paged from the dead-letter index."""
        index = self.letter_index
        if len(self.urls) == 1 and self.settings.rabbitmq_queue_type == "classic":
            return RabbitmqDeadLetterStore(
                self.url, queues, failures=self._failures, audit=audit, index=index
            )
        return ClusterDeadLetterStore(
            self.urls, queues, failures=self._failures, audit=audit, index=index, **self._queue_options()
        )

    def fleet_state(self) -> PostgresFleetState:
        """In PostgreSQL (AMQP has nowhere to keep records), this broker's vhost's own."""
        vhost = pika.URLParameters(self.urls[0]).virtual_host  # one vhost for all the nodes
        return PostgresFleetState(
            self.database, vhost=vhost, ttl_ms=self.settings.broker_heartbeat_timeout_ms
        )

    def queue_stats(self, queues: Sequence[str] = FLEET_QUEUES) -> list[QueueStats]:
        """Message counts of each queue, its delay and its dead-letter queue (declares them, as
        the workers would). Unacked messages and ages are not exposed over AMQP."""
        broker = self._broker or self._statistics_broker()
        assert isinstance(broker, FleetRabbitmqBroker)
        out = []
        for q in queues:
            ready, delayed, dead = broker.get_queue_message_counts(q)
            out.append(
                QueueStats(
                    queue=q, ready=ready, delayed=delayed, in_flight=None, dead=dead, oldest_age_s=None
                )
            )
        return out

    def _statistics_broker(self) -> FleetRabbitmqBroker:
        with self._lock:
            if self._stats_broker is None:
                self._stats_broker = FleetRabbitmqBroker(
                    url=self.urls, confirm_delivery=True, middleware=[], **self._queue_options()
                )
            return self._stats_broker

    @classmethod
    def connection_errors(cls) -> tuple[type[BaseException], ...]:
        import pika.exceptions

        errors = (pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError)
        return (*super().connection_errors(), *errors)

    @classmethod
    def quiet_connect_logs(cls) -> None:
        import logging

        logging.getLogger("pika").setLevel(logging.CRITICAL)

    @contextmanager
    def scratch(self, name: str) -> Iterator[Settings]:
        """The vhost ``name``, made (never reused: ``add_vhost`` fails if it exists) and deleted
        with the local ``rabbitmqctl``. AMQP cannot make vhosts: without a local rabbitmqctl, or
        for a RabbitMQ on another host, this refuses."""
        import shutil
        import subprocess
        import urllib.parse

        import msgspec

        from pipeline.errors import CatfleetError

        url = urllib.parse.urlsplit(self.settings.broker_url)
        local = (url.hostname or "localhost") in ("127.0.0.1", "localhost", "::1")
        if shutil.which("rabbitmqctl") is None or not local:
            raise CatfleetError(
                "a private RabbitMQ vhost needs the local rabbitmqctl, and there is none for this"
                " broker: use a redis:// broker"
            )

        def ctl(*args: str) -> None:
            done = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=120)
            if done.returncode != 0:
                detail = " ".join((done.stderr or done.stdout).split())[:200]
                raise CatfleetError(f"rabbitmqctl {args[0]} {name}: {detail}")

        ctl("add_vhost", name)
        try:
            user = urllib.parse.unquote(url.username or "guest")
            ctl("set_permissions", "-p", name, user, ".*", ".*", ".*")
            own = urllib.parse.urlunsplit(url._replace(path="/" + urllib.parse.quote(name, safe="")))
            yield msgspec.structs.replace(self.settings, broker_url=own)
        finally:
            ctl("delete_vhost", name)

    def check(self) -> Check:
        try:
            nodes = [pika.URLParameters(u) for u in self.urls]
            for params in nodes:
                params.socket_timeout = params.blocked_connection_timeout = CHECK_TIMEOUT_S
            pika.BlockingConnection(nodes).close()  # any node that answers
        except Exception as exc:
            return Check.failed(exc)
        return Check(ok=True)

    def flush(self, queues: Sequence[str] = FLEET_QUEUES) -> None:
        broker = self._broker or self._statistics_broker()
        for q in queues:
            broker.flush(q)

    def close(self) -> None:
        super().close()
        if self._stats_broker is not None:
            self._stats_broker.close()
        self.database.close()


__all__ = [
    "ClusterDeadLetterStore",
    "PostgresFailureLog",
    "QueueMismatch",
    "RabbitmqBackend",
    "RabbitmqDeadLetterStore",
]
