"""The README is the front door: every setting, command and metric the code defines is documented."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import msgspec

from pipeline.settings import Settings
from workers.cli import build_parser
from workers.config import env_name

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


def test_every_metric_is_documented() -> None:
    names = set()
    for path in (ROOT / "workers").rglob("*.py"):
        names.update(re.findall(r'"(catfleet_[a-z_]+)"', path.read_text()))
    assert len(names) > 15
    undocumented = sorted(n for n in names if n not in README and n.removesuffix("_total") not in README)
    assert undocumented == []
