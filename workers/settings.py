"""Every knob of the fleet: the domain's (``pipeline.settings.PipelineSettings``) plus the
broker, worker, retry, log, metrics and relay settings that belong to ``workers``. Built once
from ``CATFLEET_*`` variables by ``workers.config.settings_from_env``."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from pipeline.errors import SettingsError
from pipeline.settings import PipelineSettings, Positive
from schemas import MAX_BATCH_IDS
from workers.backends.redis_urls import is_sentinel_url, parse_sentinel_url
from workers.backends.registry import SCHEMES, supports

DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"
#: ``max_message_bytes``'s default (also what a broker built without settings uses).
DEFAULT_MAX_MESSAGE_BYTES = 524_288


class Settings(PipelineSettings, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Every knob of catfleet. Each field is set by ``CATFLEET_<FIELD NAME IN CAPITALS>``."""

    #: ``redis://`` (default), ``redis+sentinel://host1,host2,host3/service[/db]`` (a Redis primary
    #: found through its Sentinels: every client follows a failover) or ``amqp://`` (RabbitMQ).
    broker_url: str = DEFAULT_BROKER_URL
    #: Redis broker key namespace; every producer and worker of a fleet must agree.
    broker_namespace: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.:{}-]{1,64}$")] = "dramatiq"
    #: Redis broker: a process silent this long (ms) is dead; its unacked messages are re-queued.
    broker_heartbeat_timeout_ms: Annotated[int, msgspec.Meta(ge=1_000, le=3_600_000)] = 15_000
    #: Redis broker: per million broker calls, how many also run Dramatiq's maintenance pass.
    broker_maintenance_chance: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 20_000
    #: Redis broker: every worker process also heartbeats and runs maintenance this often (ms).
    broker_maintenance_interval_ms: Annotated[int, msgspec.Meta(ge=100, le=600_000)] = 5_000
    #: Redis broker: a producer's enqueue (``Producer``, ``catfleet enqueue``, the outbox relay)
    #: counts as sent only once at least this many replicas have it (``WAIT``), within
    #: ``broker_replica_timeout_ms``; otherwise it fails (the relay keeps the requests pending and
    #: sends them again). 0: off (an enqueue acknowledged by the primary alone can be lost in a
    #: failover).
    broker_min_replicas: Annotated[int, msgspec.Meta(ge=0, le=16)] = 0
    broker_replica_timeout_ms: Annotated[int, msgspec.Meta(ge=1, le=60_000)] = 1_000
    #: IDs per message the producer sends (the schema's hard maximum is MAX_BATCH_IDS).
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=MAX_BATCH_IDS)] = 500
    #: Worker processes and threads per process started by ``catfleet worker``.
    worker_processes: Annotated[int, msgspec.Meta(ge=1, le=64)] = 2
    worker_threads: Annotated[int, msgspec.Meta(ge=1, le=64)] = 4
    #: Messages a worker process holds; 0: 2 x threads.
    worker_prefetch: Annotated[int, msgspec.Meta(ge=0, le=1000)] = 0
    #: Longest sleep of an idle Redis consumer between polls (ms): with the wake-up below, how
    #: late a message from a producer that does not publish (redis-cli, other languages) is seen.
    worker_idle_poll_ms: Annotated[int, msgspec.Meta(ge=5, le=10_000)] = 1_000
    #: Idle Redis consumers also wait on their queue's wake channel, which every catfleet enqueue
    #: publishes to: a new message is fetched at once instead of at the next poll.
    worker_wakeup: bool = True
    #: Dramatiq retries across calls: how many, and the backoff window (ms).
    max_retries: Annotated[int, msgspec.Meta(ge=0, le=50)] = 5
    min_backoff_ms: Positive = 1_000
    max_backoff_ms: Positive = 300_000
    #: Longest a batch may run before it is interrupted and retried (ms).
    time_limit_ms: Positive = 300_000
    #: A failing message must reach the dead-letter queue within this long (ms); checked against
    #: the worst case of retries x (time limit + jittered backoff).
    retry_horizon_ms: Positive = 10_800_000
    #: Deliveries of one message that end without an outcome (worker killed, OOM) before it is
    #: dead-lettered.
    max_deliveries: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 5
    #: SIGTERM: how long (ms) in-flight batches may take to finish before the worker exits.
    worker_shutdown_timeout_ms: Annotated[int, msgspec.Meta(ge=0, le=3_600_000)] = 30_000
    #: A worker process must have booted (broker connected, consumers started) within this long
    #: (ms), or it is replaced like one that died.
    worker_boot_timeout_ms: Annotated[int, msgspec.Meta(ge=1_000, le=600_000)] = 10_000
    #: ``catfleet worker`` replaces a worker process that dies; more than this many deaths within
    #: ``worker_restart_window_s`` is a crash loop: it stops every process and exits non-zero.
    worker_restart_limit: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 10
    worker_restart_window_s: Annotated[int, msgspec.Meta(ge=1, le=86_400)] = 60
    #: RabbitMQ broker: ``classic`` queues (one node's) or ``quorum`` queues (replicated over the
    #: cluster): ``categorize``, ``learn``, their delay and dead-letter queues, the fleet's queues
    #: with a delivery limit of ``max_deliveries``. An existing queue of the other type is refused,
    #: never redeclared.
    rabbitmq_queue_type: Literal["classic", "quorum"] = "classic"
    #: A message larger than this (bytes, as stored by the broker) is dead-lettered at once with
    #: ``MessageTooLarge``, before it is decoded (10,000 IDs of 19 digits take ~200 KB).
    max_message_bytes: Annotated[int, msgspec.Meta(ge=1_024, le=67_108_864)] = DEFAULT_MAX_MESSAGE_BYTES
    #: Every worker process refreshes its record in the fleet's state (what it runs, for
    #: ``catfleet status`` and the console) and reads the paused queues this often (ms).
    fleet_beat_ms: Annotated[int, msgspec.Meta(ge=100, le=60_000)] = 1_000
    #: After a correction is learned, at most this many of the user's other expenses from the
    #: same (normalized) merchant that are not the user's own choice are re-categorized on the
    #: bulk lane (the newest first); 0: off.
    correction_reach_limit: Annotated[int, msgspec.Meta(ge=0, le=MAX_BATCH_IDS * 10)] = 1_000
    #: Fleet-wide rate limits (workers/limits.py, shared in the cache Redis): expenses per second
    #: the bulk lane's workers take on (writes to PostgreSQL), corrections learned per second;
    #: 0: off.
    bulk_writes_per_s: Annotated[int, msgspec.Meta(ge=0, le=10_000_000)] = 0
    learn_per_s: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 0
    #: Log level and format (``json`` or ``text``).
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = "json"
    #: Metrics and health server of ``catfleet worker`` (one per host): port (0: off) and address.
    metrics_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 9191
    metrics_host: str = "127.0.0.1"
    #: Prometheus multiprocess directory, cleared at worker start; empty: a per-port temp dir.
    metrics_dir: str = ""
    #: Outbox relay (``catfleet relay``): requests claimed per transaction, the safety-net poll
    #: interval (s) behind LISTEN/NOTIFY, how long sent requests are kept (s), and the port of
    #: its Prometheus endpoint (0: none).
    relay_claim_size: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 5_000
    relay_poll_seconds: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 5.0
    relay_retention_seconds: Annotated[int, msgspec.Meta(ge=0)] = 86_400
    relay_metrics_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 0

    #: ``catfleet console``: address and port (a non-loopback address needs ``console_users``).
    console_host: str = "127.0.0.1"
    console_port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 9400
    #: Who may sign in: ``name:password:role`` entries, comma separated; role ``admin`` (may act)
    #: or ``viewer`` (may look). Empty: on loopback, a one-time admin link is printed at start.
    console_users: str = ""
    #: Key that signs the console's session cookies (empty: a random one per start, so sessions
    #: end when the console restarts; set it when several console replicas share a load balancer).
    console_secret: str = ""
    #: How often the live pages are refreshed over server-sent events (ms), one shared read for
    #: every open console.
    console_refresh_ms: Annotated[int, msgspec.Meta(ge=250, le=60_000)] = 1_000

    def __post_init__(self) -> None:
        super().__post_init__()
        from workers.console.users import parse_users  # only msgspec: no cycle, nothing heavy

        parse_users(self.console_users)
        if self.min_backoff_ms > self.max_backoff_ms:
            raise ValueError("min_backoff_ms must not exceed max_backoff_ms")
        if self.worst_case_to_dead_letter_ms > self.retry_horizon_ms:
            raise ValueError(
                f"max_retries, backoff and time_limit_ms allow {self.worst_case_to_dead_letter_ms} ms "
                f"before a failing message is dead-lettered, over retry_horizon_ms={self.retry_horizon_ms}"
            )
        if not self.broker_url:
            raise ValueError("broker_url must not be empty")
        if not supports(self.broker_url):
            raise ValueError("broker_url must start with " + ", ".join(SCHEMES))
        if is_sentinel_url(self.broker_url):
            try:
                parse_sentinel_url(self.broker_url)
            except SettingsError as exc:
                raise ValueError(str(exc)) from None

    def redacted(self) -> dict[str, object]:
        """Also without the console's passwords and session key."""
        from workers.console.users import redact_users

        out = super().redacted()
        out["console_users"] = redact_users(self.console_users)
        out["console_secret"] = "***" if self.console_secret else ""
        return out

    @property
    def pool_size(self) -> int:
        """Connections per worker process: ``database_pool_size``, or threads + 2."""
        return self.database_pool_size or self.worker_threads + 2

    @property
    def worst_case_to_dead_letter_ms(self) -> int:
        """Longest a message that always fails can take to reach the dead-letter queue: every
        attempt runs into the time limit, every backoff gets Dramatiq's full jitter (up to 2x)."""
        backoffs = sum(
            min(2 * self.min_backoff_ms * 2**attempt, self.max_backoff_ms)
            for attempt in range(self.max_retries)
        )
        return (self.max_retries + 1) * self.time_limit_ms + backoffs
