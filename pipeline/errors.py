"""The project's exception tree. The first split is transient (retry) vs permanent (dead-letter)."""

from __future__ import annotations


class CatfleetError(Exception):
    """Root of every error catfleet raises on purpose."""


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
