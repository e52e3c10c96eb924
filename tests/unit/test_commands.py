"""The command registry: one module per top-level command in ``workers.commands``, and a bad
``CATFLEET_*`` variable reported the same way by every command and subcommand."""

from __future__ import annotations

import argparse
import os
import pkgutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import workers.commands
from workers.commands import COMMANDS, build_parser
from workers.config import ENV_PREFIX

ROOT = Path(__file__).resolve().parents[2]
#: Modules of ``workers.commands`` that hold helpers, not a command.
HELPERS = {"args"}


def _chains(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], list[argparse.ArgumentParser]]]:
    """Every command path (``()`` is ``catfleet`` itself) with the parsers along it."""

    def walk(
        p: argparse.ArgumentParser, path: tuple[str, ...], chain: list[argparse.ArgumentParser]
    ) -> Iterator[tuple[tuple[str, ...], list[argparse.ArgumentParser]]]:
        yield path, chain
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from walk(sub, (*path, name), [*chain, sub])

    yield from walk(parser, path, [parser])


def _is_leaf(parser: argparse.ArgumentParser) -> bool:
    return not any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)


PATHS = [path for path, _ in _chains(build_parser())]


def _name(module: object) -> str:
    return str(getattr(module, "__name__", "")).rpartition(".")[2]


def test_every_command_module_is_registered() -> None:
    modules = {m.name for m in pkgutil.iter_modules(workers.commands.__path__)} - HELPERS
    assert sorted(_name(m) for m in COMMANDS) == sorted(modules)
    assert len(COMMANDS) == len(modules)


def test_each_module_registers_exactly_the_command_named_like_it() -> None:
    for module in COMMANDS:
        sub = argparse.ArgumentParser().add_subparsers()
        module.register(sub)
        assert list(sub.choices) == [_name(module).replace("_", "-")]


def test_every_command_has_a_function() -> None:
    leaves = [(path, chain) for path, chain in _chains(build_parser()) if path and _is_leaf(chain[-1])]
    assert len(leaves) > 20
    missing = [path for path, chain in leaves if not any(callable(p.get_default("func")) for p in chain)]
    assert missing == []


def _help(path: tuple[str, ...], extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env.update(extra)
    return subprocess.run(
        [sys.executable, "-m", "workers", *path, "--help"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _run_all(cases: list[tuple[tuple[str, ...], dict[str, str]]]) -> list[subprocess.CompletedProcess[str]]:
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda case: _help(*case), cases))


def test_a_bad_setting_is_one_line_and_exit_code_2_for_every_command() -> None:
    bad = [({"CATFLEET_BATCH_SIZE": "0"}, "CATFLEET_BATCH_SIZE"), ({"CATFLEET_NOPE": "1"}, "CATFLEET_NOPE")]
    cases = [(path, env) for path in PATHS for env, _ in bad]
    wrong = []
    for (path, env), out in zip(cases, _run_all(cases), strict=True):
        variable = next(iter(env))
        lines = out.stderr.strip().splitlines()
        if not (
            out.returncode == 2
            and len(lines) == 1
            and lines[0].startswith("catfleet: ")
            and variable in lines[0]
            and "Traceback" not in out.stderr
            and out.stdout == ""
        ):
            wrong.append(
                (" ".join(["catfleet", *path, "--help"]), variable, out.returncode, out.stderr[-500:])
            )
    assert wrong == []


def test_help_exits_0_for_every_command_with_a_clean_environment() -> None:
    cases: list[tuple[tuple[str, ...], dict[str, str]]] = [(path, {}) for path in PATHS]
    wrong = [
        (" ".join(["catfleet", *path]), out.returncode, out.stderr[-500:])
        for (path, _), out in zip(cases, _run_all(cases), strict=True)
        if out.returncode != 0 or not out.stdout.startswith("usage: catfleet")
    ]
    assert wrong == []
