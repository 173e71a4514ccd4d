"""Drivers: ring-0 code in the one shared kernel space; its crash is everyone's crash."""

from __future__ import annotations

from pathlib import Path

import emurun
import pytest
from driverboot import boot

from emu.nt import layout
from emu.nt.bugcheck import BugCheckCode
from emu.nt.loader import LoaderError

DRIVERS = Path(__file__).resolve().parents[2] / "guest" / "build" / "drivers"


@pytest.fixture(scope="module")
def sys_files(apps) -> Path:
    if not (DRIVERS / "hello.sys").exists():
        pytest.skip("drivers not built")
    return DRIVERS


def test_a_driver_runs_at_ring_0_in_the_kernel_half(machine_factory, apps, sys_files):
    m, (p,), r = boot(machine_factory, apps, [sys_files / "hello.sys"], ("hello",))
    (driver,) = r.drivers
    assert driver.status == 0 and not driver.unloaded
    assert driver.image.base >= layout.KERNEL_DRIVERS
    out = bytes(m.executive.debug_output).decode()
    assert out.startswith("hello from ring 0: DriverEntry of hello.sys\n")
    assert "irql 0, process 4" in out     # the System process (pid 4), PASSIVE_LEVEL
    assert p.output == b"Hello, world!\n"                   # and then the apps ran


def test_its_pages_have_no_user_bit_and_keep_their_permissions(machine_factory, apps,
                                                              sys_files):
    from emu.hw.mmu import PTE

    m, _, r = boot(machine_factory, apps, [sys_files / "hello.sys"])
    image = r.drivers[0].image
    # A discardable section (.reloc) is freed after DriverEntry, as Windows frees it.
    discarded = {s.va for s in image.sections if s.discardable}
    assert discarded and all(m.executive.mm.system.lookup(va) is None for va in discarded)
    for seg in image.segments:
        if seg.va in discarded:
            continue
        pte = m.executive.mm.system.lookup(seg.va).pte
        assert not pte & PTE.US
        assert bool(pte & PTE.RW) == bool(seg.flags & 2)
        assert bool(pte & PTE.NX) == (not seg.flags & 1)


def test_a_driver_crash_takes_every_process_down(machine_factory, apps, sys_files):
    m, (p,), r = boot(machine_factory, apps, [sys_files / "crash.sys"], ("counter", "a", "2"))
    bc = r.bugcheck
    assert r.stopped == "bug check"
    assert bc.code == BugCheckCode.PAGE_FAULT_IN_NONPAGED_AREA
    assert bc.params[0] == 0xFFFF_9000_0000_0000 and bc.params[1] == 2     # write
    assert bc.params[2] == bc.rip and bc.driver == "crash.sys"
    assert bc.location.startswith("crash.sys!DriverEntry+0x") and bc.process == "" \
        and bc.irql == 0
    assert p.output == b"" and p in r.unfinished          # the app never got to run


def test_the_same_bad_write_in_an_app_kills_only_the_app(machine_factory, apps):
    m, (bad, good), r = boot(machine_factory, apps, [], ("nullwrite",), ("counter", "g", "2"))
    assert bad.exception is not None and r.bugcheck is None
    assert good.output == b"g 1\ng 2\n"


def test_ke_bug_check_ex(machine_factory, apps, sys_files):
    _, _, r = boot(machine_factory, apps, [sys_files / "bugcheck.sys"])
    assert r.bugcheck.code == BugCheckCode.MANUALLY_INITIATED_CRASH
    assert r.bugcheck.params == (1, 2, 3, 4) and r.bugcheck.driver == "bugcheck.sys"


def test_writing_its_own_read_only_data(machine_factory, apps, sys_files):
    _, _, r = boot(machine_factory, apps, [sys_files / "rowrite.sys"])
    assert r.bugcheck.code == BugCheckCode.ATTEMPTED_WRITE_TO_READONLY_MEMORY
    assert r.bugcheck.driver == "rowrite.sys"


