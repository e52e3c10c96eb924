"""The layers, read from the imports of every module (those inside functions too):
``schemas`` <- ``pipeline`` <- ``workers``, and the product never depends on the benchmarks,
the demo or the harness (tooling for them and the tests)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("schemas", "pipeline", "workers")
TOOLING = ("workers.bench", "workers.demo", "workers.harness")
#: Modules allowed to import the tooling: the tooling itself and the command line.
TOOLING_USERS = (*TOOLING, "workers.commands")


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _imports(path: Path, module: str) -> set[str]:
    """Every module ``module`` imports anywhere in its body (``from a import b``: ``a`` and ``a.b``)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _modules() -> dict[str, set[str]]:
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = _imports(path, name)
    return modules


MODULES = _modules()


def _violations(importers: tuple[str, ...], forbidden: tuple[str, ...], *, negate: bool = False) -> list[str]:
    return sorted(
        f"{module} imports {name}"
        for module, names in MODULES.items()
        if _within(module, importers) != negate
        for name in names
        if _within(name, forbidden)
    )


def test_the_walk_sees_every_module_and_imports_inside_functions() -> None:
    assert len(MODULES) > 50
    assert "workers.bench.env" in MODULES["workers.commands.bench"]  # imported inside ``run``


def test_pipeline_and_schemas_do_not_import_workers() -> None:
    assert _violations(("pipeline", "schemas"), ("workers",)) == []


def test_schemas_do_not_import_pipeline() -> None:
    assert _violations(("schemas",), ("pipeline",)) == []


def test_the_product_does_not_import_the_benchmarks_demo_or_harness() -> None:
    assert _violations(TOOLING_USERS, TOOLING, negate=True) == []


def test_the_harness_does_not_import_the_benchmarks_or_demo() -> None:
    assert _violations(("workers.harness",), ("workers.bench", "workers.demo")) == []
