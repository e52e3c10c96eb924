"""The ``catfleet`` command line: one module per top-level command, each with
``register(subparsers)`` adding its parser and ``set_defaults(func=...)``; a command function
is ``(settings, args) -> int``. A command module imports nothing heavy (drivers, brokers,
prometheus_client) until its command runs.

The settings are read from the environment once, here, before the arguments are parsed: a bad
``CATFLEET_*`` variable is reported the same way for every command, ``--help`` included."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from types import ModuleType

from pipeline.errors import CatfleetError, SettingsError
from workers.backends import backend_class
from workers.commands import (
    backfill,
    bench,
    categories,
    console,
    correct,
    demo,
    dlq,
    enqueue,
    exporter,
    migrate,
    patterns,
    queue,
    relay,
    rules,
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
    backfill,
    demo,
    status,
    exporter,
    dlq,
    settings_command,
    bench,
    relay,
    schema,
    correct,
    categories,
    patterns,
    rules,
    queue,
    console,
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
        if args.command in BROKER_COMMANDS:
            # a driver that logs each failed connection attempt before it raises: the error
            # is reported below, in one line
            backend_class(settings.broker_url).quiet_connect_logs()
        code = int(args.func(settings, args))
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except BrokenPipeError:
        return _stdout_closed()
    except CatfleetError as exc:
        return _fail(args.command, str(exc))
    except Exception as exc:
        message = _operator_error(exc, backend_class(settings.broker_url).connection_errors())
        if message is None:
            raise
        return _fail(args.command, message)


#: Short-lived commands that talk to the broker (``worker``, ``relay`` and ``exporter`` run until
#: stopped: their driver logs are the operator's view of a reconnect).
BROKER_COMMANDS = frozenset({"enqueue", "correct", "dlq", "status", "demo", "queue"})
#: Exit code of a command whose stdout was closed early (``catfleet status | head -1``).
EXIT_STDOUT_CLOSED = 1


def _fail(command: str, message: str) -> int:
    print(f"catfleet {command}: {one_line(message)}", file=sys.stderr)
    return 2


def _stdout_closed() -> int:
    """The reader went away (``| head``): stop quietly. Python's recipe (``signal`` docs, "Note on
    SIGPIPE"): point stdout at devnull so the flush at interpreter exit does not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)
    return EXIT_STDOUT_CLOSED


def _operator_error(exc: BaseException, broker_errors: tuple[type[BaseException], ...]) -> str | None:
    """One line for what an operator causes (a server down or unreachable, a file that is not
    there); None for anything else (a bug: the traceback is worth having). psycopg is looked at
    only when a command loaded it."""
    from pipeline.settings import redact

    kinds: list[type[BaseException]] = [OSError, *broker_errors]  # the broker's: Backend.connection_errors
    if "psycopg" in sys.modules:
        import psycopg

        if isinstance(exc, psycopg.errors.UndefinedTable):  # reached without translate_errors
            from pipeline.db import not_migrated

            return not_migrated(exc)
        kinds.append(psycopg.OperationalError)
    if not isinstance(exc, tuple(kinds)):
        return None
    detail = str(exc) or repr(exc)
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        detail = f"{exc.filename}: {exc.strerror}"
    return redact(f"{type(exc).__name__}: {detail}")[:500]


__all__ = ["COMMANDS", "build_parser", "main"]


def one_line(text: str) -> str:
    """An error message as one line (drivers' messages have hints on further lines)."""
    return " ".join(text.split())
