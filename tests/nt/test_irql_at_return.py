"""The IRQL a driver's routine returns at (issue 12): DriverEntry, DriverUnload, an ISR and a
DPC must return at the IRQL they were called at, and Windows stops when one does not:
0xE1 WORKER_THREAD_RETURNED_AT_BAD_IRQL for DriverEntry/DriverUnload (the system worker
thread's check), 0xC8 IRQL_UNEXPECTED_VALUE for an ISR (UniqueValue 3), 0x9
IRQL_NOT_GREATER_OR_EQUAL for a DPC. guest/drivers-pe/peret*.c."""

from __future__ import annotations

from pathlib import Path

from emu.nt import exports, loaded_modules  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
DRIVERS = ROOT / "guest" / "build" / "drivers"


def run(machine_factory, apps, name: str, irql: int | None = None):
    m = machine_factory()
    m.add_driver(DRIVERS / f"{name}.sys")
    if irql is not None:
        m.executive.irql = irql
    proc = m.spawn(apps / "hello", [])
    r = m.run()
    return m, proc, r, bytes(m.executive.debug_output).decode()


def test_driver_entry_returning_raised_is_bug_check_0xe1(machine_factory, apps):
    m, proc, r, out = run(machine_factory, apps, "peretentry")
    entry = m.executive.drivers[0].image.entry
    assert "peretentry.sys: DriverEntry returns at IRQL 2, called at 0" in out
    assert r.bugcheck.code == 0xE1
    assert r.bugcheck.params == (entry, 2, 0, 0)
    assert r.bugcheck.driver == "peretentry.sys"
    assert m.executive.irql == 2                  # the machine stops at the IRQL left
    assert proc.output == b""                     # no app ran


def test_driver_entry_called_raised_may_return_raised(machine_factory, apps):
    # The rule is "the IRQL it was called at": a DriverEntry started at DISPATCH_LEVEL that
    # leaves it there is fine.
    _, proc, r, _ = run(machine_factory, apps, "peretentry", irql=2)
    assert r.bugcheck is None


def test_driver_unload_returning_raised_is_bug_check_0xe1(machine_factory, apps):
    m, proc, r, out = run(machine_factory, apps, "peretunload")
    assert proc.output == b"Hello, world!\n"
    assert "peretunload.sys: DriverUnload returns holding a spin lock, at IRQL 2" in out
    assert r.bugcheck.code == 0xE1
    unload, irql, three, four = r.bugcheck.params
    assert (irql, three, four) == (2, 0, 0)
    assert r.bugcheck.location == "peretunload.sys!Unload+0x0"
    assert loaded_modules.symbolize(m.executive, unload) == "peretunload.sys!Unload+0x0"


def test_a_dpc_returning_at_passive_is_bug_check_0x9(machine_factory, apps):
    m, _, r, out = run(machine_factory, apps, "peretdpc")
    assert "peretdpc.sys: DPC at IRQL 2 lowers it to 0" in out
    assert "not reached" not in out
    assert r.bugcheck.code == 0x9
    routine, irql, expected, four = r.bugcheck.params
    assert (irql, expected, four) == (0, 2, 0)
    assert r.bugcheck.location == "peretdpc.sys!DpcRoutine+0x0"
    assert loaded_modules.symbolize(m.executive, routine) == "peretdpc.sys!DpcRoutine+0x0"


def test_an_isr_returning_raised_is_bug_check_0xc8(machine_factory, apps):
    m, _, r, out = run(machine_factory, apps, "peretisr")
    ex = m.executive
    (interrupt,) = ex.interrupts.values()
    assert f"peretisr.sys: ISR at IRQL 5, its KINTERRUPT {interrupt.address:016X}, " \
        "raises to 7" in out
    assert r.bugcheck.code == 0xC8
    # (current << 16) | (expected << 8) | 3, the ServiceRoutine, the KINTERRUPT, 0.
    assert r.bugcheck.params == (0x070503, interrupt.routine, interrupt.address, 0)
    assert r.bugcheck.location == "peretisr.sys!Isr+0x0"
    assert ex.irql == 7
