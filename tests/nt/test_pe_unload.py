"""A driver's life after DriverEntry: discardable sections (INIT, .reloc) freed once it
succeeds, and DriverUnload at a clean shutdown (guest/drivers-pe/peinit.c, peinitfail.c,
peunload.c, pegoodbye.c)."""

from __future__ import annotations

import threading
from pathlib import Path

import driverboot
import emurun
import pefile

from emu.hw import mmu
from emu.nt import drivers, io
from emu.nt.bugcheck import BugCheckCode
from emu.nt.mm.check import check_memory
from emu.nt.mm.pfn import FrameUse

ROOT = Path(__file__).resolve().parents[2]
DRIVERS = ROOT / "guest" / "build" / "drivers"
IMAGE_SCN_MEM_DISCARDABLE = 0x0200_0000


def boot(machine_factory, apps, names, *commands, **options):
    """driverboot.boot with the drivers named in guest/build/drivers."""
    return driverboot.boot(machine_factory, apps, [DRIVERS / n for n in names], *commands,
                           **options)


def present(m, va: int) -> bool:
    """The system page tables map ``va`` (a ring-0 read walks), as the CPU would see it."""
    cpu = m.executive.cpu
    try:
        mmu.walk(cpu.mem, va, "read", cr3=m.executive.mm.system.cr3, cpl=0, cr0=cpu.cr0,
                 cr4=cpu.cr4, efer=cpu.efer)
    except mmu.PageFault:
        return False
    return True


def sections(name: str) -> dict[str, tuple[int, int, int]]:
    """name -> (RVA, virtual size, characteristics) of each section of a built driver."""
    image = pefile.PE(str(DRIVERS / name), fast_load=True)
    return {s.Name.rstrip(b"\0").decode(): (s.VirtualAddress, s.Misc_VirtualSize,
                                            s.Characteristics) for s in image.sections}


def pages(base: int, rva: int, size: int) -> range:
    return range(base + rva, base + rva + size, 0x1000)


# -- discardable sections ---------------------------------------------------------------


def test_init_is_a_discardable_executable_section_holding_driver_entry(apps):
    rva, size, ch = sections("peinit.sys")["INIT"]
    assert ch == 0x6200_0020            # CODE | MEM_DISCARDABLE | MEM_EXECUTE | MEM_READ
    image = pefile.PE(str(DRIVERS / "peinit.sys"), fast_load=True)
    assert rva <= image.OPTIONAL_HEADER.AddressOfEntryPoint < rva + size
    assert sections("pereloc.sys")[".reloc"][2] & IMAGE_SCN_MEM_DISCARDABLE


def test_discardable_pages_are_not_present_after_driver_entry(machine_factory, apps):
    m, _, r = boot(machine_factory, apps, ["peinit.sys", "pereloc.sys"], ("hello",))
    for driver in r.drivers:
        base = driver.image.base
        for name, (rva, size, ch) in sections(driver.image.name).items():
            for va in pages(base, rva, size):
                assert present(m, va) == (not ch & IMAGE_SCN_MEM_DISCARDABLE), (name, va)
    assert b"peinit.sys: InitOnly runs in INIT\n" in bytes(m.executive.debug_output)


def test_freed_init_frames_go_back_to_the_free_list(machine_factory, apps):
    m = machine_factory()
    ex = m.executive
    image = drivers.load(ex, DRIVERS / "peinit.sys")
    frames = {}
    real = ex.call_kernel

    def call_kernel(routine, *args, **kwargs):    # DriverEntry: INIT is still mapped here
        frames.update({va: ex.mm.system.lookup(va).pfn for va in image.discardable})
        return real(routine, *args, **kwargs)

    ex.call_kernel = call_kernel
    drivers.start(ex, image)
    assert frames and set(frames) == image.discardable
    for va, pfn in frames.items():
        assert not present(m, va) and ex.mm.system.lookup(va) is None
        assert ex.mm.pfn.entries[pfn].use is FrameUse.FREE
    kept = [va for va in image.pages if va not in image.discardable]
    assert kept and all(present(m, va) for va in kept)
    assert check_memory(ex.mm) == []                    # the books balance (emu debug: check)


