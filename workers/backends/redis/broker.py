"""Dramatiq's Redis broker, minus its consumer crash loop on an undecodable message.

A raw payload that is not JSON, or whose envelope has fields ``Message`` does not take, makes
``Message.decode`` raise inside Dramatiq's Redis consumer: the consumer restarts, the payload
stays in the process's unacked set and nothing else moves until the process dies. Here the
consumer finds the offending Redis message id among its own unacked ids (a set bounded by the
prefetch), moves it to the dead-letter queue and records why.

Also a wake-up instead of pure polling: Dramatiq's consumer sleeps between empty fetches
(5 ms doubling up to ``worker_timeout``), so an idle fleet answers a new message only at its
next poll. Every enqueue here also ``PUBLISH``es on the queue's wake channel in the same round
trip (``wake_channel``), and each worker process keeps one subscriber thread that cuts the
consumers' idle sleep short. Messages from producers that do not publish (redis-cli, other
languages) are still fetched at the next poll; a lost subscription only means polling again."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any
from uuid import uuid4

import redis
from dramatiq.broker import MessageProxy
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.common import compute_backoff, current_millis, dq_name
from dramatiq.errors import ConnectionClosed, DecodeError
from dramatiq.message import Message
from redis.exceptions import NoScriptError

from workers.backends.redis.keys import RedisKeys
from workers.dlq.base import canonical_queue
from workers.failures import MAX_ERROR_CHARS, FailureLog, FailureRecord

logger = logging.getLogger(__name__)

#: Seconds a wake subscriber waits before it subscribes again after losing its connection.
WAKE_RESUBSCRIBE_S = 1.0
#: Messages sent per pipeline by ``enqueue_many`` (one round trip each).
PIPELINE_MESSAGES = 200


class WakeSubscriber:
    """One thread per worker process: a pattern subscription to the namespace's wake channels
    that sets the event of the queue it names. Started lazily by the first consumer, so it runs
    in the forked worker process, never in Dramatiq's main process."""

    def __init__(self, client: redis.Redis, keys: RedisKeys):
        self.client = client
        self.keys = keys
        self.events: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="catfleet-wake", daemon=True)
        self._thread.start()

    def event(self, queue_name: str) -> threading.Event:
        with self._lock:
            return self.events.setdefault(queue_name, threading.Event())

    def _run(self) -> None:
        while True:
            try:
                pubsub = self.client.pubsub(ignore_subscribe_messages=True)
                pubsub.psubscribe(self.keys.wake_pattern)
                for item in pubsub.listen():
                    channel = item.get("channel")
                    if isinstance(channel, bytes):
                        queue = self.keys.queue_of_wake(channel.decode())
                        with self._lock:
                            event = self.events.get(queue)
                        if event is not None:
                            event.set()
            except (redis.RedisError, OSError, ValueError) as exc:
                # consumers fall back to polling until the subscription is back
                logger.warning(
                    "Wake subscription lost (%s); subscribing again in %.0f s", exc, WAKE_RESUBSCRIBE_S
                )
            time.sleep(WAKE_RESUBSCRIBE_S)


