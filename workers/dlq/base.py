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


class AuditEntry(msgspec.Struct, kw_only=True):
    """One replay or purge: who, when, what it was asked and what it moved."""

    id: int
    at_ms: int
    operator: str
    broker: str
    action: Action
    filter: dict[str, Any]
    dry_run: bool = False
    #: The action's ``--limit`` and ``--rate`` (None: not given).
    limit: int | None = None
    rate: float | None = None
    count: int = 0
    message_ids: list[str] = []


class DeadLetter(msgspec.Struct, kw_only=True):
    message_id: str
    queue_name: str
    actor_name: str
    #: The batch's expense IDs (None: not a batch payload).
    expense_ids: list[int] | None
    error_type: str
    error: str
    died_at_ms: int
    #: How many expense IDs the batch has (None: not a batch payload).
    expense_count: int | None = None
    #: The producer's correlation id (the payload's, else its options'), if it has one.
    correlation_id: str | None = None
    #: The decoded envelope (None: the stored bytes are not a readable message).
    payload: dict[str, Any] | None = None
    history: list[FailureRecord] = []
    #: The stored bytes as text (undecodable letters only; at most RAW_CHARS, then "...").
    raw: str | None = None
    #: Why a replay would not succeed (None: it can be replayed); such letters can only be purged.
    unreplayable: str | None = None
    #: The audit entries that replayed or purged this message before (``show`` only).
    actions: list[AuditEntry] = []


class DeadLetterFilter(msgspec.Struct, kw_only=True, frozen=True):
    ids: tuple[str, ...] = ()
    queue: str | None = None
    actor: str | None = None
    #: Case-insensitive substring of the final error (type or text).
    error: str | None = None
    older_than_s: float | None = None
    newer_than_s: float | None = None
    #: Exactly this final error type.
    error_type: str | None = None
    #: Letters whose batch holds this expense id.
    expense_id: int | None = None
    #: Letters whose payload (or its options, or kwargs) carries this correlation id.
    correlation_id: str | None = None

    @property
    def is_empty(self) -> bool:
        return self == DeadLetterFilter()

    def died_between(self, now_ms: int) -> tuple[int | None, int | None]:
        """The age bounds as times of death (ms): (at or after, at or before); None: unbounded."""
        after = None if self.newer_than_s is None else now_ms - int(self.newer_than_s * 1000)
        before = None if self.older_than_s is None else now_ms - int(self.older_than_s * 1000)
        return after, before

    def matches(self, letter: DeadLetter, now_ms: int) -> bool:
        after, before = self.died_between(now_ms)
        return (
            (not self.ids or letter.message_id in self.ids)
            and (self.queue is None or letter.queue_name == self.queue)
            and (self.actor is None or letter.actor_name == self.actor)
            and (self.error is None or self.error.lower() in f"{letter.error_type}: {letter.error}".lower())
            and (after is None or letter.died_at_ms >= after)
            and (before is None or letter.died_at_ms <= before)
            and (self.error_type is None or letter.error_type == self.error_type)
            and (self.expense_id is None or self.expense_id in (letter.expense_ids or ()))
            and (self.correlation_id is None or letter.correlation_id == self.correlation_id)
        )


class Page(msgspec.Struct, kw_only=True):
    """One page of the dead letters a filter matches."""

    #: Newest first; their ``history`` may be left empty (``show`` has it).
    letters: list[DeadLetter]
    #: How many letters match the filter.
    total: int
    offset: int
    limit: int
    #: The cursor this page was read after (None: from the newest).
    after: str | None = None
    #: Give it as ``after`` for the next (older) page; None: this page is the last.
    next_cursor: str | None = None


def cursor_of(died_at_ms: int, rid: str) -> str:
    """A page cursor: the time of death and the store's id of the last letter of a page. Pages are
    ordered by (time of death, id), newest first, so the next page is what sorts below it: a
    keyset, not an offset (a deep page costs what the first does)."""
    return f"{died_at_ms}:{rid}"


