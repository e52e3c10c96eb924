"""The project's exception tree. The first split is transient (retry) vs permanent (dead-letter)."""

from __future__ import annotations


class CatfleetError(Exception):
    """Root of every error catfleet raises on purpose.

    One translated from PostgreSQL keeps what the server reported: its ``sqlstate`` (e.g.
    ``"23505"``) and, where there is one, the ``constraint_name``, ``table_name`` and
    ``column_name``. Each is None when unknown."""

    def __init__(
        self,
        *args: object,
        sqlstate: str | None = None,
        constraint_name: str | None = None,
        table_name: str | None = None,
        column_name: str | None = None,
    ) -> None:
        super().__init__(*args)
        self.sqlstate = sqlstate
        self.constraint_name = constraint_name
        self.table_name = table_name
        self.column_name = column_name


class TransientError(CatfleetError):
    """Worth retrying: the same call may succeed later."""


class PermanentError(CatfleetError):
    """Retrying cannot help: the message goes to the dead-letter queue at once."""


class SettingsError(CatfleetError):
    """A setting has a bad value. The message names the environment variable."""


class InvalidMessage(PermanentError):
    """A payload that does not match its schema (bad shape, types, sizes)."""


class InvalidPattern(PermanentError):
    """A pattern that cannot be saved (e.g. a regex RE2 rejects)."""


class UnknownCategory(PermanentError):
    """A category key that does not exist."""

    def __init__(self, key: str) -> None:
        super().__init__(f"unknown category {key!r}")
        self.key = key


class DatabaseUnavailable(TransientError):
    """PostgreSQL could not be reached or dropped the connection."""


class DatabaseConflict(TransientError):
    """Serialization failure or deadlock: the transaction can be run again."""


class DatabaseError(PermanentError):
    """PostgreSQL rejected the statement (a bug or bad data, not a blip)."""


class MigrationError(PermanentError):
    """A migration that cannot be applied: its SQL failed, it changed after it was applied, or its
    file is bad. ``version`` is None when the file has no version."""

    def __init__(self, message: str, *, version: int | None = None, **diagnostics: str | None) -> None:
        super().__init__(message, **diagnostics)
        self.version = version


class CacheUnavailable(TransientError):
    """The pattern cache (Redis) failed or its breaker is open."""


class BrokerUnavailable(TransientError):
    """The broker refused or dropped an enqueue; the messages may be sent again later."""


class UnknownExpense(PermanentError):
    """An expense id that does not exist (or was deleted)."""

    def __init__(self, expense_id: int) -> None:
        super().__init__(f"unknown expense {expense_id} (it does not exist or was deleted)")
        self.expense_id = expense_id


class UnknownPattern(PermanentError):
    """A pattern id that does not exist."""

    def __init__(self, pattern_id: int) -> None:
        super().__init__(f"unknown pattern {pattern_id}")
        self.pattern_id = pattern_id


class ConflictingCorrection(PermanentError):
    """An idempotency key already used for a different correction."""


class CandidateError(PermanentError):
    """A rule rollout that cannot be done as asked: nothing staged, nothing to roll back, or a
    pattern that changed since it was staged (``catfleet rules``)."""