def test_a_call_into_freed_init_is_bug_check_0x50_execute(machine_factory, apps):
    m, (p,), r = boot(machine_factory, apps, ["peinit.sys"], ("hello",))
    assert p.output == b"Hello, world!\n" and not r.unfinished    # the apps ended first
    (driver,) = r.drivers
    rva, size, _ = sections("peinit.sys")["INIT"]
    bc = r.bugcheck
    assert bc.code == BugCheckCode.PAGE_FAULT_IN_NONPAGED_AREA == 0x50
    init_only = bc.params[0]
    assert driver.image.base + rva <= init_only < driver.image.base + rva + size
    assert bc.params == (init_only, 0x10, init_only, 0)     # 0x10: an execute; RIP = address
    assert bc.driver == "peinit.sys"
    assert bytes(m.executive.debug_output) == (
        b"peinit.sys: InitOnly runs in INIT\n"
        b"peinit.sys: DriverUnload calls InitOnly, in freed INIT\n")
    assert check_memory(m.executive.mm) == []


def test_a_failing_driver_entry_keeps_nothing_mapped(machine_factory, apps):
    m, (p,), r = boot(machine_factory, apps, ["peinitfail.sys"], ("hello",))
    (driver,) = r.drivers
    assert driver.status == 0xC000_0001 and driver.unloaded
    assert not any(present(m, va) for va in driver.image.pages)
    assert driver.image.discardable            # INIT too, though DriverEntry did not succeed
    assert p.output == b"Hello, world!\n" and r.bugcheck is None
    # Unloaded at once: its DriverUnload never runs, not even at shutdown.
    assert bytes(m.executive.debug_output) == \
        b"peinitfail.sys: DriverEntry returns STATUS_UNSUCCESSFUL\n"
    assert check_memory(m.executive.mm) == []


# -- DriverUnload at a clean shutdown -----------------------------------------------------


def test_driver_unload_runs_in_reverse_load_order_after_the_apps(apps):
    run = emurun.emu("run", "--driver", str(DRIVERS / "peunload.sys"), "--driver",
                     str(DRIVERS / "pehello.sys"), "--driver", str(DRIVERS / "pegoodbye.sys"),
                     str(apps / "hello"), cwd=ROOT)
    assert run.returncode == 0 and run.stderr == ""
    lines = run.stdout.splitlines()
    assert lines[0:2] == ["peunload.sys: DriverEntry", lines[1]]
    assert lines[-4:] == ["pegoodbye.sys: DriverEntry", "Hello, world!",
                          "pegoodbye.sys: DriverUnload", "peunload.sys: DriverUnload"]


def test_driver_unload_gets_its_driver_object_at_passive_level(machine_factory, apps):
    seen = []
    m = machine_factory()
    m.add_driver(DRIVERS / "peunload.sys")
    ex = m.executive
    real = ex.call_kernel

    def call_kernel(routine, *args, **kwargs):
        if ex.drivers and routine == drivers.unload_routine(ex, ex.drivers[0]):
            seen.append((args, ex.irql, kwargs.get("space")))
        return real(routine, *args, **kwargs)

    ex.call_kernel = call_kernel
    m.spawn(apps / "hello")
    r = m.run()
    assert r.bugcheck is None and r.stopped is None
    assert seen == [((r.drivers[0].driver_object,), 0, None)]   # None: the system space


def test_a_fault_in_driver_unload_is_a_bug_check_exit_126(apps):
    run = emurun.emu("run", "--driver", str(DRIVERS / "peinit.sys"), str(apps / "hello"), cwd=ROOT)
    assert run.returncode == 126
    assert run.stdout.splitlines() == ["peinit.sys: InitOnly runs in INIT", "Hello, world!",
                                       "peinit.sys: DriverUnload calls InitOnly, in freed INIT"]
    assert "PAGE_FAULT_IN_NONPAGED_AREA (0x00000050)" in run.stderr


