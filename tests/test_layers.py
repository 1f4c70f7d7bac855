"""Imports point down the layers (README "Layout"): no module imports a layer above its own, and
the package graph has no cycles. Every import counts, also one indented in a function."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "parcae_scaling"
ROOT = Path(__file__).resolve().parents[1]

# Bottom to top. A module belongs to the longest prefix listed; it may import its own layer and
# those below. Same-layer imports must not form a cycle (checked separately).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("parcae_scaling", "parcae_scaling.kernels"),  # the package root holds only __version__
    ("parcae_scaling.scaling",),  # the fit library: pure functions on DataFrames
    ("parcae_scaling.model",),  # architecture, parameters, FLOPs, and the run contracts
    ("parcae_scaling.model.train",),  # the training loop, data, checkpoints, distributed setup
    ("parcae_scaling.db",),  # the store and the sinks that write to it
    ("parcae_scaling.sweeps",),  # specs, plans, backends, launch / resume / status
    ("parcae_scaling.scaling.report",),  # analyses, figures and reports over the store
    ("parcae_scaling.cli", "parcae_scaling.fit_cli"),  # the two Typer apps
)
SKIP_DIRS = {"tests", "bench", "notebooks", "docs", "build", ".venv", ".git"}


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([PACKAGE, *parts])


def source_modules(root: Path = ROOT) -> dict[str, Path]:
    return {module_name(p, root): p for p in root.rglob("*.py")
            if not SKIP_DIRS & set(p.relative_to(root).parts[:-1])}


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """Package modules `path` imports anywhere in its body (a `from m import name` counts as
    m.name when that is a module, else as m)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                names.add(full if full in known else node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {n for n in names if n == PACKAGE or n.startswith(PACKAGE + ".")}


def layer_of(module: str) -> int:
    best, rank = -1, -1
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), i
    if rank < 0:
        raise ValueError(f"module {module} is in no layer; add its package to LAYERS in {__file__}")
    return rank


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    modules = source_modules(root)
    return {m: imported_modules(p, set(modules)) - {m} for m, p in modules.items()}


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{m} (layer {layer_of(m)}) imports {t} (layer {layer_of(t)})"
                  for m, targets in graph.items() for t in targets if layer_of(t) > layer_of(m))


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _package_parents(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """A package's __init__ importing its own submodules is not a cycle of ideas; drop those edges."""
    return {m: {t for t in ts if not t.startswith(m + ".")} for m, ts in graph.items()}


def test_every_module_is_in_a_layer() -> None:
    for module in source_modules():
        layer_of(module)


def test_no_module_imports_a_layer_above_its_own() -> None:
    assert upward_imports(import_graph()) == []


def test_the_import_graph_has_no_cycles() -> None:
    assert cycles(_package_parents(import_graph())) == []


@pytest.fixture
def fake_tree(tmp_path: Path) -> Path:
    (tmp_path / "__init__.py").write_text("")
    for pkg in ("model", "db", "sweeps"):
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "model" / "config.py").write_text("X = 1\n")
    (tmp_path / "db" / "store.py").write_text("from parcae_scaling.model.config import X\n")
    return tmp_path


def test_the_checks_catch_an_upward_import_and_a_cycle(fake_tree: Path) -> None:
    assert upward_imports(import_graph(fake_tree)) == []
    (fake_tree / "model" / "config.py").write_text(
        "X = 1\n\ndef late():\n    from parcae_scaling.db.store import X  # indented imports count too\n")
    graph = import_graph(fake_tree)
    assert upward_imports(graph) == [
        "parcae_scaling.model.config (layer 2) imports parcae_scaling.db.store (layer 4)"]
    assert cycles(graph) == [["parcae_scaling.db.store", "parcae_scaling.model.config"]]
