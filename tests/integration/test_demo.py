"""The main job, ``catfleet demo``, end to end on the real servers, as on a fresh machine: the
configured database does not exist yet (the demo makes ``<database>_demo`` next to it)."""

from __future__ import annotations

import re
import subprocess
import sys
import uuid

import msgspec

from workers.harness.databases import drop_database, with_dbname
from workers.harness.processes import ROOT, settings_env
from workers.settings import Settings


def test_demo_sets_itself_up_categorizes_everything_and_prints_the_summary(settings: Settings) -> None:
    missing = f"catfleet_fresh_{uuid.uuid4().hex[:8]}"
    argv = ["demo", "--expenses", "3000", "--users", "50", "--processes", "1"]
    fresh = msgspec.structs.replace(settings, database_url=with_dbname(settings.database_url, missing))
    try:
        done = subprocess.run(
            [sys.executable, "-m", "workers", *argv],
            env=settings_env(fresh),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        drop_database(settings.database_url, f"{missing}_demo")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    out = done.stdout
    assert "=== catfleet demo summary ===" in out and "workers stopped" in out
    rows = int(re.search(r"\(([\d,]+) rows in", out).group(1).replace(",", ""))  # type: ignore[union-attr]
    outcomes = re.search(
        r"categorized ([\d,]+)\s+suggested ([\d,]+)\s+uncategorized ([\d,]+)\s+missing ([\d,]+)", out
    )
    assert outcomes, out
    auto, suggest, none, gone = (int(g.replace(",", "")) for g in outcomes.groups())
    # every requested ID is accounted for: a row each for the live ones, the rest counted missing
    assert auto + suggest + none == rows and rows + gone == 3000 + 25
    assert auto > rows // 2 and re.search(r"p50 [\d,]+\s+p95 [\d,]+\s+p99 [\d,]+", out)
