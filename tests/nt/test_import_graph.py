"""The executive's shape: no import circle of more than two files in emu/nt.

Every module under emu/nt (emu/nt/mm and emu/nt/ntos too) is read with ``ast``; an
arrow goes from a module to each module of emu/nt it imports anywhere: at the top, under
``if TYPE_CHECKING:``, or inside a function (all three tie a reader of one file to the
other). ``from emu.nt import x`` is an arrow to the module ``x``; ``from emu.nt.x import
name`` to ``x`` (or to ``x.name`` when that is a module). A strongly connected component
of this graph is a set of files each reachable from every other: a circle. At most two
files may form one (a pair such as ob.py and process.py, which define each other's types).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import emu.nt

NT = Path(emu.nt.__file__).parent
LIMIT = 2
# The one circle left, inside the memory manager (address_space <-> corruption, paging):
# the fault-path work in emu/nt/mm removes it. Allowed exactly as it is, no larger.
MM_CIRCLE = ["emu.nt.mm.address_space", "emu.nt.mm.corruption", "emu.nt.mm.paging"]


def modules() -> dict[str, Path]:
    """Every module of emu/nt by dotted name (a package by its own name)."""
    found = {}
    for path in sorted(NT.rglob("*.py")):
        parts = ["emu", "nt", *path.relative_to(NT).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _owner(name: str, known: dict[str, Path]) -> str | None:
    """The module of emu/nt that ``name`` (a module or a name in one) lives in."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def _package(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def imports_of(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The modules of emu/nt that ``module`` imports, anywhere in its source."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:                       # from . import x / from .x import y
                package = _package(module, path).split(".")
                base = ".".join(package[:len(package) - node.level + 1] +
                                ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                       for alias in node.names]
        else:
            continue
        for target in targets:
            owner = _owner(target, known)
            if owner is not None and owner != module:
                out.add(owner)
    return out


def graph() -> dict[str, set[str]]:
    known = modules()
    return {m: imports_of(m, p, known) for m, p in known.items()}


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm,
    iterative), each sorted, largest first."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return sorted(found, key=lambda c: (-len(c), c))


def _cycle_in(component: list[str], edges: dict[str, set[str]]) -> list[str]:
    """One circle through the component's first module, as a path of imports (for the
    failure message: which arrows to cut)."""
    members = set(component)
    start = component[0]
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for nxt in sorted(edges[node] & members):
            if nxt == start:
                return paths[node] + [start]
            if nxt not in paths:
                paths[nxt] = paths[node] + [nxt]
                queue.append(nxt)
    return component


def test_the_graph_sees_every_kind_of_import(tmp_path):
    """The reader finds top-level, TYPE_CHECKING, function-level and ``from emu.nt import
    x`` imports (a graph that missed one kind could not fail)."""
    known = {"emu.nt.a": tmp_path / "a.py", "emu.nt.b": tmp_path / "b.py",
             "emu.nt.c": tmp_path / "c.py", "emu.nt.d": tmp_path / "d.py",
             "emu.nt.sub": tmp_path / "sub" / "__init__.py",
             "emu.nt.sub.e": tmp_path / "sub" / "e.py"}
    known["emu.nt.a"].write_text(
        "from typing import TYPE_CHECKING\n"
        "from emu.nt import b\n"
        "from emu.nt.sub.e import thing\n"
        "if TYPE_CHECKING:\n    from emu.nt.c import C\n"
        "def f():\n    import emu.nt.d\n")
    assert imports_of("emu.nt.a", known["emu.nt.a"], known) == \
        {"emu.nt.b", "emu.nt.c", "emu.nt.d", "emu.nt.sub.e"}
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"e"}, "e": {"d"}, "f": set()}
    assert circles(edges) == [["a", "b", "c"], ["d", "e"]]
    assert _cycle_in(["a", "b", "c"], edges) == ["a", "b", "c", "a"]


def test_the_executive_is_imported_by_no_module_of_emu_nt():
    """Modules take a narrow view of the executive (emu.nt.interfaces), never the class."""
    edges = graph()
    importers = sorted(m for m, targets in edges.items() if "emu.nt.kernel" in targets)
    assert importers == []


def test_the_interfaces_import_nothing_of_emu_nt_at_run_time():
    """emu.nt.interfaces sits at the bottom: whatever it names for annotations is imported
    only while type checking."""
    path = NT / "interfaces.py"
    tree = ast.parse(path.read_text())
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("emu.nt"):
            pytest.fail(f"interfaces.py imports {node.module} at run time")


def test_the_interfaces_cost_no_start_up_time():
    """Every module names emu.nt.interfaces' Protocols for type checking only: importing
    the executive never builds them (docs/performance.md, start-up)."""
    for module, path in modules().items():
        for node in ast.parse(path.read_text()).body:   # run-time imports only
            if isinstance(node, ast.ImportFrom) and node.module == "emu.nt.interfaces":
                pytest.fail(f"{module} imports emu.nt.interfaces at run time")


def test_no_import_circle_in_emu_nt_has_more_than_two_files():
    edges = graph()
    big = [c for c in circles(edges) if len(c) > LIMIT and c != MM_CIRCLE]
    message = "\n".join(f"{len(c)} files: {' -> '.join(_cycle_in(c, edges))} (all: {c})"
                        for c in big)
    assert not big, f"import circles of more than {LIMIT} files in emu/nt:\n{message}"
