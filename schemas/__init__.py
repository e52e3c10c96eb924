"""The contracts: wire messages, records and SQL migrations. Imports only msgspec."""

from schemas.messages import (
    BULK_PRIORITY,
    CATEGORIZE_ACTOR,
    CATEGORIZE_BULK_ACTOR,
    CATEGORIZE_BULK_QUEUE,
    CATEGORIZE_QUEUE,
    INTERACTIVE_PRIORITY,
    LANE_BULK,
    LANE_INTERACTIVE,
    LANES,
    LEARN_ACTOR,
    LEARN_QUEUE,
    MAX_BATCH_IDS,
    MAX_EXPENSE_ID,
    CategorizeBatch,
    Correction,
)
from schemas.records import Categorization, Expense, Outcome, Pattern, PatternKind

__all__ = [
    "BULK_PRIORITY",
    "CATEGORIZE_ACTOR",
    "CATEGORIZE_BULK_ACTOR",
    "CATEGORIZE_BULK_QUEUE",
    "CATEGORIZE_QUEUE",
    "INTERACTIVE_PRIORITY",
    "LANES",
    "LANE_BULK",
    "LANE_INTERACTIVE",
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