def test_driver_unload_runs_after_an_app_died_of_an_exception(machine_factory, apps):
    # An unhandled exception ends one process, not the machine: the shutdown is clean.
    m, (p,), r = boot(machine_factory, apps, ["peunload.sys"], ("crasher", "write0"))
    assert p.exception is not None and r.bugcheck is None and r.stopped is None
    assert bytes(m.executive.debug_output) == \
        b"peunload.sys: DriverEntry\npeunload.sys: DriverUnload\n"


def test_no_driver_unload_after_a_bug_check(machine_factory, apps):
    m, _, r = boot(machine_factory, apps, ["peunload.sys", "pecrash.sys"], ("hello",))
    assert r.bugcheck is not None and r.bugcheck.driver == "pecrash.sys"
    assert b"DriverUnload" not in bytes(m.executive.debug_output)


def test_no_driver_unload_after_an_app_crash_bug_check_in_driver_unload_order(machine_factory,
                                                                             apps):
    # peinit's DriverUnload (loaded last, so called first) bug checks: peunload's never runs.
    m, _, r = boot(machine_factory, apps, ["peunload.sys", "peinit.sys"], ("hello",))
    assert r.bugcheck is not None and r.bugcheck.driver == "peinit.sys"
    assert bytes(m.executive.debug_output).endswith(
        b"peinit.sys: DriverUnload calls InitOnly, in freed INIT\n")
    assert b"peunload.sys: DriverUnload" not in bytes(m.executive.debug_output)


def test_no_driver_unload_after_the_instruction_limit(machine_factory, apps):
    m, _, r = boot(machine_factory, apps, ["peunload.sys"], ("spin",), max_insns=100_000)
    assert r.stopped == "instruction limit" and r.unfinished
    assert bytes(m.executive.debug_output) == b"peunload.sys: DriverEntry\n"


def test_no_driver_unload_after_a_deadlock(machine_factory, apps):
    m, _, r = boot(machine_factory, apps, ["peunload.sys"], ("deadlock",))
    assert r.stopped == "deadlock"
    assert bytes(m.executive.debug_output) == b"peunload.sys: DriverEntry\n"


def test_no_driver_unload_after_ctrl_c(machine_factory, apps):
    m = machine_factory()
    m.add_driver(DRIVERS / "peunload.sys")
    m.spawn(apps / "spin")                      # never ends: only the interrupt stops it
    timer = threading.Timer(0.5, m.interrupt)
    timer.start()
    try:
        r = m.run()
    finally:
        timer.cancel()
    assert r.stopped == "interrupted"
    assert bytes(m.executive.debug_output) == b"peunload.sys: DriverEntry\n"


def test_a_driver_unload_routine_is_read_where_wdm_h_puts_it(machine_factory, apps,
                                                             monkeypatch):
    # wdm.h's layout (DriverUnload at 0x68): a routine stored there after DriverEntry runs
    # at shutdown (here the driver's own DriverEntry, which prints again when called a
    # second time).
    m = machine_factory()
    m.add_driver(ROOT / "guest" / "build" / "drivers" / "hello.sys")
    m.spawn(apps / "hello")
    ex = m.executive
    real = drivers.start

    def start(ex_, image):
        driver = real(ex_, image)
        ex_.kernel_write(driver.driver_object + io.DRIVER_UNLOAD,
                         image.entry.to_bytes(8, "little"))
        return driver

    monkeypatch.setattr(drivers, "start", start)
    r = m.run()
    assert r.bugcheck is None and io.DRIVER_UNLOAD == 0x68
    out = bytes(ex.debug_output)
    assert out.count(out.splitlines(keepends=True)[0]) == 2
