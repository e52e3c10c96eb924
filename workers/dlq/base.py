"""Dead letters an operator can work with: the store contract, shared by the Redis and the
RabbitMQ broker. An implementation only opens a *session* (the dead letters as they are now,
and the two moves: replay one, purge one); listing, filtering, pacing, auditing and counting
are done here, once."""

from __future__ import annotations

import abc
import getpass
import json
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any, ClassVar, Literal

import dramatiq
import msgspec

from pipeline import queries
from workers.encoder import decode_envelope
from workers.failures import FailureLog, FailureRecord, LazyDatabase

Action = Literal["replay", "purge"]

#: Options a replay drops: the message starts over (no delay, no retries, no old traceback).
RESET_OPTIONS = frozenset({"eta", "retries", "traceback", "requeue_timestamp", "redis_message_id"})

#: Characters of an undecodable dead letter's stored bytes kept in ``DeadLetter.raw``.
RAW_CHARS = 65_536
#: Final errors a replay would only repeat: the message is dead-lettered again before it runs.
UNREPLAYABLE_ERRORS = {"MessageTooLarge": "over the message size limit"}

#: The audit entry of a replay or purge is written before the first move and brought up to date
#: after this many moves or this many seconds, whichever comes first, and at the end: an action
#: killed halfway leaves an entry that is at most that far behind what it did.
AUDIT_EVERY = 100
AUDIT_EVERY_S = 1.0


class DeadLetter(msgspec.Struct, kw_only=True):
    message_id: str
    queue_name: str
    actor_name: str
    #: Number of expense IDs in the batch (None: not a batch payload).
    expense_ids: int | None
    error_type: str
    error: str
    died_at_ms: int
    #: The decoded envelope (None: the stored bytes are not a readable message).
    payload: dict[str, Any] | None = None
    history: list[FailureRecord] = []
    #: The stored bytes as text (undecodable letters only; at most RAW_CHARS, then "...").
    raw: str | None = None
    #: Why a replay would not succeed (None: it can be replayed); such letters can only be purged.
    unreplayable: str | None = None


class DeadLetterFilter(msgspec.Struct, kw_only=True, frozen=True):
    ids: tuple[str, ...] = ()
    queue: str | None = None
    actor: str | None = None
    #: Case-insensitive substring of the final error (type or text).
    error: str | None = None
    older_than_s: float | None = None
    newer_than_s: float | None = None

    @property
    def is_empty(self) -> bool:
        return self == DeadLetterFilter()

    def matches(self, letter: DeadLetter, now_ms: int) -> bool:
        age_s = (now_ms - letter.died_at_ms) / 1000
        return (
            (not self.ids or letter.message_id in self.ids)
            and (self.queue is None or letter.queue_name == self.queue)
            and (self.actor is None or letter.actor_name == self.actor)
            and (self.error is None or self.error.lower() in f"{letter.error_type}: {letter.error}".lower())
            and (self.older_than_s is None or age_s >= self.older_than_s)
            and (self.newer_than_s is None or age_s <= self.newer_than_s)
        )


class ActionReport(msgspec.Struct, kw_only=True):
    action: Action
    dry_run: bool
    matched: int
    done: int
    message_ids: list[str]
    #: message id -> why it was left where it is
    skipped: dict[str, str] = {}


class Session(abc.ABC):
    """The dead letters as they are when the session opens, and the moves on them."""

    letters: list[DeadLetter]

    @abc.abstractmethod
    def replay(self, letter: DeadLetter) -> bool:
        """Move the letter back to its queue, crash-safely; False if it was no longer there."""

    @abc.abstractmethod
    def purge(self, letter: DeadLetter) -> bool:
        """Delete the letter; False if it was no longer there."""


class AuditLog(abc.ABC):
    """Who did what to the dead letters. An entry is opened before anything moves and grows as
    messages move, so a crash halfway still leaves one."""

    @abc.abstractmethod
    def begin(self, *, broker: str, action: Action, filter: DeadLetterFilter, operator: str) -> int:
        """Open an entry for an action about to start (count 0); its id."""

    @abc.abstractmethod
    def add(self, entry: int, message_ids: list[str]) -> None:
        """These messages were moved by the entry's action: add them to its count and ids."""


