"""Each part of the executive uses only the view of it that it names (issue 12, item 9).

emu/nt/interfaces.py defines narrow ``typing.Protocol`` views of the executive
(KernelMemory, TrapPath, ObjectManager...). A function of emu/nt whose parameter is
annotated with one of them promises to use nothing else of the executive through it.
Nothing checks that at run time (the Protocols are imported only while type checking and
the project runs no type checker), so this test reads every module with ``ast``:

- every attribute read, written or called on such a parameter (``ex.kernel_read(...)``,
  ``ex.irql = 2``) must be a member of its Protocol or of a Protocol it inherits from;
- where the parameter is handed on whole to another function of emu/nt whose own
  parameter names a view (``rtl.read(ex, ...)``), the caller's view must hold every member
  of the callee's: a narrow view cannot lend what it does not have.

A nested function (a closure) that uses the parameter counts as its enclosing function's
use, unless it binds the same name itself.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

import emu.nt

NT = Path(emu.nt.__file__).parent
INTERFACES = "emu.nt.interfaces"


def protocols(source: str) -> dict[str, set[str]]:
    """Each Protocol class of the interfaces module -> its members, inherited ones too."""
    tree = ast.parse(source)
    own: dict[str, set[str]] = {}
    bases: dict[str, list[str]] = {}
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        names = [b.id for b in node.bases if isinstance(b, ast.Name)]
        if "Protocol" not in names:
            continue
        members = set()
        for item in node.body:
            if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                members.add(item.target.id)
            elif isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                members.add(item.name)
        own[node.name] = members
        bases[node.name] = [b for b in names if b != "Protocol"]

    def closed(name: str) -> set[str]:
        out = set(own[name])
        for base in bases[name]:
            if base in own:
                out |= closed(base)
        return out

    return {name: closed(name) for name in own}


@dataclass
class Use:
    """One function's parameter annotated with a view, and what the body does with it."""

    module: str
    function: str
    param: str
    view: str
    line: int
    attributes: dict[str, int] = field(default_factory=dict)     # name -> first line
    handed_on: list[tuple[str, int, int]] = field(default_factory=list)  # callee, arg, line


def _view_names(tree: ast.Module) -> dict[str, str]:
    """Local name -> Protocol name, for every ``from emu.nt.interfaces import X [as Y]``."""
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == INTERFACES:
            for alias in node.names:
                out[alias.asname or alias.name] = alias.name
    return out


