"""``catfleet relay``: moves committed categorization requests from the outbox table to the
broker. At least once: claim pending rows (``FOR UPDATE SKIP LOCKED``, so relays share the
work), enqueue them as batch messages, mark them sent, commit. A relay that dies before the
commit leaves its rows pending and they are sent again; the workers' idempotent upsert makes
the repeat harmless. Woken by LISTEN/NOTIFY, with a slow poll as a safety net."""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from typing import Any

import dramatiq
import psycopg
from prometheus_client import Counter, Gauge, Histogram

from pipeline import outbox
from pipeline.db import translate_errors
from pipeline.errors import BrokerUnavailable, CatfleetError, DatabaseUnavailable
from workers.producer import Producer, chunked

log = logging.getLogger("catfleet.relay")

#: The channel the outbox table's trigger notifies on commit (migration 0003).
NOTIFY_CHANNEL = "catfleet_outbox"
#: How often the backlog gauges are refreshed and sent rows pruned (s).
BACKLOG_EVERY_S = 1.0
PRUNE_EVERY_S = 60.0
#: Longest pause after a failure (s); the first is 0.1 s, doubling, jittered.
MAX_BACKOFF_S = 5.0

REQUESTS_SENT = Counter("catfleet_relay_requests_sent", "Outbox requests enqueued and marked sent")
MESSAGES_SENT = Counter("catfleet_relay_messages_sent", "Batch messages the relay enqueued")
ERRORS = Counter("catfleet_relay_errors", "Relay failures, by stage", ["stage"])
#: Every stage exists from the start at 0 (a dashboard shows 0, not "No data").
STAGES = ("broker", "database")
for _stage in STAGES:
    ERRORS.labels(_stage)
LAG = Gauge("catfleet_relay_lag_seconds", "Age of the oldest pending outbox request")
PENDING = Gauge("catfleet_relay_pending_requests", "Outbox requests not yet sent")
DELAY = Histogram(
    "catfleet_relay_delay_seconds",
    "From a request's commit to its claim by a relay",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)


class Relay:
    """One relay: a working connection (claims in transactions) and a listening one."""

    def __init__(
        self,
        database_url: str,
        producer: Producer,
        *,
        claim_size: int,
        poll_seconds: float,
        retention_seconds: float = 0,
    ):
        self.database_url = database_url
        self.producer = producer
        self.claim_size = claim_size
        self.poll_seconds = poll_seconds
        self.retention_seconds = retention_seconds
        self._conn: psycopg.Connection[Any] | None = None
        self._listen: psycopg.Connection[Any] | None = None

    # -- connections -------------------------------------------------------------------------
    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            with translate_errors():
                self._conn = psycopg.connect(self.database_url, autocommit=True, connect_timeout=10)
        return self._conn

    def _listener(self) -> psycopg.Connection[Any]:
        if self._listen is None or self._listen.closed:
            with translate_errors():
                self._listen = psycopg.connect(self.database_url, autocommit=True, connect_timeout=10)
                self._listen.execute(f"LISTEN {NOTIFY_CHANNEL}")
        return self._listen

    def close(self) -> None:
        for conn in (self._conn, self._listen):
            if conn is not None:
                conn.close()
        self._conn = self._listen = None

    # -- the work ----------------------------------------------------------------------------
    def relay_batch(self) -> int:
        """Claim, enqueue and mark one batch of requests in one transaction; returns how many."""
        conn = self._connection()
        with translate_errors(), conn.transaction():
            requests = outbox.claim(conn, self.claim_size)
            if not requests:
                return 0
            messages, message_ids = self._messages(requests)
            try:
                self.producer.send(messages)
            except Exception as exc:  # any broker client error: roll back, the rows stay pending
                raise BrokerUnavailable(f"enqueue failed: {type(exc).__name__}: {exc}") from exc
            outbox.mark_sent(conn, [r.id for r in requests], message_ids)
        REQUESTS_SENT.inc(len(requests))
        MESSAGES_SENT.inc(len(messages))
        for r in requests:
            DELAY.observe(r.age)
        return len(requests)

    def _messages(self, requests: list[outbox.Request]) -> tuple[list[dramatiq.Message[Any]], list[str]]:
        """Batch messages per correlation id (an expense asked twice goes once), and the id of
        the message that carries each request."""
        groups: dict[str | None, dict[int, None]] = {}
        for r in requests:
            groups.setdefault(r.correlation_id, {})[r.expense_id] = None
        messages, carrier = [], {}
        for correlation_id, ids in groups.items():
            for chunk in chunked(ids, self.producer.batch_size):
                message = Producer.batch_message(chunk, correlation_id)
                messages.append(message)
                carrier.update({(correlation_id, i): message.message_id for i in chunk})
        return messages, [carrier[r.correlation_id, r.expense_id] for r in requests]

    def drain(self) -> int:
        """Relay batches until the outbox has no more pending rows for this relay."""
        total = 0
        while (n := self.relay_batch()) > 0:
            total += n
            if n < self.claim_size:
                break
        return total

    def observe_backlog(self) -> outbox.Backlog:
        backlog = outbox.backlog(self._connection())
        PENDING.set(backlog.pending)
        LAG.set(backlog.oldest_age)
        return backlog

    def prune(self) -> int:
        return outbox.prune(self._connection(), retention_seconds=self.retention_seconds)

    def wait(self, stop: threading.Event) -> bool:
        """Until a notification, ``poll_seconds`` or ``stop``; True when notified."""
        listen = self._listener()
        deadline = time.monotonic() + self.poll_seconds
        while not stop.is_set() and (remaining := deadline - time.monotonic()) > 0:
            with translate_errors():
                if any(True for _ in listen.notifies(timeout=min(remaining, 0.5), stop_after=1)):
                    for _ in listen.notifies(timeout=0):  # one drain covers those queued meanwhile
                        pass
                    return True
        return False

    # -- the process -------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Relay until ``stop`` is set, surviving database and broker outages."""
        backoff, last_backlog, last_prune = 0.0, 0.0, time.monotonic()
        log.info("relay started", extra={"event": "relay_start", "claim_size": self.claim_size})
        while not stop.is_set():
            try:
                self._listener()  # listen first: nothing committed after the drain is missed
                sent = self.drain()
                now = time.monotonic()
                if sent or now - last_backlog >= BACKLOG_EVERY_S:
                    self.observe_backlog()
                    last_backlog = now
                if self.retention_seconds and now - last_prune >= PRUNE_EVERY_S:
                    self.prune()
                    last_prune = now
                backoff = 0.0
                self.wait(stop)
            except CatfleetError as exc:
                stage = "broker" if isinstance(exc, BrokerUnavailable) else "database"
                ERRORS.labels(stage).inc()
                log.warning("relay %s error: %s", stage, exc, extra={"event": "relay_error", "stage": stage})
                if isinstance(exc, DatabaseUnavailable):
                    self.close()
                else:
                    self._observe_backlog_quietly()
                backoff = min(max(0.1, backoff * 2), MAX_BACKOFF_S, self.poll_seconds)
                stop.wait(backoff * random.uniform(0.5, 1.0))
        self.close()
        log.info("relay stopped", extra={"event": "relay_stop"})

    def _observe_backlog_quietly(self) -> None:
        with contextlib.suppress(CatfleetError):
            self.observe_backlog()