def parse_cursor(text: str) -> tuple[int, str]:
    """(time of death, id) of a cursor; ``ValueError`` if ``text`` is not one."""
    ms, sep, rid = text.partition(":")
    if not sep or not rid or not ms.lstrip("-").isdigit():
        raise ValueError(f"not a page cursor: {text[:80]!r}")
    return int(ms), rid


class ActionReport(msgspec.Struct, kw_only=True):
    action: Action
    dry_run: bool
    matched: int
    done: int
    message_ids: list[str]
    #: message id -> why it was left where it is
    skipped: dict[str, str] = {}
    #: Message ids the filter named that are not dead letters (nothing done to them).
    unknown: list[str] = []


class Session(abc.ABC):
    """The dead letters as they are when the session opens, and the moves on them. A store that
    can select without loading every letter overrides ``choose``."""

    letters: list[DeadLetter]

    def choose(self, filter: DeadLetterFilter, limit: int | None) -> list[DeadLetter]:
        """The letters ``filter`` matches, newest first, at most ``limit``."""
        return select(self.letters, filter, limit)

    @abc.abstractmethod
    def replay(self, letter: DeadLetter) -> bool:
        """Move the letter back to its queue, crash-safely; False if it was no longer there."""

    @abc.abstractmethod
    def purge(self, letter: DeadLetter) -> bool:
        """Delete the letter; False if it was no longer there."""

    def gone(self, letters: list[DeadLetter]) -> None:  # noqa: B027 - optional hook
        """These letters left the dead-letter queue (replayed or purged): forget what is kept
        about them beside it (an index)."""


def select(letters: list[DeadLetter], filter: DeadLetterFilter, limit: int | None) -> list[DeadLetter]:
    """``letters`` (oldest first, as stores list them) that ``filter`` matches, newest first."""
    now = now_ms()
    # reversed, a stable sort keeps the later of two equal times first
    chosen = sorted((x for x in reversed(letters) if filter.matches(x, now)), key=lambda x: -x.died_at_ms)
    return chosen[:limit] if limit is not None else chosen


def count_facets(letters: list[DeadLetter]) -> dict[str, dict[str, int]]:
    """Letters per queue, per actor and per final error type."""
    out: dict[str, dict[str, int]] = {"queue": {}, "actor": {}, "error_type": {}}
    for x in letters:
        for facet, value in (("queue", x.queue_name), ("actor", x.actor_name), ("error_type", x.error_type)):
            out[facet][value] = out[facet].get(value, 0) + 1
    return out


class AuditLog(abc.ABC):
    """Who did what to the dead letters. An entry is opened before anything moves and grows as
    messages move, so a crash halfway still leaves one."""

    @abc.abstractmethod
    def begin(
        self,
        *,
        broker: str,
        action: Action,
        filter: DeadLetterFilter,
        operator: str,
        limit: int | None = None,
        rate: float | None = None,
    ) -> int:
        """Open an entry for an action about to start (count 0); its id."""

    @abc.abstractmethod
    def add(self, entry: int, message_ids: list[str]) -> None:
        """These messages were moved by the entry's action: add them to its count and ids."""

    @abc.abstractmethod
    def trail(self, *, limit: int = 50, offset: int = 0) -> list[AuditEntry]:
        """The audit trail, newest first."""

    @abc.abstractmethod
    def of_message(self, message_id: str) -> list[AuditEntry]:
        """The entries that moved this message, oldest first."""