def _callables(module: str, tree: ast.Module) -> dict[str, str]:
    """Local name -> dotted target for functions and modules this module can call:
    its own top-level functions, ``from emu.nt.x import f``, ``from emu.nt import x``,
    ``from emu.nt.x import y as z`` and ``import emu.nt.x as x``."""
    out = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out[node.name] = f"{module}.{node.name}"
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("emu.nt"):
            for alias in node.names:
                out[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("emu.nt") and alias.asname:
                    out[alias.asname] = alias.name
    return out


def _annotation_name(node: ast.expr | None) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value.strip()
    return None


def _params(fn: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> list[ast.arg]:
    a = fn.args
    return [*a.posonlyargs, *a.args, *a.kwonlyargs,
            *([a.vararg] if a.vararg else []), *([a.kwarg] if a.kwarg else [])]


def _walk_uses(node: ast.AST, names: set[str]):
    """Every node under ``node``, not entering a nested function or lambda that binds one
    of ``names`` itself."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) and \
                names & {p.arg for p in _params(child)}:
            continue
        yield child
        yield from _walk_uses(child, names)


def _callee(func: ast.expr, callables: dict[str, str]) -> str | None:
    """The dotted name a call goes to: ``f(...)`` or ``module.f(...)``."""
    if isinstance(func, ast.Name):
        return callables.get(func.id)
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and \
            func.value.id in callables:
        return f"{callables[func.value.id]}.{func.attr}"
    return None


def _is_ref(node: ast.AST, names: set[str], stored: str | None) -> bool:
    """``node`` is the view: one of ``names``, or ``self.<stored>``."""
    if isinstance(node, ast.Name):
        return node.id in names
    return stored is not None and isinstance(node, ast.Attribute) and \
        node.attr == stored and isinstance(node.value, ast.Name) and node.value.id == "self"


def _collect(use: Use, fn: ast.AST, names: set[str], stored: str | None,
             callables: dict[str, str]) -> None:
    """Add to ``use`` what ``fn`` does with the view, held as one of ``names`` or as
    ``self.<stored>``; a local bound to it (``ex = self.ex``) is followed too."""
    names = set(names)
    for node in _walk_uses(fn, names):             # aliases first: ex = self.ex
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
            pairs = zip(target.elts, value.elts, strict=False) \
                if isinstance(target, ast.Tuple) and \
                isinstance(value, ast.Tuple) else [(target, value)]
            for t, v in pairs:
                if isinstance(t, ast.Name) and _is_ref(v, names, stored):
                    names.add(t.id)
    for node in _walk_uses(fn, names):
        if isinstance(node, ast.Attribute) and _is_ref(node.value, names, stored):
            use.attributes.setdefault(node.attr, node.lineno)
        elif isinstance(node, ast.Call):
            target = _callee(node.func, callables)
            if target is None:
                continue
            for i, arg in enumerate(node.args):
                if _is_ref(arg, names, stored):
                    use.handed_on.append((target, i, node.lineno))


def uses_in(module: str, source: str, views: set[str]) -> list[Use]:
    """Every parameter of a function of ``module`` annotated with a view, and its uses;
    for a class that keeps such a parameter of its ``__init__`` as ``self.<name>``, every
    method's uses of ``self.<name>`` too."""
    tree = ast.parse(source)
    local = {k: v for k, v in _view_names(tree).items() if v in views}
    callables = _callables(module, tree)
    found = []
    scope: list[str] = []

    def view_of(param: ast.arg) -> str | None:
        return local.get(_annotation_name(param.annotation) or "")

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                scope.append(child.name)
                visit(child)
                _stored_views(child)
                scope.pop()
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                scope.append(child.name)
                for param in _params(child):
                    view = view_of(param)
                    if view is not None:
                        use = Use(module, ".".join(scope), param.arg, view, child.lineno)
                        _collect(use, child, {param.arg}, None, callables)
                        found.append(use)
                visit(child)
                scope.pop()
            else:
                visit(child)

    def _stored_views(cls: ast.ClassDef) -> None:
        methods = [n for n in cls.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        init = next((m for m in methods if m.name == "__init__"), None)
        if init is None:
            return
        params = {p.arg: view_of(p) for p in _params(init) if view_of(p) is not None}
        for node in ast.walk(init):
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Name) and \
                    node.value.id in params:
                for target in node.targets:
                    if _is_ref(target, set(), getattr(target, "attr", None)):
                        for method in methods:
                            use = Use(module, f"{cls.name}.{method.name}",
                                      f"self.{target.attr}", params[node.value.id],
                                      method.lineno)
                            _collect(use, method, set(), target.attr, callables)
                            found.append(use)

    visit(tree)
    return found


def module_name(path: Path) -> str:
    parts = ["emu", "nt", *path.relative_to(NT).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_uses() -> tuple[dict[str, set[str]], list[Use]]:
    """The views of emu/nt/interfaces.py and every annotated use of one in emu/nt."""
    views = protocols((NT / "interfaces.py").read_text())
    uses = []
    for path in sorted(NT.rglob("*.py")):
        uses += uses_in(module_name(path), path.read_text(), set(views))
    return views, uses


def _signatures(uses: list[Use]) -> dict[tuple[str, int], str]:
    """(dotted callable, positional index) -> the view that parameter names: a module's
    functions, and its classes (a call to the class hands its arguments to ``__init__``)."""
    views = {(u.module, u.function, u.param): u.view for u in uses}
    out = {}
    for path in sorted(NT.rglob("*.py")):
        module = module_name(path)
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                function, params = node.name, [*node.args.posonlyargs, *node.args.args]
            elif isinstance(node, ast.ClassDef):
                init = next((n for n in node.body if isinstance(n, ast.FunctionDef)
                             and n.name == "__init__"), None)
                if init is None:
                    continue
                function = f"{node.name}.__init__"
                params = [*init.args.posonlyargs, *init.args.args][1:]      # not self
            else:
                continue
            for i, param in enumerate(params):
                view = views.get((module, function, param.arg))
                if view is not None:
                    out[(f"{module}.{function.removesuffix('.__init__')}", i)] = view
    return out


# What every Python object has (``ex.__dict__`` is the object's, not a part of the executive).
OBJECT_ATTRIBUTES = set(dir(object)) | {"__dict__"}


def violations(views: dict[str, set[str]], uses: list[Use],
               signatures: dict[tuple[str, int], str]) -> list[str]:
    """One line per use of the executive outside the view a function names."""
    out = []
    for use in uses:
        members = views[use.view]
        where = f"{use.module}.{use.function}({use.param}: {use.view})"
        for attr, line in sorted(use.attributes.items()):
            if attr not in members and attr not in OBJECT_ATTRIBUTES:
                out.append(f"{where} uses .{attr} (line {line}), not in {use.view}")
        for target, index, line in use.handed_on:
            wanted = signatures.get((target, index))
            if wanted is not None and not views[wanted] <= members:
                missing = ", ".join(sorted(views[wanted] - members))
                out.append(f"{where} hands {use.param} to {target} (line {line}), which "
                           f"takes {wanted}: {use.view} lacks {missing}")
    return out


# --- the test, and tests that it can fail --------------------------------------------

def test_every_function_uses_only_the_view_it_names():
    views, uses = all_uses()
    assert uses, "no function of emu/nt names a view: the reader found nothing"
    bad = violations(views, uses, _signatures(uses))
    assert not bad, "uses of the executive outside the named view:\n" + "\n".join(bad)


SYNTHETIC_VIEWS = '''
from typing import Protocol
class KernelMemory(Protocol):
    def kernel_read(self, va: int, n: int) -> bytes: ...
class TrapPath(Protocol):
    irql: int
class Both(KernelMemory, TrapPath, Protocol):
    pass
'''


def _check(source: str) -> list[str]:
    views = protocols(SYNTHETIC_VIEWS)
    uses = uses_in("emu.nt.fake", source, set(views))
    signatures = {(f"{u.module}.{u.function}", 0): u.view for u in uses}
    return violations(views, uses, signatures)


def test_the_reader_follows_inheritance():
    """A view has its own members and its bases' (Both = KernelMemory + TrapPath)."""
    views = protocols(SYNTHETIC_VIEWS)
    assert views["Both"] == {"kernel_read", "irql"}
    assert views["KernelMemory"] == {"kernel_read"}


def test_a_member_outside_the_view_is_reported():
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from emu.nt.interfaces import KernelMemory as Mem\n"
        "def peek(ex: Mem, va: int) -> int:\n"
        "    data = ex.kernel_read(va, 8)\n"
        "    return ex.irql + data[0]\n")
    assert _check(source) == ["emu.nt.fake.peek(ex: KernelMemory) uses .irql (line 6), "
                              "not in KernelMemory"]


def test_uses_inside_a_closure_and_writes_count():
    source = (
        "from emu.nt.interfaces import TrapPath\n"
        "def lower(ex: TrapPath) -> None:\n"
        "    def inner():\n"
        "        ex.kernel_read(0, 1)\n"
        "    ex.irql = 0\n"
        "    inner()\n"
        "def shadow(ex: TrapPath) -> None:\n"
        "    return (lambda ex: ex.anything)(ex.irql)\n")
    assert _check(source) == ["emu.nt.fake.lower(ex: TrapPath) uses .kernel_read (line 4), "
                              "not in TrapPath"]


def test_a_narrow_view_cannot_lend_a_wider_one():
    source = (
        "from emu.nt.interfaces import Both, KernelMemory\n"
        "def wide(ex: Both) -> int:\n"
        "    return ex.irql\n"
        "def narrow(ex: KernelMemory) -> int:\n"
        "    ex.kernel_read(0, 1)\n"
        "    return wide(ex)\n"
        "def fine(ex: Both) -> bytes:\n"
        "    narrow(ex)\n"
        "    return ex.kernel_read(0, 1)\n")
    assert _check(source) == ["emu.nt.fake.narrow(ex: KernelMemory) hands ex to "
                              "emu.nt.fake.wide (line 6), which takes Both: KernelMemory "
                              "lacks irql"]


def test_only_the_service_dispatcher_takes_the_whole_executive():
    """Every module of emu/nt names a narrow view (issue 12, item 9); the whole Kernel is
    left only where a function hands it on to a table of handlers that each take their
    own view (KiSystemService). The Executive's own parts (the Ke/Mm mixins) reach the
    others through ``self`` and name no parameter."""
    _, uses = all_uses()
    whole = sorted(f"{u.module}.{u.function}" for u in uses if u.view == "Kernel")
    assert whole == ["emu.nt.syscalls.dispatch"]
    by_function = {(u.module, u.function): u.view for u in uses}
    assert by_function[("emu.nt.ntos.rtl", "read")] == "ExSupport"
    assert by_function[("emu.nt.loaded_modules", "symbolize")] == "LoadedModules"
    assert by_function[("emu.nt.exports", "call_site")] == "KernelMemory"


def test_the_executive_has_every_member_of_every_view():
    """The views are true of the real executive: each member of Kernel (which inherits
    every view, in an order Python can linearize) is there on a booted machine."""
    from emu.machine import Machine
    from emu.nt import interfaces

    views = protocols((NT / "interfaces.py").read_text())
    for name in views:
        assert getattr(interfaces, name) in interfaces.Kernel.__mro__, name
    executive = Machine().executive
    assert [m for m in sorted(views["Kernel"]) if not hasattr(executive, m)] == []
