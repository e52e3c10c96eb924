"""The README is the front door: every setting, command and metric the code defines is documented,
and every Procfile process type, systemd unit and alert of deploy/ is named, none that does not exist."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import msgspec

from tests.support.readme import alert_names, procfile, readme_section, systemd_units
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


def test_every_command_has_a_row_in_the_commands_table() -> None:
    """Mentioned somewhere is not enough: the Commands table lists every command, except the
    ``dlq`` subcommands, which their own section (*Dead letters*) documents."""
    rows = [line for line in readme_section("## Commands").splitlines() if line.startswith("| `catfleet")]
    commands = _commands(build_parser(), "catfleet")
    own_section = [c for c in commands if c.startswith("catfleet dlq")]
    assert own_section
    dead_letters = readme_section("## Dead letters")
    assert [c for c in own_section if c.removeprefix("catfleet ") not in dead_letters] == []
    missing = [
        c
        for c in commands
        if c not in own_section and not any(re.search(rf"`{re.escape(c)}[ `]", r) for r in rows)
    ]
    assert missing == []


#: A list of Procfile process types in prose: "the `Procfile` types `worker`, `migrate` and
#: `relay`", "(Procfile process `relay`)".
_PROCFILE_LIST = re.compile(r"Procfile`?[^`.\n]{0,40}?((?:`[a-z][a-z-]*`(?:,? and |, |,? or )?)+)")


def _procfile_lists() -> list[set[str]]:
    prose = " ".join(README.split())
    return [set(re.findall(r"`([a-z-]+)`", m.group(1))) for m in _PROCFILE_LIST.finditer(prose)]


def test_procfile_types_named_in_the_readme_exist_and_all_are_named() -> None:
    types = set(procfile())
    lists = _procfile_lists()
    assert len(lists) >= 2
    assert [sorted(named - types) for named in lists if named - types] == []
    # the lists that claim to be complete (Layout and Running in production) name them all
    for heading in ("### Layout", "## Running in production"):
        section = " ".join(readme_section(heading).split())
        complete = [set(re.findall(r"`([a-z-]+)`", m.group(1))) for m in _PROCFILE_LIST.finditer(section)]
        assert complete == [types], heading


def test_systemd_units_named_in_the_readme_exist_and_all_are_named() -> None:
    """A unit is named with its suffix (`catfleet-worker.service`); `catfleet-worker` alone is a
    process or a Kubernetes object."""
    named = set(re.findall(r"`(catfleet-[a-z-]+\.service)`", README))
    units = set(systemd_units())
    assert len(units) >= 4
    assert named == units


def test_alerts_named_in_the_readme_exist_and_all_are_named() -> None:
    named = {n for n in re.findall(r"`(Catfleet[A-Z][A-Za-z]+)`", README) if not n.endswith("Error")}
    alerts = alert_names()
    assert len(alerts) >= 8
    assert named == alerts
    production = readme_section("## Running in production")
    assert [a for a in alerts if f"`{a}`" not in production] == []  # the list of alerts is complete
