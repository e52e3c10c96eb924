"""Records read from and written to PostgreSQL."""

import datetime as dt
import enum

import msgspec


class PatternKind(enum.StrEnum):
    MERCHANT = "merchant"
    KEYWORD = "keyword"
    DESCRIPTION = "description"
    REGEX = "regex"
    AMOUNT_RANGE = "amount_range"
    TIME = "time"
    #: Learned from corrections across merchants (``learned_token_votes``), never saved as a
    #: ``categorization_patterns`` row.
    TOKEN = "token"


class Outcome(enum.StrEnum):
    """What happened to one expense ID of a batch."""

    CATEGORIZED = "categorized"  # band auto: applied
    SUGGESTED = "suggested"  # band suggest: stored as a suggestion
    UNCATEGORIZED = "uncategorized"  # no match above the suggest threshold
    MISSING = "missing"  # unknown or deleted expense id
    USER_KEPT = "user_kept"  # the user's own category stands; nothing written


class Expense(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    user_id: int
    merchant_name: str
    description: str
    amount: float
    currency: str
    transaction_date: dt.date
    transaction_time: dt.time | None = None


class Pattern(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """A categorization pattern as cached (array_like: compact in Redis).

    ``support`` and ``seen`` are the evidence of learned generalizations (0 for every other
    pattern): for a ``token`` pattern, the distinct merchants with the token that vote for its
    category and all merchants with the token; for a fleet-learned global ``merchant`` pattern,
    the users who corrected the merchant to its category and all users who corrected it.
    """

    id: int
    user_id: int | None
    category_id: int
    kind: PatternKind
    value: str
    weight: float
    support: int = 0
    seen: int = 0


class Categorization(msgspec.Struct, frozen=True, kw_only=True):
    expense_id: int
    category_id: int | None
    pattern_id: int | None
    confidence: float
    band: str
    method: str
    explanation: str
