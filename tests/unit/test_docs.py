"""The README is the front door: every setting, command and metric the code defines is documented."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import msgspec

from workers.commands import build_parser
from workers.config import env_name
from workers.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_every_setting_is_documented() -> None:
    missing = [env_name(f.name) for f in msgspec.structs.fields(Settings) if env_name(f.name) not in README]
    assert missing == []


def _commands(parser: argparse.ArgumentParser, prefix: str) -> list[str]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.append(f"{prefix} {name}")
                found.extend(_commands(sub, f"{prefix} {name}"))
    return found


def test_every_command_is_documented() -> None:
    commands = _commands(build_parser(), "catfleet")
    assert len(commands) > 20
    assert [c for c in commands if f"`{c}" not in README] == []


def _metric_names_in_code() -> set[str]:
    names = set()
    for path in (ROOT / "workers").rglob("*.py"):
        names.update(re.findall(r'"(catfleet_[a-z_]+)"', path.read_text()))
    return names


#: A metric as the README names it: first cell of a metrics-table row, a name with labels
#: (``name{label}``), or a name with a Prometheus sample suffix. Other ``catfleet_*`` words in
#: the README are tables, functions and channels, not metrics.
_README_METRIC = re.compile(
    r"^\| `(catfleet_[a-z_]+)"
    r"|`(catfleet_[a-z_]+)\{"
    r"|`(catfleet_[a-z_]+_(?:total|seconds|bucket|count|sum))`",
    re.MULTILINE,
)


def test_every_metric_is_documented() -> None:
    names = _metric_names_in_code()
    assert len(names) > 15
    undocumented = sorted(n for n in names if n not in README and n.removesuffix("_total") not in README)
    assert undocumented == []


def test_every_documented_metric_exists() -> None:
    """The other direction: a metric the README names is one the code defines (a counter is
    defined without its ``_total`` sample suffix)."""
    code = _metric_names_in_code()
    documented = {name for match in _README_METRIC.findall(README) for name in match if name}
    assert len(documented) > 15
    unknown = sorted(n for n in documented if n not in code and n.removesuffix("_total") not in code)
    assert unknown == []
