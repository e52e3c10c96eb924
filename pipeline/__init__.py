"""The categorization domain, with no Dramatiq in it."""

from pipeline.categorize import BatchReport, Categorizer
from pipeline.errors import (
    CatfleetError,
    InvalidMessage,
    InvalidPattern,
    PermanentError,
    SettingsError,
    TransientError,
)
from pipeline.normalize import normalize_merchant
from pipeline.settings import PipelineSettings

__all__ = [
    "BatchReport",
    "Categorizer",
    "CatfleetError",
    "InvalidMessage",
    "InvalidPattern",
    "PermanentError",
    "PipelineSettings",
    "SettingsError",
    "TransientError",
    "normalize_merchant",
]