class SafeRedisBroker(RedisBroker):
    _wake: WakeSubscriber | None = None

    def __init__(self, *, failure_log: FailureLog | None = None, wakeup: bool = True, **kwargs: Any):
        super().__init__(**kwargs)
        #: Where undecodable messages' reasons go.
        self.failure_log = failure_log
        #: False: consumers only poll (they still publish: other processes may listen).
        self.wakeup = wakeup
        self.keys = RedisKeys(self.namespace)
        self._wake_lock = threading.Lock()

    @property
    def consumer_class(self) -> type[_RedisConsumer]:
        return _SafeRedisConsumer

    def enqueue_many(self, messages: list[Message[Any]]) -> None:
        """What ``enqueue`` does per message (no delay), in one round trip per
        ``PIPELINE_MESSAGES`` messages."""
        for start in range(0, len(messages), PIPELINE_MESSAGES):
            prepared = []
            for message in messages[start : start + PIPELINE_MESSAGES]:
                message = message.copy(options={"redis_message_id": str(uuid4())})
                self.emit_before("enqueue", message, None)
                prepared.append(message)
            self._run_dispatch(
                [("enqueue", m.queue_name, m.options["redis_message_id"], m.encode()) for m in prepared]
            )
            for message in prepared:
                self.emit_after("enqueue", message, None)

    def do_enqueue(self, queue_name: str, *args: Any) -> None:
        """``RedisBroker.enqueue``'s dispatch call (retries, delays, ``actor.send``), with its wake-up."""
        self._run_dispatch([("enqueue", queue_name, *args)])

    def run_maintenance(self) -> None:
        """A heartbeat and a maintenance pass (re-queue dead broker ids' unacked messages, expire
        old dead letters) for every declared queue and its delay queue, in one round trip: a
        read-only ``qsize`` dispatch per queue with maintenance forced on."""
        queues = self.get_declared_queues()
        self._run_dispatch(
            [("qsize", q) for q in sorted(queues | {dq_name(q) for q in queues})], maintenance=True
        )

    def _run_dispatch(self, calls: list[tuple[Any, ...]], *, maintenance: bool = False) -> None:
        """``(command, queue_name, *args)`` calls of Dramatiq's dispatch script, as
        ``RedisBroker._dispatch`` makes them, plus one ``PUBLISH`` per queue enqueued to, in one
        pipeline. The script goes by its SHA (``EVALSHA``) without redis-py's script check, which
        would cost a ``SCRIPT EXISTS`` round trip; where the server lacks the script (a new or
        restarted Redis) every call of it fails with NOSCRIPT and none ran: the script is loaded
        and those calls, only those, are sent again."""
        sha = self.scripts["dispatch"].sha
        pending = calls
        for _ in range(2):
            with self.client.pipeline(transaction=False) as pipe:
                for command, queue_name, *args in pending:
                    lead = self._dispatch_args(command, queue_name, maintenance=maintenance)
                    pipe.evalsha(sha, 1, self.namespace, *lead, *args)
                for queue_name in {c[1] for c in pending if c[0] == "enqueue"}:
                    pipe.publish(self.keys.wake_channel(queue_name), b"")
                results = pipe.execute(raise_on_error=False)[: len(pending)]
            errors = [r for r in results if isinstance(r, Exception) and not isinstance(r, NoScriptError)]
            if errors:
                raise errors[0]
            pending = [c for c, r in zip(pending, results, strict=True) if isinstance(r, NoScriptError)]
            if not pending:
                return
            self.client.script_load(self.scripts["dispatch"].script)
        raise NoScriptError(f"the dispatch script is still missing after loading it ({len(pending)} calls)")

    def _dispatch_args(self, command: str, queue_name: str, *, maintenance: bool = False) -> list[Any]:
        """The leading arguments ``RedisBroker._dispatch`` passes the script (dramatiq 2.2.1);
        ``maintenance``: run the maintenance pass whatever ``maintenance_chance`` says."""
        return [
            command,
            current_millis(),
            queue_name,
            self.broker_id,
            self.heartbeat_timeout,
            self.dead_message_ttl,
            1 if maintenance else self._should_do_maintenance(command),
            self._max_unpack_size(),
        ]

    def abandon_broker_id(self, error: BaseException) -> None:
        """Take a new broker id after a consumer lost its connection.

        What this process held under the old id can no longer be accounted for: a fetch whose
        reply the connection lost moved messages into the old id's unacked set without handing
        them out, and Dramatiq's consumer restart drops its prefetched messages and its delay
        queue. Its heartbeat no longer refreshed, the old id dies, and broker maintenance puts
        everything still in its unacked sets back in the queue after ``heartbeat_timeout``
        (acked ones are skipped: their payload is gone). Messages in flight at the time may run
        once more; the idempotent write absorbs that."""
        with self._wake_lock:
            old, self.broker_id = self.broker_id, str(uuid4())
        self.logger.warning(
            "Lost the broker connection (%s): broker id %s abandoned for %s; its unacked messages"
            " come back after the heartbeat timeout (%d ms)",
            error,
            old,
            self.broker_id,
            self.heartbeat_timeout,
        )

    def wake_event(self, queue_name: str) -> threading.Event:
        """The event that ends ``queue_name``'s consumer's idle sleep: set by a publish on the
        queue's wake channel (without wakeup, a private event that only acks set)."""
        if not self.wakeup:
            return threading.Event()
        with self._wake_lock:  # consumers are made by several consumer threads
            if self._wake is None:
                self._wake = WakeSubscriber(self.client, self.keys)
        return self._wake.event(queue_name)

    def dead_letter_undecodable(self, queue_name: str, data: bytes, error: DecodeError) -> str | None:
        """Move the unacked message of this process whose payload is ``data`` to the dead-letter
        queue; returns its Redis message id (None if it was not found)."""
        rids = sorted(self.client.smembers(self.keys.acks(self.broker_id, queue_name)))
        if not rids:
            return None
        payloads = self.client.hmget(self.keys.messages(queue_name), rids)
        for raw_rid, payload in zip(rids, payloads, strict=True):
            if payload == data:
                rid = raw_rid.decode()
                self.do_nack(queue_name, rid)
                self._record(queue_name, rid, error)
                return rid
        return None

    def _record(self, queue_name: str, rid: str, error: DecodeError) -> None:
        if self.failure_log is None:
            return
        try:
            self.failure_log.record(
                FailureRecord(
                    message_id=rid,  # the payload has no readable message id: use the Redis one
                    queue_name=canonical_queue(queue_name),
                    actor_name="",
                    retries=0,
                    error_type="DecodeError",
                    error=f"undecodable message: {error.error}"[:MAX_ERROR_CHARS],
                    dead=True,
                    at_ms=int(time.time() * 1000),
                )
            )
        except Exception:
            self.logger.exception("Could not record why message %r was dead-lettered", rid)


