"""The model registry has one interface and one module per backend, and no import cycle anywhere in the package."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "plugins" / "edge_training"
REGISTRY_MODULES = [
    "edge_training.registry",
    "edge_training.registry.base",
    "edge_training.registry.locks",
    "edge_training.registry.mlflow_registry",
    "edge_training.registry.azureml_registry",
]


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph(include_function_level: bool) -> dict[str, set[str]]:
    """Module -> the package modules it imports (a dotted import names the submodule it reaches)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        nodes = ast.walk(tree) if include_function_level else tree.body
        for node in nodes:
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for target in targets:
                if target in modules and target != name:
                    graph[name].add(target)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_module_level_import_cycle_in_the_package():
    assert _cycle(_import_graph(include_function_level=False)) is None


def test_registry_modules_form_no_cycle_even_counting_imports_inside_functions():
    graph = _import_graph(include_function_level=True)
    registry = {m: {t for t in graph[m] if t.startswith("edge_training.registry")} for m in REGISTRY_MODULES}
    assert _cycle(registry) is None, registry
    # Backends depend on the interface only, never on each other or on the package that picks them.
    for backend in ("edge_training.registry.mlflow_registry", "edge_training.registry.azureml_registry"):
        assert registry[backend] <= {"edge_training.registry.base", "edge_training.registry.locks"}, registry[backend]


def test_the_checker_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]


@pytest.mark.parametrize("module", REGISTRY_MODULES)
def test_each_registry_module_imports_alone(module):
    done = subprocess.run(
        [sys.executable, "-c", f"import {module}"],
        cwd=ROOT,
        env={"PYTHONPATH": f"{ROOT / 'plugins'}:{ROOT}", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
