"""The package's import graph (read with ``ast``, nothing imported) has no cycle and keeps
the layering rules of docs/design: methods never import the engine or training; merging
imports nothing outside itself but the bottom layer; data and models never import each
other; no private (underscore) name is imported across packages.

An edge that a planned move will remove may be listed in ``PENDING`` with its reason while
the move is under way (a stale entry fails ``test_pending_edges_still_exist``, so the list
cannot outlive its edges); it is empty now.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "manytask"

# (importer, imported) -> reason. Only edges whose removal is another issue's planned move.
PENDING: dict[tuple[str, str], str] = {}
# The bottom layer every package may use.
BOTTOM = ("manytask.registry", "manytask.files", "manytask.finite", "manytask.locks")
ENGINE = ("manytask.engine", "manytask.backward", "manytask.gradients", "manytask.flat",
          "manytask.training")


@dataclass(frozen=True)
class Import:
    importer: str
    target: str  # the manytask module imported (or the one that defines the name)
    names: tuple[str, ...]
    line: int

    def __str__(self) -> str:
        return f"{self.importer} -> {self.target} (line {self.line})"


def modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        found[".".join(parts)] = path
    return found


def resolve(name: str, known: dict[str, Path]) -> str | None:
    while name and name not in known:
        name = name.rsplit(".", 1)[0] if "." in name else ""
    return name or None


def ancestor(target: str, module: str) -> bool:
    """The module itself or a package above it (importing one's own package is no edge)."""
    return target == module or module.startswith(target + ".")


def imports(known: dict[str, Path]) -> Iterator[Import]:
    """Every import of a manytask module, module-level or inside a function."""
    for module, path in known.items():
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    target = resolve(alias.name, known)
                    if target and not ancestor(target, module):
                        yield Import(module, target, (), node.lineno)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    parts = parts[: len(parts) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                if not base.startswith("manytask"):
                    continue
                for alias in node.names:
                    # `from pkg import sub` imports the submodule; else a name of `base`
                    target = resolve(f"{base}.{alias.name}", known) or ""
                    name = () if target == f"{base}.{alias.name}" else (alias.name,)
                    target = target if not name else (resolve(base, known) or "")
                    if target and not ancestor(target, module):
                        yield Import(module, target, name, node.lineno)


KNOWN = modules()
EDGES = list(imports(KNOWN))


def package(module: str) -> str:
    """``manytask.X`` for modules of subpackage X; the module itself at the top level."""
    parts = module.split(".")
    return ".".join(parts[:2])


def under(module: str, prefixes: tuple[str, ...] | str) -> bool:
    prefixes = (prefixes,) if isinstance(prefixes, str) else prefixes
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def live(edge: Import) -> bool:
    return (edge.importer, edge.target) not in PENDING


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == node:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_no_module_cycle() -> None:
    graph: dict[str, set[str]] = {m: set() for m in KNOWN}
    for e in filter(live, EDGES):
        graph[e.importer].add(e.target)
    assert cycles(graph) == []


def test_no_package_cycle() -> None:
    graph: dict[str, set[str]] = {package(m): set() for m in KNOWN}
    for e in filter(live, EDGES):
        a, b = package(e.importer), package(e.target)
        if a != b:
            graph[a].add(b)
    assert cycles(graph) == []


def test_methods_never_import_the_engine_or_training() -> None:
    methods = ("manytask.balancers", "manytask.merging.methods")
    bad = [str(e) for e in EDGES
           if live(e) and under(e.importer, methods) and under(e.target, ENGINE)]
    assert bad == []


def test_merging_imports_only_itself_and_the_bottom_layer() -> None:
    bad = [str(e) for e in EDGES if live(e) and under(e.importer, "manytask.merging")
           and not under(e.target, ("manytask.merging", *BOTTOM))]
    assert bad == []


def test_data_and_models_never_import_each_other() -> None:
    bad = [str(e) for e in EDGES if live(e) and (
        (under(e.importer, "manytask.data") and under(e.target, "manytask.models"))
        or (under(e.importer, "manytask.models") and under(e.target, "manytask.data")))]
    assert bad == []


def test_no_private_name_is_imported_across_packages() -> None:
    bad = [f"{e}: {', '.join(e.names)}" for e in EDGES
           if live(e) and package(e.importer) != package(e.target)
           and any(n.startswith("_") for n in e.names)]
    bad += [str(e) for e in EDGES if live(e) and package(e.importer) != package(e.target)
            and any(p.startswith("_") and p != "__init__" for p in e.target.split("."))]
    assert bad == []


def test_pending_edges_still_exist() -> None:
    present = {(e.importer, e.target) for e in EDGES}
    assert sorted(set(PENDING) - present) == []


@pytest.mark.parametrize(("source", "expected"), [
    ({"a": {"b"}, "b": {"a"}, "c": set()}, [["a", "b"]]),
    ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"d"}}, [["a", "b", "c"]]),
])
def test_the_cycle_finder_finds_cycles(source: dict[str, set[str]],
                                       expected: list[list[str]]) -> None:
    assert cycles(source) == expected
