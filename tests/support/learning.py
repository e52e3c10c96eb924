"""Corrections as a test writes them."""

from __future__ import annotations

from pipeline.learning import default_correction_key
from schemas import Correction


def fix(expense_id: int, key: str, idem: str | None = None) -> Correction:
    return Correction(
        expense_id=expense_id,
        category_key=key,
        idempotency_key=idem or default_correction_key(expense_id, key),
    )
