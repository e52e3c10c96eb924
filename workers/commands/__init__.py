"""The ``catfleet`` command line: one module per top-level command, each with
``register(subparsers)`` adding its parser and ``set_defaults(func=...)``; a command function
is ``(settings, args) -> int``. A command module imports nothing heavy (drivers, brokers,
prometheus_client) until its command runs.

The settings are read from the environment once, here, before the arguments are parsed: a bad
``CATFLEET_*`` variable is reported the same way for every command, ``--help`` included."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from types import ModuleType

from pipeline.errors import CatfleetError, SettingsError
from workers.commands import (
    bench,
    correct,
    demo,
    dlq,
    enqueue,
    exporter,
    migrate,
    patterns,
    relay,
    schema,
    status,
    worker,
)
from workers.commands import settings as settings_command

#: The top-level commands, in the order ``catfleet --help`` lists them.
COMMANDS: tuple[ModuleType, ...] = (
    migrate,
    worker,
    enqueue,
    demo,
    status,
    exporter,
    dlq,
    settings_command,
    bench,
    relay,
    schema,
    correct,
    patterns,
)

DESCRIPTION = "The ``catfleet`` command line. Reads the settings from the environment once, here."


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="catfleet", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from workers.config import settings_from_env
    from workers.logs import setup_logging

    try:
        settings = settings_from_env()
    except SettingsError as exc:
        print(f"catfleet: {one_line(str(exc))}", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    try:
        setup_logging(settings)
        return int(args.func(settings, args))
    except CatfleetError as exc:
        print(f"catfleet {args.command}: {one_line(str(exc))}", file=sys.stderr)
        return 2


__all__ = ["COMMANDS", "build_parser", "main"]


def one_line(text: str) -> str:
    """An error message as one line (drivers' messages have hints on further lines)."""
    return " ".join(text.split())
