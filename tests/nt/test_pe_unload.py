"""A driver's life after DriverEntry: discardable sections (INIT, .reloc) freed once it
succeeds (guest/drivers-pe/peinit.c, peinitfail.c)."""

from __future__ import annotations

from pathlib import Path

import pefile

from emu.hw import mmu
from emu.nt import drivers
from emu.nt.mm.check import check_memory
from emu.nt.mm.pfn import FrameUse

ROOT = Path(__file__).resolve().parents[2]
DRIVERS = ROOT / "guest" / "build" / "drivers"
IMAGE_SCN_MEM_DISCARDABLE = 0x0200_0000


def boot(machine_factory, apps, names, *commands, **options):
    m = machine_factory(**options)
    for name in names:
        m.add_driver(DRIVERS / name)
    procs = [m.spawn(apps / name, list(args)) for name, *args in commands]
    return m, procs, m.run()


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
    image = drivers.load(ex, DRIVERS / "pereloc.sys")
    free_before = len(ex.mm.pfn._free)
    drivers.start(ex, image)
    assert image.discardable                           # .reloc
    kept = len(image.pages) - len(image.discardable)
    kernel = [e for e in ex.mm.pfn.entries if e.use is FrameUse.KERNEL]
    assert len(ex.mm.pfn._free) <= free_before - kept  # only the kept pages (and pool) stay
    assert all(not present(m, va) for va in image.discardable)
    assert kernel and check_memory(ex.mm) == []


def test_a_failing_driver_entry_keeps_nothing_mapped(machine_factory, apps):
    m, (p,), r = boot(machine_factory, apps, ["peinitfail.sys"], ("hello",))
    (driver,) = r.drivers
    assert driver.status == 0xC000_0001 and driver.unloaded
    assert not any(present(m, va) for va in driver.image.pages)
    assert driver.image.discardable            # INIT too, though DriverEntry did not succeed
    assert p.output == b"Hello, world!\n" and r.bugcheck is None
    assert bytes(m.executive.debug_output) == \
        b"peinitfail.sys: DriverEntry returns STATUS_UNSUCCESSFUL\n"
    assert check_memory(m.executive.mm) == []