class PostgresAuditLog(AuditLog):
    """Table ``dead_letter_actions``: who, when, what filter, limit and rate, how many, which ids."""

    def __init__(self, database: LazyDatabase):
        self.database = database

    def begin(
        self,
        *,
        broker: str,
        action: Action,
        filter: DeadLetterFilter,
        operator: str,
        limit: int | None = None,
        rate: float | None = None,
    ) -> int:
        params = {
            "operator": operator,
            "broker": broker,
            "action": action,
            "filter": json.dumps(msgspec.to_builtins(filter)),
            "dry_run": False,
            "count": 0,
            "message_ids": [],
            "limit": limit,
            "rate": rate,
        }
        row = self.database.db.run(
            lambda conn: conn.execute(queries.INSERT_DEAD_LETTER_ACTION, params).fetchone()
        )
        assert row is not None
        return int(row[0])

    def add(self, entry: int, message_ids: list[str]) -> None:
        params = {"entry": entry, "ids": message_ids}
        self.database.db.run(lambda conn: conn.execute(queries.ADD_TO_DEAD_LETTER_ACTION, params))

    def trail(self, *, limit: int = 50, offset: int = 0) -> list[AuditEntry]:
        params = {"limit": limit, "offset": offset}
        rows = self.database.db.run(
            lambda conn: conn.execute(queries.LIST_DEAD_LETTER_ACTIONS, params).fetchall(), read=True
        )
        return [_audit_entry(row) for row in rows]

    def of_message(self, message_id: str) -> list[AuditEntry]:
        params = {"ids": [message_id]}
        rows = self.database.db.run(
            lambda conn: conn.execute(queries.DEAD_LETTER_ACTIONS_OF, params).fetchall(), read=True
        )
        return [_audit_entry(row) for row in rows]


def _audit_entry(row: Any) -> AuditEntry:
    id_, at_ms, operator, broker, action, flt, dry_run, count, ids, limit, rate = row
    return AuditEntry(
        id=int(id_),
        at_ms=int(at_ms),
        operator=operator,
        broker=broker,
        action=action,
        filter={k: v for k, v in dict(flt).items() if v not in (None, [], ())},
        dry_run=bool(dry_run),
        limit=limit,
        rate=rate,
        count=int(count),
        message_ids=list(ids),
    )


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

    def lists_from_database(self, filter: DeadLetterFilter) -> bool:
        """Whether a page of what ``filter`` matches reads PostgreSQL (the dead-letter index)."""
        return True

    def count(self, action: Action, queue_name: str) -> None:  # noqa: B027 - optional hook
        """Count a replayed or purged letter for the metrics (where the broker has a place for it)."""

    def close(self) -> None:
        for close in self.closers:
            close()

    def find(self, filter: DeadLetterFilter | None = None, *, limit: int | None = None) -> list[DeadLetter]:
        """Newest first, each with its failure history."""
        with self.session() as session:
            return session.choose(filter or DeadLetterFilter(), limit)

    def page(
        self, filter: DeadLetterFilter, *, offset: int = 0, limit: int = 50, after: str | None = None
    ) -> Page:
        """One page of what ``filter`` matches, newest first, and how many match: the ``limit``
        letters after the cursor ``after`` (a page's ``next_cursor``; None: from the newest), less
        the first ``offset``. Here: every letter is looked at (a store that can do better
        overrides it)."""
        offset, limit = max(offset, 0), max(limit, 0)
        with self.session() as session:
            chosen = session.choose(filter, None)
        start = 0
        if after is not None:
            ms, rid = parse_cursor(after)
            keys = [(x.died_at_ms, x.message_id) for x in chosen]
            start = next((i + 1 for i, k in enumerate(keys) if k == (ms, rid)), None) or next(
                (i for i, k in enumerate(keys) if k[0] < ms), len(chosen)
            )
        shown = chosen[start + offset : start + offset + limit]
        more = start + offset + limit < len(chosen)
        last = shown[-1] if shown and more else None
        return Page(
            letters=shown,
            total=len(chosen),
            offset=offset,
            limit=limit,
            after=after,
            next_cursor=cursor_of(last.died_at_ms, last.message_id) if last else None,
        )

    def facets(self) -> dict[str, dict[str, int]]:
        """Dead letters per ``queue``, per ``actor`` and per final ``error_type``."""
        with self.session() as session:
            return count_facets(session.letters)

    def show(self, message_id: str) -> DeadLetter | None:
        """The letter (its history, payload or raw bytes) and the audit entries that moved it."""
        found = self.find(DeadLetterFilter(ids=(message_id,)), limit=1)
        if not found:
            return None
        letter = found[0]
        letter.actions = self.audit.of_message(letter.message_id)
        return letter

    def queues(self) -> list[str]:
        """The queues that have a dead-letter queue here (at least the ones looked at)."""
        return []

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
            chosen = session.choose(filter, limit)
            report.matched = len(chosen)
            report.unknown = _unknown(filter, chosen, limit)
            if dry_run:
                return _dry_run(report, chosen)
            entry = self.audit.begin(
                broker=self.broker,
                action=action,
                filter=filter,
                operator=operator or operator_name(),
                limit=limit,
                rate=rate,
            )
            unrecorded: list[DeadLetter] = []  # moved, not yet in the audit entry
            recorded_at = time.monotonic()

            def record() -> None:
                nonlocal unrecorded, recorded_at
                self.audit.add(entry, [x.message_id for x in unrecorded])
                session.gone(unrecorded)
                unrecorded, recorded_at = [], time.monotonic()

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
                    unrecorded.append(letter)
                    self.count(action, letter.queue_name)
                    if len(unrecorded) >= AUDIT_EVERY or time.monotonic() - recorded_at >= AUDIT_EVERY_S:
                        record()
                    if rate and action == "replay":
                        time.sleep(1 / rate)
            finally:  # also when a move fails: the entry says what was done before it
                if unrecorded:
                    record()
        return report

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
            expense_ids=(ids := expense_ids_of(payload)),
            expense_count=None if ids is None else len(ids),
            correlation_id=correlation_id_of(payload),
            error_type=error_type,
            error=error,
            died_at_ms=died_at_ms,
            payload=payload,
            history=history,
            raw=_raw_text(raw) if payload is None and raw is not None else None,
            unreplayable=_unreplayable(queue_name, payload, error_type),
        )


