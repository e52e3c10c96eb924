"""The contracts: wire messages, records and SQL migrations. Imports only msgspec."""

from schemas.messages import (
    CATEGORIZE_ACTOR,
    CATEGORIZE_QUEUE,
    LEARN_ACTOR,
    LEARN_QUEUE,
    MAX_BATCH_IDS,
    MAX_EXPENSE_ID,
    CategorizeBatch,
    Correction,
)
from schemas.records import Categorization, Expense, Outcome, Pattern, PatternKind

__all__ = [
    "CATEGORIZE_ACTOR",
    "CATEGORIZE_QUEUE",
    "LEARN_ACTOR",
    "LEARN_QUEUE",
    "MAX_BATCH_IDS",
    "MAX_EXPENSE_ID",
    "Categorization",
    "CategorizeBatch",
    "Correction",
    "Expense",
    "Outcome",
    "Pattern",
    "PatternKind",
]
