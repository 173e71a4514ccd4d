"""A machine let go is freed: nothing of the emulator keeps it (or its Unicorn instance, whose
guest RAM and translated code live outside Python's heap) alive once the caller drops it.

The property tests make thousands of machines in one process (make fuzz); one reference
from a module-level table to each was enough to grow a pytest process by gigabytes (a
machine whose processes were still alive stayed reachable through the commit charge's
table of processes)."""

from __future__ import annotations

import gc
import struct
import weakref

import pytest

from emu import Machine
from emu.debugger.session import Session
from emu.nt import exports, ntos  # noqa: F401 (ntos registers the exports)
from emu.nt.bugcheck import BugCheck


def _refs(m: Machine) -> dict[str, weakref.ref]:
    """Weak references to the machine and the parts that hold native or large memory."""
    ex = m.executive
    return {"Machine": weakref.ref(m), "Executive": weakref.ref(ex),
            "Cpu": weakref.ref(ex.cpu), "Uc": weakref.ref(ex.cpu.uc),
            "MemoryManager": weakref.ref(ex.mm)}


def _spawned(apps, close: bool) -> dict[str, weakref.ref]:
    # A process created and never run: it still holds its commit charge.
    m = Machine(mem="8M")
    m.spawn(apps / "hello")
    refs = _refs(m)
    if close:
        m.close()
    return refs


def _limit(apps, close: bool) -> dict[str, weakref.ref]:
    # Stopped by the instruction limit with both processes alive, one of them paging.
    m = Machine(mem="1M", max_insns=200_000)
    m.spawn(apps / "pattern", ["1", "1"])
    m.spawn(apps / "hello")
    assert m.run().stopped == "instruction limit"
    refs = _refs(m)
    if close:
        m.close()
    return refs


def _exited(apps, close: bool) -> dict[str, weakref.ref]:
    m = Machine(mem="8M")
    proc = m.spawn(apps / "hello")
    m.run()
    assert proc.exit_status == 0
    refs = _refs(m)
    if close:
        m.close()
    return refs


def _bug_check(apps, close: bool) -> dict[str, weakref.ref]:
    # KeBugCheckEx called by a driver in a process's thread, as tests/nt/test_kernel_fuzz.py
    # calls the exports: the machine stops with the process still alive.
    m = Machine(mem="8M")
    ex = m.executive
    thread = m.spawn(apps / "hello").threads[0]
    ex.write_user(ex.mm.system, thread.kernel_stack_top - 0x100 + 8 + 32, struct.pack("<7Q",
                                                                                     *[0] * 7))
    ex.current_thread = thread
    with pytest.raises(BugCheck) as info:
        ex.call_kernel(exports.address_of("KeBugCheckEx"), 0xE2, 1, 2, 3,
                       space=thread.process.space, stack_top=thread.kernel_stack_top)
    assert info.value.code == 0xE2
    del info
    refs = _refs(m)
    if close:
        m.close()
    return refs


def _debugged(apps, close: bool) -> dict[str, weakref.ref]:
    # emu debug's session: steps, goes back (a machine re-made from boot by the factory and
    # run forward again), steps on, then runs to the end. Every machine it made must go
    # with it.
    built: list[dict[str, weakref.ref]] = []

    def build() -> Machine:
        m = Machine(mem="8M")
        m.spawn(apps / "hello")
        built.append(_refs(m))
        return m

    plan = [lambda s: s.step(200), lambda s: s.reverse_step(50), lambda s: s.step(10)]
    stops = []

    def on_stop(stop) -> bool:
        stops.append(stop.position)
        if plan and not stop.ended:
            plan.pop(0)(session)
            return True
        return False

    session = Session(build(), on_stop, factory=build)
    session.run()
    assert stops == [1, 201, 151, 161] and len(built) >= 2
    if close:
        session.close()
    refs = {f"{name} #{n}": ref for n, r in enumerate(built) for name, ref in r.items()}
    return refs | {"Session": weakref.ref(session)}


@pytest.mark.parametrize("close", [True, False], ids=["closed", "not-closed"])
@pytest.mark.parametrize("make", [_spawned, _limit, _exited, _bug_check, _debugged],
                         ids=["spawned", "instruction-limit", "exited", "bug-check",
                              "debugger"])
def test_a_machine_let_go_is_freed(apps, make, close):
    refs = [make(apps, close) for _ in range(3)]
    gc.collect()
    alive = sorted({name for r in refs for name, ref in r.items() if ref() is not None})
    assert alive == [], f"still alive after the caller let go: {alive}"
