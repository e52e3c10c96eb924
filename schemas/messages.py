"""Wire messages: the payloads other services put in a Dramatiq envelope.

Schema evolution rules (msgspec's guide): add fields only with defaults, never change
a field's type, pass IDs, not objects. Each payload travels as the single positional
argument of its actor: ``"args": [{...payload...}]``.
"""

import re
from typing import Annotated

import msgspec

#: Queue and actor names: part of the wire contract.
CATEGORIZE_QUEUE = "categorize"
CATEGORIZE_ACTOR = "categorize_batch"
LEARN_QUEUE = "learn"
LEARN_ACTOR = "learn_from_correction"
#: The bulk lane of categorization (backfills, re-categorizations, replays of bulk letters): the
#: same ``CategorizeBatch`` payload on a queue of its own, whose actor has a lower Dramatiq
#: priority, so a worker process runs the interactive lane's messages it holds first.
CATEGORIZE_BULK_QUEUE = "categorize_bulk"
CATEGORIZE_BULK_ACTOR = "categorize_batch_bulk"

#: Lane names (``Producer.enqueue(lane=...)``, ``catfleet enqueue --lane``).
LANE_INTERACTIVE = "interactive"
LANE_BULK = "bulk"
#: lane -> (queue, actor) of its ``CategorizeBatch`` messages.
LANES: dict[str, tuple[str, str]] = {
    LANE_INTERACTIVE: (CATEGORIZE_QUEUE, CATEGORIZE_ACTOR),
    LANE_BULK: (CATEGORIZE_BULK_QUEUE, CATEGORIZE_BULK_ACTOR),
}
#: Dramatiq actor priorities (lower runs first among the messages a worker process holds).
INTERACTIVE_PRIORITY = 0
BULK_PRIORITY = 100

#: The hard upper bound of IDs in one message; larger batches are dead-lettered.
MAX_BATCH_IDS = 10_000
#: Expense IDs are PostgreSQL bigints.
MAX_EXPENSE_ID = 2**63 - 1
#: The longest string any wire field (payload or envelope) may hold, in characters.
MAX_TEXT_CHARS = 200

#: What PostgreSQL cannot store in a text column: NUL, and lone surrogates (not UTF-8 once
#: encoded). Every string field of the wire payloads must match this (msgspec: ``re.search``).
TEXT_PATTERN = r"^[^\x00\ud800-\udfff]*$"
_TEXT_RE = re.compile(TEXT_PATTERN)

ExpenseId = Annotated[int, msgspec.Meta(ge=1, le=MAX_EXPENSE_ID)]
#: Optional free text: at most MAX_TEXT_CHARS, storable by PostgreSQL.
ShortText = Annotated[str, msgspec.Meta(max_length=MAX_TEXT_CHARS, pattern=TEXT_PATTERN)]
#: The same, never empty.
Key = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TEXT_CHARS, pattern=TEXT_PATTERN)]


def text_problem(value: object, *, max_chars: int = MAX_TEXT_CHARS) -> str | None:
    """Why ``value`` is not a wire string PostgreSQL can store (None: it is one). The same rule
    as ``ShortText``, for the envelope fields the typed payloads do not cover."""
    if not isinstance(value, str):
        return f"expected a string, got {type(value).__name__}"
    if len(value) > max_chars:
        return f"longer than {max_chars} characters ({len(value)})"
    if not _TEXT_RE.search(value):
        return "contains NUL or a lone surrogate"
    return None


class CategorizeBatch(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Categorize these expenses. IDs that do not exist are skipped and counted."""

    expense_ids: Annotated[list[ExpenseId], msgspec.Meta(min_length=1, max_length=MAX_BATCH_IDS)]
    #: Free-form id that follows the request through logs and stored rows.
    correlation_id: ShortText | None = None


class Correction(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A user chose a category for an expense: the learning input."""

    expense_id: ExpenseId
    category_key: Key
    #: Unique per correction; replays with the same key change nothing.
    idempotency_key: Key
    correlation_id: ShortText | None = None