class _SafeRedisConsumer(_RedisConsumer):
    broker: SafeRedisBroker

    def __init__(self, broker: SafeRedisBroker, queue_name: str, prefetch: int, timeout: int):
        super().__init__(broker, queue_name, prefetch, timeout)
        self.wake = broker.wake_event(queue_name)
        #: Set while the consumer waits for capacity: the next ack or nack wakes it.
        self.full = False

    def ack(self, message: Any) -> None:
        try:
            super().ack(message)
        finally:
            self._room_freed()

    def nack(self, message: Any) -> None:
        try:
            super().nack(message)
        finally:
            self._room_freed()

    def _room_freed(self) -> None:
        if self.full:
            self.wake.set()

    def _next(self) -> Any:
        """Dramatiq's ``_RedisConsumer.__next__`` (2.2.1), but its sleeps end early: an idle
        consumer's on the queue's wake event (a publish), a full one's (prefetch all handed
        out) on the next ack. Dramatiq instead sleeps its growing idle back-off in both cases, so
        a full consumer can leave a queue waiting for up to ``timeout`` after capacity frees."""
        try:
            while True:
                if self.message_cache:
                    data = self.message_cache.pop(0)
                    if data is None:
                        continue
                    self.misses = 0
                    message = Message.decode(data)
                    self.queued_message_ids.add(message.message_id)
                    return MessageProxy(message)
                # Clear before looking, so that a publish or an ack from now on ends the wait.
                self.full = True
                self.wake.clear()
                if self.outstanding_message_count >= self.prefetch:
                    self.wake.wait(self.timeout / 1000)  # until an ack frees room
                    return None
                self.full = False
                self.message_cache = messages = self.broker.do_fetch(
                    self.queue_name, self.prefetch - self.outstanding_message_count
                )
                if not messages:
                    self.misses, backoff_ms = compute_backoff(self.misses, max_backoff=self.timeout)
                    if self.wake.wait(backoff_ms / 1000):
                        self.misses = 0
                    return None
        except redis.ConnectionError as e:
            self.broker.abandon_broker_id(e)
            raise ConnectionClosed(e) from None

    def __next__(self) -> Any:
        while True:
            try:
                return self._next()
            except DecodeError as exc:
                data = exc.data if isinstance(exc.data, bytes) else str(exc.data).encode()
                rid = self.broker.dead_letter_undecodable(self.queue_name, data, exc)
                self.logger.error(
                    "Dead-lettered undecodable message %s on queue %r: %s", rid, self.queue_name, exc.error
                )
