import msgspec
import pytest

from schemas import MAX_BATCH_IDS, CategorizeBatch


def test_valid_batch() -> None:
    b = msgspec.convert({"expense_ids": [1, 2], "correlation_id": "abc"}, CategorizeBatch)
    assert b.expense_ids == [1, 2]


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"expense_ids": []},
        {"expense_ids": ["1"]},
        {"expense_ids": [True]},
        {"expense_ids": [0]},
        {"expense_ids": [2**63]},
        {"expense_ids": list(range(1, MAX_BATCH_IDS + 2))},
        {"expense_ids": [1], "extra": 1},
        {"expense_ids": [1], "correlation_id": "x" * 201},
        {"expense_ids": [1], "correlation_id": "nul\x00"},
        {"expense_ids": [1], "correlation_id": "lone \ud800"},
    ],
)
def test_invalid_batches_are_rejected(payload: dict[str, object]) -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert(payload, CategorizeBatch)