class PostgresAuditLog(AuditLog):
    """Table ``dead_letter_actions``: who, when, what filter, how many, which ids."""

    def __init__(self, database: LazyDatabase):
        self.database = database

    def begin(self, *, broker: str, action: Action, filter: DeadLetterFilter, operator: str) -> int:
        params = {
            "operator": operator,
            "broker": broker,
            "action": action,
            "filter": json.dumps(msgspec.to_builtins(filter)),
            "dry_run": False,
            "count": 0,
            "message_ids": [],
        }
        row = self.database.db.run(
            lambda conn: conn.execute(queries.INSERT_DEAD_LETTER_ACTION, params).fetchone()
        )
        assert row is not None
        return int(row[0])

    def add(self, entry: int, message_ids: list[str]) -> None:
        params = {"entry": entry, "ids": message_ids}
        self.database.db.run(lambda conn: conn.execute(queries.ADD_TO_DEAD_LETTER_ACTION, params))


def operator_name() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"


def now_ms() -> int:
    return int(time.time() * 1000)


class DeadLetterStore(abc.ABC):
    broker: ClassVar[str]

    def __init__(self, *, failures: FailureLog, audit: AuditLog):
        self.failures = failures
        self.audit = audit
        self.closers: list[Callable[[], object]] = []

    @abc.abstractmethod
    def session(self) -> AbstractContextManager[Session]: ...

    def count(self, action: Action, queue_name: str) -> None:  # noqa: B027 - optional hook
        """Count a replayed or purged letter for the metrics (where the broker has a place for it)."""

    def close(self) -> None:
        for close in self.closers:
            close()

    def find(self, filter: DeadLetterFilter | None = None, *, limit: int | None = None) -> list[DeadLetter]:
        """Newest first."""
        with self.session() as session:
            return self._select(session.letters, filter or DeadLetterFilter(), limit)

    def show(self, message_id: str) -> DeadLetter | None:
        found = self.find(DeadLetterFilter(ids=(message_id,)), limit=1)
        return found[0] if found else None

    def replay(
        self,
        filter: DeadLetterFilter,
        *,
        dry_run: bool = False,
        limit: int | None = None,
        rate: float | None = None,
        operator: str | None = None,
    ) -> ActionReport:
        return self._act("replay", filter, dry_run=dry_run, limit=limit, rate=rate, operator=operator)

    def purge(
        self,
        filter: DeadLetterFilter,
        *,
        dry_run: bool = False,
        limit: int | None = None,
        operator: str | None = None,
    ) -> ActionReport:
        return self._act("purge", filter, dry_run=dry_run, limit=limit, rate=None, operator=operator)

    def _act(
        self,
        action: Action,
        filter: DeadLetterFilter,
        *,
        dry_run: bool,
        limit: int | None,
        rate: float | None,
        operator: str | None,
    ) -> ActionReport:
        report = ActionReport(action=action, dry_run=dry_run, matched=0, done=0, message_ids=[])
        with self.session() as session:
            chosen = self._select(session.letters, filter, limit)
            report.matched = len(chosen)
            if dry_run:
                for letter in chosen:
                    if action == "replay" and letter.unreplayable:
                        report.skipped[letter.message_id] = letter.unreplayable
                    else:
                        report.message_ids.append(letter.message_id)
                return report
            entry = self.audit.begin(
                broker=self.broker, action=action, filter=filter, operator=operator or operator_name()
            )
            unrecorded: list[str] = []  # moved, not yet in the audit entry
            recorded_at = time.monotonic()
            try:
                for letter in chosen:
                    if action == "replay" and (letter.unreplayable or letter.payload is None):
                        report.skipped[letter.message_id] = letter.unreplayable or "not a readable message"
                        continue
                    moved = session.replay(letter) if action == "replay" else session.purge(letter)
                    if not moved:
                        report.skipped[letter.message_id] = "no longer in the dead-letter queue"
                        continue
                    report.done += 1
                    report.message_ids.append(letter.message_id)
                    unrecorded.append(letter.message_id)
                    self.count(action, letter.queue_name)
                    if len(unrecorded) >= AUDIT_EVERY or time.monotonic() - recorded_at >= AUDIT_EVERY_S:
                        self.audit.add(entry, unrecorded)
                        unrecorded, recorded_at = [], time.monotonic()
                    if rate and action == "replay":
                        time.sleep(1 / rate)
            finally:  # also when a move fails: the entry says what was done before it
                if unrecorded:
                    self.audit.add(entry, unrecorded)
        return report

    def _select(
        self, letters: list[DeadLetter], filter: DeadLetterFilter, limit: int | None
    ) -> list[DeadLetter]:
        now = now_ms()
        # stores list oldest first: reversed, a stable sort keeps the later of two equal times first
        chosen = sorted((x for x in reversed(letters) if filter.matches(x, now)), key=lambda x: -x.died_at_ms)
        return chosen[:limit] if limit is not None else chosen

    def describe(
        self,
        message_id: str,
        queue_name: str,
        payload: dict[str, Any] | None,
        died_at_ms: int,
        history: list[FailureRecord],
        raw: bytes | None = None,
    ) -> DeadLetter:
        """A DeadLetter from what a store found: the final error comes from the failure log (the
        stored payload carries the previous attempt's traceback), else from that traceback.
        ``raw``: the stored bytes, kept (clipped) when they are not a readable message."""
        final = next((r for r in reversed(history) if r.dead), history[-1] if history else None)
        if final is not None:
            error_type, error = final.error_type, final.error
            died_at_ms = final.at_ms if final.dead else died_at_ms
        else:
            error_type, error = _from_traceback(payload)
        return DeadLetter(
            message_id=message_id,
            queue_name=queue_name,
            actor_name=str(payload.get("actor_name", "")) if payload else (final.actor_name if final else ""),
            expense_ids=_expense_id_count(payload),
            error_type=error_type,
            error=error,
            died_at_ms=died_at_ms,
            payload=payload,
            history=history,
            raw=_raw_text(raw) if payload is None and raw is not None else None,
            unreplayable=_unreplayable(queue_name, payload, error_type),
        )


