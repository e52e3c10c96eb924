"""The public API is explicit and pinned."""

import pipeline
import schemas
import workers


def test_schemas_exports() -> None:
    assert sorted(schemas.__all__) == sorted(
        [
            "BULK_PRIORITY", "CATEGORIZE_BULK_ACTOR", "CATEGORIZE_BULK_QUEUE", "INTERACTIVE_PRIORITY", "LANES",
            "LANE_BULK", "LANE_INTERACTIVE",
            "CATEGORIZE_ACTOR", "CATEGORIZE_QUEUE", "LEARN_ACTOR", "LEARN_QUEUE", "MAX_BATCH_IDS", "MAX_EXPENSE_ID",
            "Categorization", "CategorizeBatch", "Correction", "Expense", "Outcome", "Pattern", "PatternKind",
        ]
    )  # fmt: skip


def test_pipeline_exports() -> None:
    assert sorted(pipeline.__all__) == sorted(
        [
            "BatchReport", "Categorizer", "CatfleetError", "InvalidMessage", "InvalidPattern", "PermanentError",
            "SettingsError", "PipelineSettings", "TransientError", "normalize_merchant",
        ]
    )  # fmt: skip


def test_workers_exports() -> None:
    assert sorted(workers.__all__) == sorted(
        ["App", "EnqueueReport", "Producer", "build_app", "settings_from_env"]
    )


def test_every_export_exists() -> None:
    for module in (schemas, pipeline, workers):
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.{name}"