def _unknown(filter: DeadLetterFilter, chosen: list[DeadLetter], limit: int | None) -> list[str]:
    """The ids ``filter`` names that are not among the letters it matched."""
    if not filter.ids or (limit is not None and len(chosen) >= limit):
        return []  # none named, or the limit may have left them out: not known to be unknown
    seen = {x.message_id for x in chosen}
    return [mid for mid in dict.fromkeys(filter.ids) if mid not in seen]


def _dry_run(report: ActionReport, chosen: list[DeadLetter]) -> ActionReport:
    for letter in chosen:
        if report.action == "replay" and letter.unreplayable:
            report.skipped[letter.message_id] = letter.unreplayable
        else:
            report.message_ids.append(letter.message_id)
    return report


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


def expense_ids_of(payload: dict[str, Any] | None) -> list[int] | None:
    """The batch's expense IDs (None: not a batch payload)."""
    try:
        ids = payload["args"][0]["expense_ids"]  # type: ignore[index]
    except (KeyError, IndexError, TypeError):
        return None
    if not isinstance(ids, list):
        return None
    return [x for x in ids if isinstance(x, int) and not isinstance(x, bool)]


def correlation_id_of(payload: dict[str, Any] | None) -> str | None:
    """The producer's correlation id: in the batch payload (``args[0]``), else in the kwargs or
    the options (other producers)."""
    if not payload:
        return None
    places: list[Any] = [
        (payload.get("args") or [None])[0] if isinstance(payload.get("args"), list) else None,
        payload.get("kwargs"),
        payload.get("options"),
    ]
    for place in places:
        if isinstance(place, dict):
            cid = place.get("correlation_id")
            if isinstance(cid, str) and cid:
                return cid
    return None


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
