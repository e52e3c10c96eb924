"""Dramatiq's Redis broker, minus the payloads that its consumer cannot see through.

A raw payload that is not JSON, or whose envelope has fields ``Message`` does not take, makes
``Message.decode`` raise inside Dramatiq's Redis consumer: the consumer restarts, the payload
stays in the process's unacked set and nothing else moves until the process dies. An envelope
without the right ``options.redis_message_id`` fails its ack; one whose ``queue_name`` is not
the list it sat on is acked on the other queue: both stay unacked here and run again after a
restart. Here each fetch returns the Redis message id of every payload with it, and the
consumer moves such a payload to the dead-letter queue at once and records why, as it does one
over ``max_message_bytes`` (checked before decoding).

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

from pipeline.errors import BrokerUnavailable
from workers.backends.redis.keys import RedisKeys
from workers.dlq.base import canonical_queue
from workers.failures import MAX_ERROR_CHARS, FailureLog, FailureRecord
from workers.fleet.gate import PauseGate
from workers.limits import Admission
from workers.settings import DEFAULT_MAX_MESSAGE_BYTES

logger = logging.getLogger(__name__)

#: Seconds a wake subscriber waits before it subscribes again after losing its connection.
WAKE_RESUBSCRIBE_S = 1.0
#: Messages sent per pipeline by ``enqueue_many`` (one round trip each).
PIPELINE_MESSAGES = 200


class NotReplicated(BrokerUnavailable):
    """An enqueue the primary stored that fewer replicas than asked confirmed (``WAIT``) in time:
    a failover now could lose it. Sending it again is safe (the idempotent write)."""

    def __init__(self, replicas: int, wanted: int, timeout_ms: int):
        super().__init__(
            f"enqueue reached {replicas} of the {wanted} replica(s) asked for within {timeout_ms} ms"
            " (CATFLEET_BROKER_MIN_REPLICAS); not confirmed, send it again"
        )
        self.replicas = replicas
        self.wanted = wanted


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

    def __init__(
        self,
        *,
        failure_log: FailureLog | None = None,
        wakeup: bool = True,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        min_replicas: int = 0,
        replica_timeout_ms: int = 1_000,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        #: ``enqueue_many`` (producers, the relay) returns only once this many replicas confirm
        #: its writes (``WAIT``), within ``replica_timeout_ms``; else ``NotReplicated``. 0: off.
        self.min_replicas = min_replicas
        self.replica_timeout_ms = replica_timeout_ms
        #: A payload longer than this is dead-lettered (``MessageTooLarge``) before it is decoded.
        self.max_message_bytes = max_message_bytes
        #: Where undecodable messages' reasons go.
        self.failure_log = failure_log
        #: False: consumers only poll (they still publish: other processes may listen).
        self.wakeup = wakeup
        self.keys = RedisKeys(self.namespace)
        self._wake_lock = threading.Lock()
        #: Queues an operator paused (refreshed by the presence middleware in worker processes).
        self.pause_gate = PauseGate()
        #: Fleet-wide rate limits on what consumers hand out (set by the worker: workers.limits).
        self.admission: Admission = Admission()

    @property
    def consumer_class(self) -> type[_RedisConsumer]:
        return _SafeRedisConsumer

    def enqueue_many(self, messages: list[Message[Any]]) -> None:
        """What ``enqueue`` does per message (no delay), in one round trip per
        ``PIPELINE_MESSAGES`` messages; with ``min_replicas``, each round trip ends with a
        ``WAIT`` for that many replicas, and ``NotReplicated`` is raised when fewer confirm (the
        messages already sent stay sent: a caller that sends them again duplicates them)."""
        for start in range(0, len(messages), PIPELINE_MESSAGES):
            prepared = []
            for message in messages[start : start + PIPELINE_MESSAGES]:
                message = message.copy(options={"redis_message_id": str(uuid4())})
                self.emit_before("enqueue", message, None)
                prepared.append(message)
            self.run_dispatch(
                [("enqueue", m.queue_name, m.options["redis_message_id"], m.encode()) for m in prepared],
                replicas=self.min_replicas,
            )
            for message in prepared:
                self.emit_after("enqueue", message, None)

    def do_enqueue(self, queue_name: str, *args: Any) -> None:
        """``RedisBroker.enqueue``'s dispatch call (retries, delays, ``actor.send``), with its wake-up."""
        self.run_dispatch([("enqueue", queue_name, *args)])

    def run_maintenance(self) -> None:
        """A heartbeat and a maintenance pass (re-queue dead broker ids' unacked messages, expire
        old dead letters) for every declared queue and its delay queue, in one round trip: a
        read-only ``qsize`` dispatch per queue with maintenance forced on."""
        queues = self.get_declared_queues()
        self.run_dispatch(
            [("qsize", q) for q in sorted(queues | {dq_name(q) for q in queues})], maintenance=True
        )

    def run_dispatch(
        self, calls: list[tuple[Any, ...]], *, maintenance: bool = False, replicas: int = 0
    ) -> None:
        """``(command, queue_name, *args)`` calls of Dramatiq's dispatch script, as
        ``RedisBroker._dispatch`` makes them, plus one ``PUBLISH`` per queue enqueued to, in one
        pipeline. The script goes by its SHA (``EVALSHA``) without redis-py's script check, which
        would cost a ``SCRIPT EXISTS`` round trip; where the server lacks the script (a new or
        restarted Redis) every call of it fails with NOSCRIPT and none ran: the script is loaded
        and those calls, only those, are sent again.

        ``replicas``: the pipeline ends with ``WAIT replicas replica_timeout_ms`` (on the same
        connection, so it covers these writes and every earlier one); ``NotReplicated`` when
        fewer replicas confirm."""
        sha = self.scripts["dispatch"].sha
        pending = calls
        for _ in range(2):
            with self.client.pipeline(transaction=False) as pipe:
                for command, queue_name, *args in pending:
                    lead = self._dispatch_args(command, queue_name, maintenance=maintenance)
                    pipe.evalsha(sha, 1, self.namespace, *lead, *args)
                for queue_name in {c[1] for c in pending if c[0] == "enqueue"}:
                    pipe.publish(self.keys.wake_channel(queue_name), b"")
                if replicas:
                    pipe.execute_command("WAIT", replicas, self.replica_timeout_ms)
                replies = pipe.execute(raise_on_error=False)
            results = replies[: len(pending)]
            errors = [r for r in results if isinstance(r, Exception) and not isinstance(r, NoScriptError)]
            if errors:
                raise errors[0]
            pending = [c for c, r in zip(pending, results, strict=True) if isinstance(r, NoScriptError)]
            if replicas and not pending:
                confirmed = replies[-1]
                if isinstance(confirmed, Exception):
                    raise confirmed
                if int(confirmed) < replicas:
                    raise NotReplicated(int(confirmed), replicas, self.replica_timeout_ms)
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

    def fetch_with_ids(self, queue_name: str, count: int) -> list[tuple[str, bytes | None]]:
        """Dramatiq's ``fetch`` (up to ``count`` messages moved to this process's unacked set),
        each payload with the Redis message id it was stored under: the ``LRANGE`` of the ids
        the script is about to pop runs in the same ``MULTI``, so nothing comes between. The
        consumer then never has to trust the envelope's ``options.redis_message_id``."""
        count = max(1, min(count, self._max_unpack_size()))
        sha = self.scripts["dispatch"].sha
        for _ in range(2):
            with self.client.pipeline(transaction=True) as pipe:
                pipe.lrange(self.keys.queue(queue_name), 0, count - 1)
                pipe.evalsha(sha, 1, self.namespace, *self._dispatch_args("fetch", queue_name), count)
                rids, payloads = pipe.execute(raise_on_error=False)
            if isinstance(payloads, NoScriptError):
                self.client.script_load(self.scripts["dispatch"].script)
                continue
            for result in (rids, payloads):
                if isinstance(result, Exception):
                    raise result
            return [(rid.decode(), payload) for rid, payload in zip(rids, payloads, strict=False)]
        raise NoScriptError("the dispatch script is still missing after loading it (fetch)")

    def dead_letter(
        self,
        queue_name: str,
        rid: str,
        *,
        error_type: str,
        error: str,
        message_id: str = "",
        actor_name: str = "",
    ) -> None:
        """Move this process's unacked message ``rid`` to the dead-letter queue at once (out of
        the unacked set and the message hash: it never runs nor comes back) and record why, under
        ``message_id`` (the Redis message id when the envelope has no readable one)."""
        self.do_nack(queue_name, rid)
        self.logger.error("Dead-lettered message %s on queue %r: %s: %s", rid, queue_name, error_type, error)
        if self.failure_log is None:
            return
        try:
            self.failure_log.record(
                FailureRecord(
                    message_id=message_id or rid,
                    queue_name=canonical_queue(queue_name),
                    actor_name=actor_name,
                    retries=0,
                    error_type=error_type,
                    error=error[:MAX_ERROR_CHARS],
                    dead=True,
                    at_ms=int(time.time() * 1000),
                )
            )
        except Exception:
            self.logger.exception("Could not record why message %r was dead-lettered", rid)


