"""The import graph of the project's packages (docs/architecture.md): no circle, and no import
that runs back up the layers. Imports inside functions count as much as those at the top."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("model", "stages", "engine", "jobs")

# Bottom to top. A module may import from its own layer's shared pieces and from lower
# layers; the capabilities of one layer do not import each other.
LAYERS: list[tuple[str, ...]] = [
    ("model",),
    ("stages",),
    (  # the shared pieces every capability uses
        "engine.errors",
        "engine.files",
        "engine.config",
        "engine.storage",
        "engine.sources",
        "engine.privacy",
        "engine.images",
        "engine.cluster",
        "engine.registry",
        "engine.models",
        "engine.embeddings",
        "engine.dataset",
        "engine.workers",
    ),
    ("engine.generation", "engine.training"),
    ("engine.detection", "engine.verification"),
    ("engine.campaigns",),
    ("engine.cli",),
    ("jobs",),
]
SHARED_LAYERS = (0, 1, 2)  # inside these, parts may import each other (without a circle)


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (anywhere in its body)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str | None] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {_resolve(alias.name, modules) for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets |= {_resolve(f"{node.module}.{a.name}", modules) for a in node.names}
        graph[name] = {t for t in targets if t is not None and t != name}
    return graph


def part_of(module: str) -> tuple[int, str]:
    """(layer, part): the layer index and the longest layer entry naming the module."""
    best: tuple[int, str] | None = None
    for index, parts in enumerate(LAYERS):
        for part in parts:
            if (module == part or module.startswith(part + ".")) and (
                best is None or len(part) > len(best[1])
            ):
                best = (index, part)
    if best is None:
        raise AssertionError(f"{module} is in no layer of tests/test_architecture.py")
    return best


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    wrong = []
    for module, targets in sorted(graph.items()):
        layer, part = part_of(module)
        for target in sorted(targets):
            target_layer, target_part = part_of(target)
            upward = target_layer > layer
            peer = target_layer == layer and target_part != part and layer not in SHARED_LAYERS
            if upward or peer:
                wrong.append(f"{module} -> {target}")
    return wrong


def test_every_module_has_a_layer() -> None:
    for module in import_graph():
        part_of(module)


def test_no_import_circle() -> None:
    assert circles(import_graph()) == []


def test_no_import_runs_back_up_the_layers() -> None:
    assert upward_imports(import_graph()) == []


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"a": {"b"}, "b": {"a"}, "c": set()}, [["a", "b"]]),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, [["a", "b", "c"]]),
        ({"a": {"b"}, "b": set()}, []),
    ],
)
def test_circles_are_found(graph: dict[str, set[str]], expected: list[list[str]]) -> None:
    assert circles(graph) == expected


def test_an_upward_import_is_found() -> None:
    graph = {
        "engine.models": {"engine.training.registry"},
        "engine.training.registry": set(),
        "engine.detection.job": {"engine.cli"},
        "engine.cli": set(),
        "engine.generation.job": {"engine.training.reader"},
        "engine.training.reader": set(),
        "engine.dataset.writer": {"engine.storage"},
        "engine.storage": set(),
    }
    assert upward_imports(graph) == [
        "engine.detection.job -> engine.cli",
        "engine.generation.job -> engine.training.reader",
        "engine.models -> engine.training.registry",
    ]
