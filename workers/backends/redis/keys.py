"""Every key and channel name of the Redis broker's namespace, built here and nowhere else.

Dramatiq's own layout (its dispatch script builds these itself; we read them): ``<q>`` list of
Redis message ids, ``<q>.msgs`` hash id -> payload, ``<q>.DQ`` / ``<q>.DQ.msgs`` the delay
queue, ``<q>.XQ`` sorted set of dead ids (score: time of death, ms) / ``<q>.XQ.msgs``,
``__acks__.<broker id>.<q>`` a process's fetched, unacked ids, ``__heartbeats__`` sorted set of
broker ids by last beat. catfleet's own keys carry a ``catfleet.`` prefix inside the namespace."""

from __future__ import annotations

from dramatiq.common import dq_name, xq_name


class RedisKeys:
    def __init__(self, namespace: str):
        self.namespace = namespace

    def _key(self, name: str) -> str:
        return f"{self.namespace}:{name}"

    # Dramatiq's
    def queue(self, queue: str) -> str:
        return self._key(queue)

    def messages(self, queue: str) -> str:
        return self._key(f"{queue}.msgs")

    def delayed(self, queue: str) -> str:
        return self._key(dq_name(queue))

    def delayed_messages(self, queue: str) -> str:
        return self._key(f"{dq_name(queue)}.msgs")

    def dead(self, queue: str) -> str:
        return self._key(xq_name(queue))

    def dead_messages(self, queue: str) -> str:
        return self._key(f"{xq_name(queue)}.msgs")

    def acks(self, broker_id: str, queue: str) -> str:
        return self._key(f"__acks__.{broker_id}.{queue}")

    def acks_pattern(self, broker_id: str = "*", queue: str = "*") -> str:
        """SCAN pattern of unacked sets (every process's, or one's)."""
        return self.acks(broker_id, queue)

    @property
    def heartbeats(self) -> str:
        return self._key("__heartbeats__")

    def all_keys(self) -> str:
        """SCAN pattern of every key in the namespace."""
        return self._key("*")

    def dead_queue_pattern(self) -> str:
        """SCAN pattern of every dead-letter queue; ``queue_of_dead`` reads the name back."""
        return self._key("*.XQ")

    def queue_of_dead(self, key: str) -> str | None:
        """``<ns>:<q>.XQ`` -> ``q`` (None for Dramatiq's internal keys)."""
        name = key[len(self.namespace) + 1 : -len(".XQ")]
        return None if name.startswith("__") else name

    def queue_of_key(self, key: str) -> str | None:
        """The queue a key of Dramatiq's layout belongs to (``<ns>:<q>``, ``<q>.msgs``, ``<q>.DQ``,
        ``<q>.DQ.msgs``, ``<q>.XQ``, ``<q>.XQ.msgs`` -> ``q``); None for a key outside the
        namespace, Dramatiq's internal keys (``__acks__``, ``__heartbeats__``) and catfleet's."""
        prefix = self._key("")
        if not key.startswith(prefix):
            return None
        name = key[len(prefix) :].removesuffix(".msgs")
        name = name.removesuffix(".DQ").removesuffix(".XQ")
        if not name or name.startswith(("__", "catfleet.")):
            return None
        return name

    def is_catfleet_or_internal(self, key: str) -> bool:
        """A key this namespace's queues never use (SCAN skips them without asking their type)."""
        return key.startswith((self._key("__"), self._key("catfleet.")))

    # catfleet's
    def failures(self, message_id: str) -> str:
        return self._key(f"catfleet.failures:{message_id}")

    def deliveries(self, message_id: str) -> str:
        return self._key(f"catfleet.deliveries:{message_id}")

    @property
    def dead_letter_actions(self) -> str:
        """Hash of the dead-letter tool's counts: field ``<queue>:<replayed|purged>``."""
        return self._key("catfleet.deadletter.actions")

    # the fleet's own state (workers.fleet.state)
    @property
    def processes(self) -> str:
        """Sorted set of live worker process ids by last beat (ms)."""
        return self._key("catfleet.procs")

    def process(self, record_id: str) -> str:
        """A worker process's record (JSON), expiring one heartbeat timeout after its last beat."""
        return self._key(f"catfleet.proc:{record_id}")

    @property
    def paused(self) -> str:
        """Hash of paused queues: queue -> who paused it and when (JSON)."""
        return self._key("catfleet.paused")

    @property
    def queue_actions(self) -> str:
        """List of pauses and resumes, newest first (JSON), capped."""
        return self._key("catfleet.queue.actions")

    def processed(self, queue: str, bucket: int) -> str:
        """Messages of ``queue`` finished in the 10 s bucket starting at ``bucket`` (s)."""
        return self._key(f"catfleet.tp:{queue}:{bucket}")

    def wake_channel(self, queue: str) -> str:
        """The channel an enqueue on ``queue`` publishes to (payload unused)."""
        return f"{self.namespace}:wake:{queue}"

    @property
    def wake_pattern(self) -> str:
        return self.wake_channel("*")

    def queue_of_wake(self, channel: str) -> str:
        return channel[len(self.wake_channel("")) :]