class _SafeRedisConsumer(_RedisConsumer):
    """Dramatiq's Redis consumer, but every payload it fetches ends somewhere: run, or
    dead-lettered with its reason when it is over ``max_message_bytes`` (before decoding), not
    a message (``DecodeError``), or an envelope whose ``options.redis_message_id`` or
    ``queue_name`` is not where it was actually read from (Dramatiq would fail its ack, or ack it
    on another queue, leaving it unacked here and re-run after every restart)."""

    broker: SafeRedisBroker
    message_cache: list[tuple[str, bytes | None]]

    def __init__(self, broker: SafeRedisBroker, queue_name: str, prefetch: int, timeout: int):
        super().__init__(broker, queue_name, prefetch, timeout)
        self.wake = broker.wake_event(queue_name)
        #: Set while the consumer waits for capacity: the next ack or nack wakes it.
        self.full = False
        broker.pause_gate.wake_on_resume(queue_name, self.wake)
        #: A fetched message held back for a rate limit (handed out first, paused or not).
        self.held: MessageProxy | None = None

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

    def _rate_limited(self, message: MessageProxy) -> MessageProxy | None:
        """``message`` if the fleet's rate limit of this queue admits it now; otherwise it is held
        (None: an idle poll, so the consumer thread goes on acking) and asked about again."""
        wait = self.broker.admission.wait_s(self.queue_name, message)
        if not wait:
            self.held = None
            return message
        self.held = message
        time.sleep(wait)
        return None

    def _paused(self) -> bool:
        """Paused and holding nothing fetched: wait (until a resume or the timeout), fetch nothing.
        What the consumer already fetched is still handed out (the process finishes it)."""
        if self.message_cache or not self.broker.pause_gate.is_paused(self.queue_name):
            return False
        self.wake.clear()
        self.wake.wait(self.timeout / 1000)  # a resume sets it
        return True

    def _next(self) -> Any:
        """Dramatiq's ``_RedisConsumer.__next__`` (2.2.1), but its sleeps end early: an idle
        consumer's on the queue's wake event (a publish), a full one's (prefetch all handed
        out) on the next ack. Dramatiq instead sleeps its growing idle back-off in both cases, so
        a full consumer can leave a queue waiting for up to ``timeout`` after capacity frees."""
        if self.held is not None:
            return self._rate_limited(self.held)
        if self._paused():
            return None
        try:
            while True:
                if self.message_cache:
                    rid, data = self.message_cache.pop(0)
                    message = self._admit(rid, data)
                    if message is None:
                        continue
                    self.misses = 0
                    self.queued_message_ids.add(message.message_id)
                    return self._rate_limited(MessageProxy(message))
                # Clear before looking, so that a publish or an ack from now on ends the wait.
                self.full = True
                self.wake.clear()
                if self.outstanding_message_count >= self.prefetch:
                    self.wake.wait(self.timeout / 1000)  # until an ack frees room
                    return None
                self.full = False
                self.message_cache = messages = self.broker.fetch_with_ids(
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

    def _admit(self, rid: str, data: bytes | None) -> Message[Any] | None:
        """The message stored under ``rid`` if it can run from this queue; None once it is
        dead-lettered (or, without a payload, dropped)."""
        broker, queue = self.broker, self.queue_name
        if data is None:  # an id without a payload (Dramatiq #266): nothing to run or keep
            self.logger.warning("Dropped message id %s on queue %r: it has no payload", rid, queue)
            broker.do_ack(queue, rid)
            return None
        if len(data) > broker.max_message_bytes:
            broker.dead_letter(
                queue,
                rid,
                error_type="MessageTooLarge",
                error=f"message of {len(data)} bytes is over the limit of {broker.max_message_bytes}"
                " (CATFLEET_MAX_MESSAGE_BYTES); not decoded",
            )
            return None
        try:
            message = Message.decode(data)
        except DecodeError as exc:
            broker.dead_letter(
                queue, rid, error_type="DecodeError", error=f"undecodable message: {exc.error}"
            )
            return None
        problem = None
        claimed = message.options.get("redis_message_id")
        if claimed is None:
            problem = f"options.redis_message_id is missing: the message is stored as {rid!r}"
        elif claimed != rid:
            problem = (
                f"options.redis_message_id is {_clip(claimed)}, but the message is stored as {rid!r}"
                " (set it to the id used in HSET and RPUSH)"
            )
        elif message.queue_name != queue:
            problem = f"queue_name {_clip(message.queue_name)} does not match the queue it was read from ({queue!r})"
        if problem is None:
            return message
        broker.dead_letter(
            queue,
            rid,
            error_type="InvalidEnvelope",
            error=problem,
            message_id=message.message_id,
            actor_name=message.actor_name,
        )
        return None

    def __next__(self) -> Any:
        return self._next()


def _clip(value: object, chars: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= chars else f"{text[:chars]}..."
