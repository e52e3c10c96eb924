"""Wire messages: the payloads other services put in a Dramatiq envelope.

Schema evolution rules (msgspec's guide): add fields only with defaults, never change
a field's type, pass IDs, not objects. Each payload travels as the single positional
argument of its actor: ``"args": [{...payload...}]``.
"""

from typing import Annotated

import msgspec

#: Queue and actor names: part of the wire contract.
CATEGORIZE_QUEUE = "categorize"
CATEGORIZE_ACTOR = "categorize_batch"
LEARN_QUEUE = "learn"
LEARN_ACTOR = "learn_from_correction"

#: The hard upper bound of IDs in one message; larger batches are dead-lettered.
MAX_BATCH_IDS = 10_000
#: Expense IDs are PostgreSQL bigints.
MAX_EXPENSE_ID = 2**63 - 1

ExpenseId = Annotated[int, msgspec.Meta(ge=1, le=MAX_EXPENSE_ID)]
ShortText = Annotated[str, msgspec.Meta(max_length=200)]


class CategorizeBatch(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Categorize these expenses. IDs that do not exist are skipped and counted."""

    expense_ids: Annotated[list[ExpenseId], msgspec.Meta(min_length=1, max_length=MAX_BATCH_IDS)]
    #: Free-form id that follows the request through logs and stored rows.
    correlation_id: ShortText | None = None


class Correction(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A user chose a category for an expense: the learning input."""

    expense_id: ExpenseId
    category_key: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    #: Unique per correction; replays with the same key change nothing.
    idempotency_key: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    correlation_id: ShortText | None = None