def decode_payload(raw: bytes) -> dict[str, Any] | None:
    """The envelope if ``raw`` is a message the workers' consumer accepts (the fleet's encoder
    check, then Dramatiq's ``Message``), else None: such a letter is shown raw, never replayed."""
    try:
        fields = decode_envelope(raw)
        dramatiq.Message(**{**fields, "args": tuple(fields["args"])})
    except Exception:
        return None
    return fields


def _raw_text(raw: bytes) -> str:
    text = raw[: RAW_CHARS * 4].decode("utf-8", errors="backslashreplace")
    return text if len(text) <= RAW_CHARS and len(raw) <= RAW_CHARS * 4 else f"{text[:RAW_CHARS]}..."


def _unreplayable(queue_name: str, payload: dict[str, Any] | None, error_type: str) -> str | None:
    if payload is None:
        return "not a readable message: purge it instead"
    if error_type in UNREPLAYABLE_ERRORS:
        return f"{UNREPLAYABLE_ERRORS[error_type]}: purge it instead"
    own = canonical_queue(str(payload.get("queue_name", "")))
    if own != queue_name:
        return f"its queue_name {own[:80]!r} is not its queue {queue_name!r}: purge it instead"
    return None


def replay_payload(payload: dict[str, Any], **options: Any) -> bytes:
    """The payload a replay enqueues: canonical queue name, no eta, retries reset, same ids."""
    kept = {k: v for k, v in dict(payload.get("options") or {}).items() if k not in RESET_OPTIONS}
    fields = {**payload, "queue_name": canonical_queue(payload["queue_name"]), "options": {**kept, **options}}
    return msgspec.json.encode(fields)


def canonical_queue(name: str) -> str:
    return name.removesuffix(".DQ").removesuffix(".XQ")


def _expense_id_count(payload: dict[str, Any] | None) -> int | None:
    try:
        ids = payload["args"][0]["expense_ids"]  # type: ignore[index]
    except (KeyError, IndexError, TypeError):
        return None
    return len(ids) if isinstance(ids, list) else None


def _from_traceback(payload: dict[str, Any] | None) -> tuple[str, str]:
    tb = str((payload or {}).get("options", {}).get("traceback") or "").strip()
    if not tb:
        return ("", "" if payload else "undecodable payload")
    last = tb.splitlines()[-1]
    kind, _, text = last.partition(": ")
    return kind.rsplit(".", 1)[-1], text


def iter_chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
