"""How the CLI and the console write ages and times for an operator (nothing heavy imported)."""

from __future__ import annotations

import datetime as dt


def format_age(seconds: float | None) -> str:
    """An age as an operator reads it: ``12.3s``, ``4.5m``, ``2.0h``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def format_time(at_ms: int | None) -> str:
    """A time in ms since the epoch as ``YYYY-MM-DD HH:MM:SS`` (UTC); ``-`` when unknown."""
    if not at_ms:
        return "-"
    return dt.datetime.fromtimestamp(at_ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
