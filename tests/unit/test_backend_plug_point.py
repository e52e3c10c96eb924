"""The broker backends are the one plug point: nothing outside ``workers/backends`` asks which
broker it is, and the import graph of the packages has no cycle (function-level and type-checking imports count)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from workers.backends import BACKENDS, backend_class
from workers.backends.memory import MemoryBackend
from workers.backends.rabbitmq import RabbitmqBackend
from workers.backends.redis import RedisBackend

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("schemas", "pipeline", "workers")

#: What asking for the broker kind looks like: a broker class, a URL scheme test, a kind compare.
KIND_QUESTIONS = re.compile(
    r"RedisBroker|RabbitmqBroker|StubBroker|MemoryBroker|\bpika\b|dramatiq\.brokers"
    r"|broker_url\.(startswith|split|partition)|\bbackend\w*\.kind\s*[!=]=|isinstance\([^)]*Backend\b"
)


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _docstring_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            value = body[0].value
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                lines |= set(range(body[0].lineno, (body[0].end_lineno or body[0].lineno) + 1))
    return lines


def test_no_module_outside_the_backends_asks_which_broker_it_is() -> None:
    """Docstrings and comments may name brokers; code may not ask."""
    offenders = []
    for name, path in sorted(MODULES.items()):
        if name.startswith("workers.backends"):
            continue
        text = path.read_text()
        prose = _docstring_lines(ast.parse(text))
        for lineno, line in enumerate(text.splitlines(), 1):
            code = line.split("  #", 1)[0]
            if lineno not in prose and not line.lstrip().startswith("#") and KIND_QUESTIONS.search(code):
                offenders.append(f"{path.relative_to(ROOT)}:{lineno}: {line.strip()}")
    assert offenders == []


def test_the_kind_questions_are_recognised() -> None:
    """The pattern above is not vacuous: each way of asking is caught."""
    for line in (
        "isinstance(broker, RedisBroker)",
        'settings.broker_url.startswith(("amqp://",))',
        'if settings.broker_url.startswith("redis"):',
        'if backend.kind == "redis":',
        "import pika",
        "from dramatiq.brokers.redis import RedisBroker",
    ):
        assert KIND_QUESTIONS.search(line), line


def _imports(name: str, path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):  # ``if TYPE_CHECKING:`` imports count too: no cycle, even for types
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        out |= {t for t in targets if t in MODULES and t != name}
    return out


def test_the_import_graph_has_no_cycle() -> None:
    graph = {name: _imports(name, path) for name, path in MODULES.items()}
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert cycles == []


def test_the_graph_sees_function_level_imports() -> None:
    """``open_store`` imports the backends inside the function: that edge is in the graph."""
    assert "workers.backends" in _imports("workers.dlq", MODULES["workers.dlq"])


@pytest.mark.parametrize(
    ("url", "cls"),
    [
        ("redis://127.0.0.1:6379/0", RedisBackend),
        ("rediss://cache.example:6380/0", RedisBackend),
        ("amqp://guest:guest@127.0.0.1:5672/%2F", RabbitmqBackend),
        ("amqps://h/%2F", RabbitmqBackend),
        ("memory://", MemoryBackend),
    ],
)
def test_the_backend_is_chosen_once_from_the_url(url: str, cls: type) -> None:
    assert backend_class(url) is cls
    assert any(url.startswith(s) for s in BACKENDS)


def test_an_unknown_scheme_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"no broker backend for 'kafka' URLs; known: redis://"):
        backend_class("kafka://x")
