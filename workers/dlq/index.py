"""Rows of the dead-letter index (PostgreSQL table ``dead_letter_index``), as both broker
backends write them: one per letter, with what the filters the broker cannot answer look at."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from schemas.messages import MAX_TEXT_CHARS
from workers.dlq.base import DeadLetter, DeadLetterFilter

#: Characters of the final error kept in the index (the ``error`` filter looks at these).
INDEX_ERROR_CHARS = 500
#: Longest rid, queue, message id, actor or error type indexed (longer ones: not the fleet's).
INDEX_KEY_CHARS = 512
BIGINT_MIN, BIGINT_MAX = -(2**63), 2**63 - 1


def index_row(letter: DeadLetter, queue: str, rid: str, died_at_ms: int) -> dict[str, Any] | None:
    """The row of ``letter`` (stored under ``rid`` in ``queue``'s dead-letter queue, dead at
    ``died_at_ms``); None if its ids are longer than any the fleet makes (listed, not indexed)."""
    if len(rid) > INDEX_KEY_CHARS or len(queue) > INDEX_KEY_CHARS:
        return None
    return {
        "queue_name": queue,
        "rid": rid,
        "message_id": text(letter.message_id, INDEX_KEY_CHARS) or rid,
        "actor_name": text(letter.actor_name, INDEX_KEY_CHARS) or "",
        "error_type": text(letter.error_type, INDEX_KEY_CHARS) or "",
        "error": text(letter.error, INDEX_ERROR_CHARS, clip=True) or "",
        "correlation_id": text(letter.correlation_id, MAX_TEXT_CHARS),
        "expense_ids": [i for i in letter.expense_ids or () if BIGINT_MIN <= i <= BIGINT_MAX],
        "died_at_ms": died_at_ms,
    }


def text(value: str | None, chars: int, *, clip: bool = False) -> str | None:
    """``value`` as PostgreSQL text takes it (no NUL, no lone surrogate); None if it is longer
    than ``chars`` (an exact-match field: no one filters by such a value), or clipped."""
    if value is None:
        return None
    if len(value) > chars:
        if not clip:
            return None
        value = value[:chars]
    return value.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")


def page_params(
    space: str,
    filter: DeadLetterFilter,
    *,
    lo: int | None,
    hi: int | None,
    after: tuple[int, str] | None,
    limit: int | None,
    offset: int,
    queues: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The parameters of a page of ``dead_letter_index`` rows (either broker's store): the filter,
    the times of death between ``lo`` and ``hi``, below the cursor ``after`` (time of death, id)."""
    return {
        "space": space,
        "queue": filter.queue,
        "queues": None if queues is None else list(queues),
        "actor": filter.actor,
        "error_type": filter.error_type,
        "error": filter.error,
        "correlation_id": filter.correlation_id,
        "expense_id": filter.expense_id,
        "ids": list(filter.ids) or None,
        "died_after": lo,
        "died_before": hi,
        "after_ms": None if after is None else after[0],
        "after_rid": None if after is None else after[1],
        "limit": limit,
        "offset": offset,
    }