def test_a_failing_driver_entry_unloads_and_the_machine_goes_on(machine_factory, apps,
                                                                sys_files):
    m = machine_factory()
    free = m.executive.mm.pfn.free_count
    m.add_driver(sys_files / "failing.sys")
    p = m.spawn(apps / "hello")
    r = m.run()
    (driver,) = r.drivers
    assert driver.status == 0xC0000001 and driver.unloaded
    assert p.exit_status == 0 and r.bugcheck is None
    assert m.executive.mm.system.lookup(driver.image.entry) is None
    assert m.executive.mm.pfn.free_count < free            # pool and tables stay; images go


def test_a_driver_without_an_entry_point_is_refused(machine_factory, sys_files):
    # noentry.sys is linked with --no-entry: AddressOfEntryPoint 0, no DriverEntry to call.
    m = machine_factory()
    path = sys_files / "noentry.sys"
    with pytest.raises(LoaderError) as err:
        m.add_driver(path)
    assert str(err.value) == f"{path}: no DriverEntry (AddressOfEntryPoint is 0)"
    assert m.executive.pending_drivers == []


def test_an_elf_file_is_not_a_driver(machine_factory, apps):
    # One driver format: an ELF file (here an app; the retired ELF .sys files alike) is refused.
    m = machine_factory()
    path = apps / "hello"
    with pytest.raises(LoaderError) as err:
        m.add_driver(path)
    assert str(err.value) == (f"{path}: not a PE image (drivers are PE32+ .sys files: "
                              "docs/drivers.md)")


def test_emu_run_refuses_an_elf_driver_in_one_line(apps):
    done = emurun.emu("run", "--driver", str(apps / "hello"), str(apps / "hello"))
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == (f"emu: error: {apps / 'hello'}: not a PE image (drivers are PE32+ "
                           ".sys files: docs/drivers.md)\n")


def test_ke_bug_check_ex_points_at_the_call(machine_factory, apps, sys_files):
    _, _, r = boot(machine_factory, apps, [sys_files / "bugcheck.sys"])
    assert r.bugcheck.instruction.startswith("call")


def test_code_in_executable_pool_runs_but_nx_pool_is_bug_check_0xfc(machine_factory, apps,
                                                                   sys_files):
    from emu.hw.mmu import PTE

    m, _, r = boot(machine_factory, apps, [sys_files / "nxpool.sys"])
    out = bytes(m.executive.debug_output).decode()
    assert "in NonPagedPool at" in out and "it returned" in out
    bc = r.bugcheck
    assert bc.code == BugCheckCode.ATTEMPTED_EXECUTE_OF_NOEXECUTE_MEMORY
    assert layout.KERNEL_POOL_NX <= bc.params[0] < layout.KERNEL_POOL_PAGED
    assert bc.params[1] & PTE.NX and bc.driver == "nxpool.sys"


def test_smep_stops_a_driver_calling_into_user_code(machine_factory, apps, sys_files):
    m = machine_factory()
    m.add_driver(sys_files / "smep.sys")
    p = m.spawn(apps / "devread", ["\\Device\\Smep", "16", "0x401000"])   # its own code page
    r = m.run()
    bc = r.bugcheck
    assert bc.code == BugCheckCode.ATTEMPTED_EXECUTE_OF_NOEXECUTE_MEMORY
    assert bc.params[0] == 0x401000 and "SMEP" in bc.detail
    assert bc.location.startswith("smep.sys!Read+") and bc.process == f'{p.pid} "devread"'


def test_one_driver_corrupts_another_through_the_shared_kernel_space(machine_factory, apps,
                                                                     sys_files):
    """scribble.sys writes through a bad index into ticket.sys's counter: no fault, wrong
    answers (the seed: a driver writing the wrong address compromises another driver)."""
    def tickets(drivers):
        m = machine_factory()
        images = [m.add_driver(sys_files / d) for d in drivers]
        p = m.spawn(apps / "devread", ["\\Device\\Ticket"])
        r = m.run()
        assert r.bugcheck is None
        return p.output.decode().splitlines()[-1], images

    assert tickets(["ticket.sys"])[0] == "data: ticket 1000"
    line, (ticket, scribble) = tickets(["ticket.sys", "scribble.sys"])
    # the geometry the bug relies on: table[index] lands on ticket.sys's counter
    index = -(16 * 1024 * 1024 // 4)
    assert scribble.symbols["table"] + 4 * index == ticket.symbols["next_ticket"]
    assert line == "data: ticket 0"
