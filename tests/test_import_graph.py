"""The core's and the client's modules import each other without a cycle, function-local imports counted."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {
    "fastai_serving": ROOT / "handler" / "fastai_serving",
    "fastai_serving_client": ROOT / "client" / "fastai_serving_client",
}


def imports_within(package: str, folder: Path) -> dict[str, set[str]]:
    """Each module's imports of its sibling modules, wherever in the module they are written."""
    modules = {path.stem for path in folder.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for name in modules:
        found = set()
        for node in ast.walk(ast.parse((folder / f"{name}.py").read_text())):
            if isinstance(node, ast.ImportFrom):
                absolute = node.module or ""
                if node.level == 1:
                    targets = [absolute] if absolute else [alias.name for alias in node.names]
                elif absolute.startswith(f"{package}."):
                    targets = [absolute.split(".")[1]]
                elif absolute == package:
                    targets = [alias.name for alias in node.names]
                else:
                    targets = []
                found |= {target.split(".")[0] for target in targets} & modules
        graph[name] = found - {name}
    return graph


def a_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle in `graph` as the modules along it, or [] when there is none."""
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> list[str]:
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := visit(target, [*path, target])):
                return cycle
        state[node] = "done"
        return []

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return []


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_no_module_of_the_package_imports_itself_through_another(package):
    graph = imports_within(package, PACKAGES[package])
    assert graph, f"no modules found for {package}"
    assert a_cycle(graph) == []


def test_the_cycle_finder_finds_a_cycle_through_a_function_local_import():
    assert a_cycle({"learner": {"tabular"}, "tabular": {"learner", "predict"}, "predict": set()}) == [
        "learner",
        "tabular",
        "learner",
    ]
