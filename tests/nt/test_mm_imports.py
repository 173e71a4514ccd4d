"""The memory manager's modules import one another without a circle (issue 13's brief: the
3-file circle address_space -> corruption -> address_space, address_space -> paging ->
address_space is broken with protocols). Every import counts, those under TYPE_CHECKING and
inside functions too: a circle of type-only imports is still a circle to a reader."""

from __future__ import annotations

import ast
from pathlib import Path

import emu.nt.mm

MM = Path(emu.nt.mm.__file__).parent
PACKAGE = "emu.nt.mm"


def _imports(path: Path) -> set[str]:
    """The emu.nt.mm modules ``path`` imports, by their short names."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            if name.startswith(PACKAGE + ".") and (MM / f"{name.split('.')[3]}.py").exists():
                found.add(name.split(".")[3])
    return found - {path.stem}


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_memory_manager_modules_import_one_another_without_a_circle():
    graph = {path.stem: _imports(path) for path in sorted(MM.glob("*.py"))}
    assert "corruption" in graph["address_space"] and "paging" in graph["address_space"]
    assert _circles(graph) == []


def test_the_circle_finder_finds_a_circle_of_three():
    graph = {"address_space": {"corruption", "paging"}, "corruption": {"address_space"},
             "paging": {"address_space", "corruption"}, "pfn": set()}
    assert _circles(graph) == [["address_space", "corruption", "paging"]]
