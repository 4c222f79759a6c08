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
    """Each module's imports of the package's other modules (dotted within it, e.g. "engine.learner"), wherever in
    the module they are written."""
    paths = {_dotted(path.relative_to(folder)): path for path in folder.rglob("*.py")}
    modules = set(paths)
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        found = set()
        here = name.split(".")[:-1] if path.name != "__init__.py" else name.split(".")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here[: len(here) - (node.level - 1)] if node.level > 1 else here
                    stem = ".".join([*base, node.module]) if node.module else ".".join(base)
                elif (node.module or "") == package or (node.module or "").startswith(f"{package}."):
                    stem = (node.module or "").removeprefix(package).lstrip(".")
                else:
                    continue
                candidates = {stem} | {f"{stem}.{alias.name}".lstrip(".") for alias in node.names}
                found |= {module for module in candidates if module in modules}
        graph[name] = found - {name}
    return graph


def _dotted(relative: Path) -> str:
    parts = list(relative.with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts) or "__init__"


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


def test_the_core_is_layered_contract_under_engine_under_compiled():
    """The wire contract needs nothing of the engine, and the engine nothing of the compiled models."""
    graph = imports_within("fastai_serving", PACKAGES["fastai_serving"])
    below = {"contract": ("engine", "compiled"), "engine": ("compiled",)}
    crossing = [
        (module, target)
        for module, targets in graph.items()
        for target in targets
        for part, forbidden in below.items()
        if module.startswith(f"{part}.") and target.startswith(forbidden)
    ]
    assert crossing == []
