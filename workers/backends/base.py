"""The backend contract: what every broker backend provides to the rest of the fleet."""

from __future__ import annotations

import abc
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import dramatiq
import msgspec
from dramatiq.middleware import Middleware

from pipeline.errors import CatfleetError
from pipeline.settings import redact
from schemas import CATEGORIZE_BULK_QUEUE, CATEGORIZE_QUEUE, LEARN_QUEUE

if TYPE_CHECKING:
    from workers.deliveries import DeliveryCounter
    from workers.dlq.base import AuditLog, DeadLetterStore
    from workers.failures import FailureLog
    from workers.fleet.state import FleetState
    from workers.settings import Settings

#: The fleet's queues (canonical names; each has a delay and a dead-letter queue beside it):
#: categorization's interactive and bulk lanes, and learning.
FLEET_QUEUES: tuple[str, ...] = (CATEGORIZE_QUEUE, CATEGORIZE_BULK_QUEUE, LEARN_QUEUE)


class QueueStats(msgspec.Struct, kw_only=True):
    queue: str
    ready: int  # waiting in the queue
    delayed: int  # waiting in the delay queue (retries with backoff, eta messages)
    #: fetched by a worker process and not yet acked (running or prefetched); None: unknown
    in_flight: int | None
    dead: int  # in the dead-letter queue
    oldest_age_s: float | None  # age of the next message to run; None: empty or unknown
    replayed: int = 0  # dead letters replayed by the dead-letter tool, ever (where kept)
    purged: int = 0  # dead letters purged by the dead-letter tool, ever (where kept)


class Check(msgspec.Struct, kw_only=True, omit_defaults=True):
    ok: bool
    error: str | None = None

    @classmethod
    def failed(cls, exc: BaseException) -> Check:
        return cls(ok=False, error=redact(f"{type(exc).__name__}: {exc}")[:300])


@runtime_checkable
class BatchEnqueue(Protocol):
    """A broker that sends a list of messages in as few round trips as it can."""

    def enqueue_many(self, messages: list[dramatiq.Message[Any]]) -> None: ...


class Backend(abc.ABC):
    """One broker's behaviour. Built from the settings without connecting; ``build_broker`` makes
    the Dramatiq broker once, with the fleet's middleware list (``workers.app`` orders it)."""

    #: Name of the broker kind, for audit entries, logs and status output.
    kind: ClassVar[str]

    def __init__(self, settings: Settings):
        self.settings = settings
        self._broker: dramatiq.Broker | None = None

    @property
    def broker(self) -> dramatiq.Broker:
        if self._broker is None:
            raise RuntimeError("the backend's broker is not built yet: call build_broker first")
        return self._broker

    def build_broker(self, middleware: Sequence[Middleware]) -> dramatiq.Broker:
        """The Dramatiq broker with exactly this middleware (plus ``middleware()``'s, placed by
        the caller), set as Dramatiq's global broker."""
        broker = self._make_broker(list(middleware))
        dramatiq.set_broker(broker)
        self._broker = broker
        return broker

    @abc.abstractmethod
    def _make_broker(self, middleware: list[Middleware]) -> dramatiq.Broker: ...

    def middleware(self) -> list[Middleware]:
        """Middleware this broker needs in the fleet's list (e.g. Redis maintenance)."""
        return []

    @property
    @abc.abstractmethod
    def failures(self) -> FailureLog:
        """Where every failed attempt is recorded (the dead-letter tools show the final one)."""

    @property
    @abc.abstractmethod
    def deliveries(self) -> DeliveryCounter:
        """Deliveries per message without an outcome (a message that keeps killing workers)."""

    @abc.abstractmethod
    def dead_letters(self, audit: AuditLog, *, queues: Sequence[str] = FLEET_QUEUES) -> DeadLetterStore:
        """The dead-letter store (list, show, replay, purge), audited in ``audit``."""

    @abc.abstractmethod
    def fleet_state(self) -> FleetState:
        """Where the worker processes publish their records, the paused queues and throughput
        are kept (``workers.fleet.state``); records expire after the heartbeat timeout."""

    @abc.abstractmethod
    def queue_stats(self, queues: Sequence[str] = FLEET_QUEUES) -> list[QueueStats]:
        """One entry per queue; raises the driver's error when the broker is unreachable."""

    @classmethod
    def connection_errors(cls) -> tuple[type[BaseException], ...]:
        """The driver's errors that mean the broker is unreachable or refused the connection (a
        command reports them in one line, not a traceback)."""
        import dramatiq.errors

        return (dramatiq.errors.ConnectionError,)

    @classmethod  # noqa: B027 - optional
    def quiet_connect_logs(cls) -> None:
        """Silence driver loggers that log each failed connection attempt before the error is
        raised (a short-lived command reports the error itself, in one line)."""

    def scratch(self, name: str) -> AbstractContextManager[Settings]:
        """The settings pointed at a broker space named ``name`` made for the caller alone and
        deleted on the way out (the demo's); never an existing one. CatfleetError where this
        broker cannot make one."""
        return self._no_scratch()

    @contextmanager
    def _no_scratch(self) -> Iterator[Settings]:
        raise CatfleetError(f"the {self.kind} broker cannot make a private space")
        yield self.settings  # pragma: no cover - never reached

    def stray_queues(self) -> list[QueueStats] | None:
        """Queues that hold messages but are not the fleet's (``FLEET_QUEUES``): a producer's typo
        or an unknown actor's queue, which no worker consumes. None where the broker cannot list
        its queues (AMQP). Raises the driver's error when the broker is unreachable."""
        return None

    def release(self, consumer_id: str) -> int:
        """The process that consumed as ``consumer_id`` is gone (its supervisor saw it exit): put
        what it held back in its queues now, not after a heartbeat timeout; how many it held.
        Where the broker redelivers on its own when a connection closes (RabbitMQ), nothing to do."""
        return 0

    def workers_seen(self) -> int | None:
        """Broker clients with a fresh heartbeat; None where the broker keeps none."""
        return None

    @abc.abstractmethod
    def check(self) -> Check:
        """Does the broker answer now? Never raises."""

    def flush(self, queues: Sequence[str] = FLEET_QUEUES) -> None:  # noqa: B027 - optional
        """Delete every message, dead letter and record of these queues (tests, benchmarks)."""

    def close(self) -> None:
        if self._broker is not None:
            self._broker.close()
