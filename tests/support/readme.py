"""Code blocks and sections of the README that tests read verbatim, so the documented steps
cannot drift, and what deploy/ defines (Procfile types, systemd units, alerts) for the tests
that hold the README to it."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from workers.harness.processes import ROOT


def readme_block(marker: str, lang: str = "sh") -> str:
    """The one ```lang block of README.md that starts with the line ``marker``."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(rf"^```{re.escape(lang)}\n(.*?)^```", text, re.S | re.M)
    [block] = [b for b in blocks if b.startswith(marker)]
    return str(block)


def readme_section(heading: str) -> str:
    """The text under the README heading ``heading`` (e.g. ``"## Commands"``), up to the next
    heading of the same or a higher level."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    level = len(heading) - len(heading.lstrip("#"))
    start = text.index(f"\n{heading}\n") + len(heading) + 2
    end = re.search(rf"^#{{1,{level}}} ", text[start:], re.M)
    return text[start : start + end.start()] if end else text[start:]


# -- what deploy/ defines, for the tests that hold the README and the manifests to it -------------

DEPLOY = ROOT / "deploy"


def procfile() -> dict[str, str]:
    """The Procfile's process types and their commands."""
    lines = (ROOT / "Procfile").read_text().splitlines()
    pairs = (line.split(":", 1) for line in lines if line.strip() and not line.startswith("#"))
    return {name.strip(): command.strip() for name, command in pairs}


#: A systemd unit as {section: {key: [values, in order]}} (keys such as After= may repeat).
Unit = dict[str, dict[str, list[str]]]


def systemd_unit(path: Path) -> Unit:
    unit: Unit = {}
    section: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = unit.setdefault(line.strip("[]"), {})
        else:
            key, _, value = line.partition("=")
            section.setdefault(key.strip(), []).append(value.strip())
    return unit


def systemd_units() -> dict[str, Unit]:
    """deploy/systemd's units by file name (``catfleet-worker.service``)."""
    return {p.name: systemd_unit(p) for p in sorted((DEPLOY / "systemd").glob("*.service"))}


def alert_names() -> set[str]:
    """The alerts of deploy/prometheus/alerts.yml."""
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    return {rule["alert"] for group in rules["groups"] for rule in group["rules"] if "alert" in rule}
