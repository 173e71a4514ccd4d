"""Garbled paging structures (emu/nt/mm/corruption.py): the memory manager checks every entry
it reads back before it acts on what the entry names, and stops the machine with the bug
check Windows gives (MEMORY_MANAGEMENT 0x1A, PFN_LIST_CORRUPT 0x4E) instead of freeing a
frame that is not the process's, handing out a slot twice, or failing in Python.

Each test builds a process (hello: image pages 0x400000-0x403fff, the stub page 0x7ffe0000,
the stack below 0x7ffffffe0000), garbles one entry as a buggy driver would, then does what
reads it: the process's end, a page fault, the trimmer, a decommit, a protection change.
"""

from __future__ import annotations

import pytest

from emu.cli import main
from emu.hw.mmu import PTE
from emu.machine import Machine
from emu.nt import layout
from emu.nt.bugcheck import BugCheck, BugCheckCode
from emu.nt.mm import softpte, virtual
from emu.nt.mm.address_space import ADDRESS_MASK, index
from emu.nt.mm.check import check_memory
from emu.nt.mm.pagefile import Pagefile
from emu.nt.mm.pfn import FrameUse, PageLocation
from emu.nt.mm.vad import PageProtect
from emu.nt.mm.virtual import AllocationType, FaultResolution

IMAGE, FREE_SLOT_VA = 0x400000, 0x404000      # 0x404000: a PTE of the image's table, empty
MM, PFN = BugCheckCode.MEMORY_MANAGEMENT, BugCheckCode.PFN_LIST_CORRUPT
ACTIVE = PageLocation.ActiveAndValid
VALID_RW = int(PTE.P | PTE.RW | PTE.US | PTE.NX)


def spawn(machine_factory, apps, mem="8M", **kwargs):
    m = machine_factory(mem=mem, **kwargs)
    return m, m.executive, m.spawn(apps / "hello")


def pte_pa(proc, va: int) -> int:
    return proc.space.pte_address(va, create=False)


def entry_pa(ex, proc, va: int, level: int) -> int:
    """The physical address of ``va``'s entry at ``level`` (4 = PML4E ... 1 = PTE)."""
    table = proc.space.cr3
    for lvl in (4, 3, 2, 1):
        if lvl == level:
            return table + 8 * index(va, lvl)
        table = ex.mem.read_u64(table + 8 * index(va, lvl)) & ADDRESS_MASK
    raise AssertionError(level)


def garble(ex, pa: int, value: int) -> None:
    """A buggy driver's store into a paging structure (no TLB shootdown either)."""
    ex.mem.write_u64(pa, value)
    ex.cpu.flush_tlb()


def stop(action, *args) -> BugCheck:
    with pytest.raises(BugCheck) as info:
        action(*args)
    return info.value


def gdt_frame(ex) -> int:
    return ex.mm.system.lookup(layout.KERNEL_GDT).pfn


def halves(pte: int) -> tuple[int, int]:
    return pte & 0xFFFF_FFFF, pte >> 32


# -- the process's end: every entry of its tables is checked before anything is freed ----------

def test_a_pte_naming_a_frame_beyond_ram(machine_factory, apps):
    m, ex, proc = spawn(machine_factory, apps)
    at, bad = pte_pa(proc, IMAGE), (ex.mem.frames + 5) << 12 | VALID_RW
    garble(ex, at, bad)
    bc = stop(ex.terminate, proc, 0)
    assert (bc.code, bc.params) == (MM, (0x41792, at, *halves(bad)))
    assert "frame 0x805 is not a frame of RAM" in bc.detail


@pytest.mark.parametrize("whose", ["the kernel's GDT", "the sibling's page", "its page table"])
def test_a_pte_naming_a_frame_that_is_not_its_page(machine_factory, apps, whose):
    m, ex, proc = spawn(machine_factory, apps)
    sibling = m.spawn(apps / "hello")
    frame = {"the kernel's GDT": gdt_frame(ex),
             "the sibling's page": sibling.space.lookup(IMAGE).pfn,
             "its page table": pte_pa(proc, IMAGE) >> 12}[whose]
    before = ex.mm.pfn.entries[frame].use
    garble(ex, pte_pa(proc, IMAGE), frame << 12 | VALID_RW)
    bc = stop(ex.terminate, proc, 0)
    assert (bc.code, bc.params) == (PFN, (0x99, frame, ACTIVE, 0))
    assert ex.mm.pfn.entries[frame].use is before             # not freed


def test_a_transition_pte_naming_a_free_frame(machine_factory, apps):
    m, ex, proc = spawn(machine_factory, apps)
    free = ex.mm.pfn._free[-1]
    garble(ex, pte_pa(proc, FREE_SLOT_VA), softpte.transition_pte(free, softpte.MM_READWRITE))
    bc = stop(ex.terminate, proc, 0)
    assert (bc.code, bc.params) == (PFN, (0x99, free, PageLocation.FreePageList, 0))


@pytest.mark.parametrize("slot, why", [(0x7FFF_0000, "beyond the pagefile"), (7, "free")])
def test_a_pagefile_pte_naming_a_slot_that_holds_no_page(machine_factory, apps, slot, why):
    m, ex, proc = spawn(machine_factory, apps)
    at, bad = pte_pa(proc, FREE_SLOT_VA), softpte.pagefile_pte(slot, softpte.MM_READWRITE)
    garble(ex, at, bad)
    bc = stop(ex.terminate, proc, 0)
    assert (bc.code, bc.params) == (MM, (0x41792, at, *halves(bad)))
    assert bc.detail.endswith(f"which is {why}")
    assert ex.mm.pager.pagefile.free_slots == ex.mm.pager.pagefile.slots - 1   # none twice


def test_a_pagefile_pte_without_a_pagefile(machine_factory, apps):
    m, ex, proc = spawn(machine_factory, apps, pagefile_size=0)
    at, bad = pte_pa(proc, FREE_SLOT_VA), softpte.pagefile_pte(3, softpte.MM_READWRITE)
    garble(ex, at, bad)
    bc = stop(ex.terminate, proc, 0)
    assert (bc.code, bc.params) == (MM, (0x41792, at, *halves(bad)))
    assert "there is no pagefile" in bc.detail


def test_a_pml4e_with_ps_set_naming_the_kernels_pdpt(machine_factory, apps):
    m, ex, proc = spawn(machine_factory, apps)
    pdpt = ex.mm.kernel_pml4e[layout.KERNEL_PML4_FIRST] & ADDRESS_MASK
    at, bad = entry_pa(ex, proc, IMAGE, 4), pdpt | 0x81          # P, PS
    garble(ex, at, bad)
    bc = stop(ex.terminate, proc, 0)
    assert (bc.code, bc.params) == (MM, (0x41790, proc.space.pml4_pfn, at, bad))
    assert ex.mm.pfn.entries[pdpt >> 12].use is FrameUse.PAGE_TABLE   # not freed


def test_a_pde_cleared_but_not_zero(machine_factory, apps):
    m, ex, proc = spawn(machine_factory, apps)
    at = entry_pa(ex, proc, IMAGE, 2)
    bad = ex.mem.read_u64(at) & ~1
    garble(ex, at, bad)
    bc = stop(ex.terminate, proc, 0)
    assert (bc.code, bc.params) == (MM, (0x41790, at >> 12, at, bad))
    assert "is not present, yet not 0" in bc.detail


def test_a_zeroed_pde_loses_a_table_and_the_frames_under_it(machine_factory, apps):
    m, ex, proc = spawn(machine_factory, apps)
    table = pte_pa(proc, IMAGE) >> 12
    garble(ex, entry_pa(ex, proc, IMAGE, 2), 0)
    bc = stop(ex.terminate, proc, 0)
    # The page table and the image's four pages would never be free again.
    assert (bc.code, bc.params) == (MM, (0x41790, table, proc.pid, 5))
    assert check_memory(ex.mm) == [f"process {proc.pid} has no address space left, yet "
                                   "holds 5 frame(s)"]


# -- faults: a soft fault checks a transition PTE's frame, a hard fault its slot -----------------

def trimmed(machine_factory, apps, *, purge: bool = False):
    """hello with every page trimmed (transition PTEs; ``purge``: pagefile PTEs)."""
    m, ex, proc = spawn(machine_factory, apps)
    pager = ex.mm.pager
    pager.empty_working_sets()
    if purge:
        pager.write_modified()
        pager.purge_standby()
    return m, ex, proc


def test_a_soft_fault_on_a_transition_pte_naming_a_kernel_frame(machine_factory, apps):
    m, ex, proc = trimmed(machine_factory, apps)
    gdt = gdt_frame(ex)
    garble(ex, pte_pa(proc, IMAGE), softpte.transition_pte(gdt, softpte.MM_EXECUTE_READ))
    bc = stop(virtual.resolve_fault, ex, proc, IMAGE, "read")
    assert (bc.code, bc.params) == (PFN, (0x99, gdt, ACTIVE, 0))
    assert ex.mm.pfn.entries[gdt].use is FrameUse.KERNEL


def test_a_soft_fault_on_a_transition_pte_beyond_ram(machine_factory, apps):
    m, ex, proc = trimmed(machine_factory, apps)
    at, bad = pte_pa(proc, IMAGE), softpte.transition_pte(0xD4FFD2, softpte.MM_READWRITE)
    garble(ex, at, bad)
    bc = stop(virtual.resolve_fault, ex, proc, IMAGE, "read")
    assert (bc.code, bc.params) == (MM, (0x41792, at, *halves(bad)))


def test_a_hard_fault_on_a_pagefile_pte_naming_a_free_slot(machine_factory, apps):
    m, ex, proc = trimmed(machine_factory, apps, purge=True)
    pagefile = ex.mm.pager.pagefile
    free = pagefile.used_slots + 10
    assert not pagefile.holds_page(free)
    at, bad = pte_pa(proc, IMAGE), softpte.pagefile_pte(free, softpte.MM_EXECUTE_READ)
    garble(ex, at, bad)
    bc = stop(virtual.resolve_fault, ex, proc, IMAGE, "read")
    assert (bc.code, bc.params) == (MM, (0x41792, at, *halves(bad)))
    assert pagefile.reads == 0                            # nothing read from a free slot


def test_a_fault_on_a_page_its_working_set_holds(machine_factory, apps):
    m, ex, proc = spawn(machine_factory, apps)
    at = pte_pa(proc, IMAGE)
    garble(ex, at, 0)
    bc = stop(virtual.resolve_fault, ex, proc, IMAGE, "read")
    assert (bc.code, bc.params) == (MM, (0x41284, IMAGE, at, 0))


def test_a_new_mapping_under_a_pde_with_ps_set(machine_factory, apps):
    m, ex, proc = spawn(machine_factory, apps)
    base = 0x1000_0000
    r = virtual.allocate(ex, proc, base, 0x2000, AllocationType.MEM_RESERVE
                         | AllocationType.MEM_COMMIT, PageProtect.PAGE_READWRITE)
    assert r.status == 0
    assert virtual.resolve_fault(ex, proc, base, "write") is FaultResolution.RESOLVED
    at = entry_pa(ex, proc, base, 2)
    bad = ex.mem.read_u64(at) | PTE.PS
    garble(ex, at, bad)
    bc = stop(virtual.resolve_fault, ex, proc, base + 0x1000, "write")
    assert (bc.code, bc.params) == (MM, (0x61941, base + 0x1000, at, bad))


# -- the trimmer and the standby list --------------------------------------------------------

def test_the_trimmer_meets_a_zeroed_pte(machine_factory, apps):
    m, ex, proc = spawn(machine_factory, apps)
    at = pte_pa(proc, IMAGE)
    garble(ex, at, 0)
    bc = stop(ex.mm.pager.empty_working_sets)
    assert (bc.code, bc.params) == (MM, (0x41284, IMAGE, at, 0))
    assert ex.mm.pfn.entries[0].use is FrameUse.RESERVED    # frame 0 was never trimmed


def test_a_standby_frame_whose_pte_was_overwritten(machine_factory, apps):
    m, ex, proc = trimmed(machine_factory, apps)
    frame = softpte.decode(proc.space.pte(IMAGE)).pfn
    ex.mm.pager.write_modified()
    garble(ex, pte_pa(proc, IMAGE), 0)
    bc = stop(ex.mm.pager.purge_standby)
    assert (bc.code, bc.params) == (PFN, (0x99, frame, PageLocation.StandbyPageList, 0))


# -- system services: a decommit and a protection change act on the frame the PTE names -------

def test_a_decommit_of_a_page_whose_pte_names_a_kernel_frame(machine_factory, apps):
    m, ex, proc = spawn(machine_factory, apps)
    base = 0x1000_0000
    virtual.allocate(ex, proc, base, 0x1000, AllocationType.MEM_RESERVE
                     | AllocationType.MEM_COMMIT, PageProtect.PAGE_READWRITE)
    virtual.resolve_fault(ex, proc, base, "write")
    gdt = gdt_frame(ex)
    garble(ex, pte_pa(proc, base), gdt << 12 | VALID_RW)
    bc = stop(virtual.free, ex, proc, base, 0x1000, AllocationType.MEM_DECOMMIT)
    assert (bc.code, bc.params) == (PFN, (0x99, gdt, ACTIVE, 0))
    assert ex.mm.pfn.entries[gdt].use is FrameUse.KERNEL


def test_a_protection_change_on_a_page_beyond_ram(machine_factory, apps):
    m, ex, proc = spawn(machine_factory, apps)
    at, bad = pte_pa(proc, IMAGE), 0x7_0000_0000 | VALID_RW
    garble(ex, at, bad)
    bc = stop(virtual.protect, ex, proc, IMAGE, 0x1000, PageProtect.PAGE_READONLY)
    assert (bc.code, bc.params) == (MM, (0x41792, at, *halves(bad)))


# -- the PFN database and the pagefile refuse the impossible themselves -------------------------

def test_the_pfn_database_refuses_a_frame_freed_twice_never_used_or_beyond_ram():
    m = Machine("1M")
    try:
        pfn = m.executive.mm.pfn
        frame = pfn.allocate(FrameUse.PRIVATE, 9)
        pfn.release(frame)
        assert stop(pfn.release, frame).params == (0x07, frame, 0, 0)
        assert stop(pfn.release, 0).params == (0x99, 0, PageLocation.BadPageList, 0)
        assert stop(pfn.release, 0x100).params == (0x02, 0x100, 0xFF, 0)
        assert stop(pfn.release, 0x100).code == PFN
        assert pfn.owned == {}
    finally:
        m.close()


def test_the_pfn_database_keeps_the_set_of_locked_frames():
    # A process's end looks only at the frames in this set (0x76 PROCESS_HAS_LOCKED_PAGES):
    # every way a frame's last lock goes (unlock, free, free in bulk) must leave it.
    from emu.nt.mm.pfn import PfnDatabase

    pfn = PfnDatabase(16)
    a, b, c = (pfn.allocate(FrameUse.PRIVATE, 9) for _ in range(3))
    pfn.lock(a)
    pfn.lock(a)
    pfn.lock(b)
    pfn.lock(c)
    assert pfn.locked == {a, b, c} and pfn.entries[a].locks == 2
    pfn.unlock(a)
    assert pfn.locked == {a, b, c} and pfn.entries[a].locks == 1
    pfn.unlock(a)
    pfn.unlock(a)                                   # never below none
    assert pfn.locked == {b, c} and pfn.entries[a].locks == 0
    pfn.release_many([a, b])
    assert pfn.locked == {c} and pfn.entries[b].locks == 0
    pfn.release(c)
    assert pfn.locked == set() and pfn.entries[c].locks == 0


def test_the_pagefile_knows_which_slots_hold_a_page(tmp_path):
    pf = Pagefile(4 * 4096, tmp_path / "pf")
    try:
        assert [pf.holds_page(s) for s in range(5)] == [False] * 5
        assert pf.allocate() == 1 and pf.holds_page(1) and not pf.holds_page(2)
        pf.release(1)
        assert not pf.holds_page(1)
        with pytest.raises(AssertionError):
            pf.release(1)
    finally:
        pf.close()


# -- valid entries: nothing changes --------------------------------------------------------

def test_valid_tables_end_with_every_frame_back(machine_factory, apps):
    m, ex, proc = spawn(machine_factory, apps, mem="1M")
    m.spawn(apps / "pattern", ["1", "1"])
    assert ex.mm.pfn.owned
    result = m.run()
    assert result.stopped is None and proc.output == b"Hello, world!\n"
    assert ex.mm.pfn.owned == {} and check_memory(ex.mm) == []


def test_check_reports_garbled_tables_without_failing(machine_factory, apps):
    m, ex, proc = spawn(machine_factory, apps)
    garble(ex, entry_pa(ex, proc, IMAGE, 2), (ex.mem.frames + 1) << 12 | 0x67)
    garble(ex, entry_pa(ex, proc, layout.USER_STACK_TOP - 0x1000, 1),
           softpte.transition_pte(1 << 30, softpte.MM_READWRITE))
    problems = check_memory(ex.mm)
    assert f"the table below {IMAGE:#x} (level 2) is in frame 0x801, beyond RAM" in problems
    assert any("is in transition on frame 0x40000000, beyond RAM" in p for p in problems)


# -- a bug check from the memory manager stops the whole machine -------------------------------

def test_a_run_stops_with_the_blue_screen_of_the_process_that_faulted(machine_factory, apps):
    m, ex, proc = spawn(machine_factory, apps)
    sibling = m.spawn(apps / "hello")
    garble(ex, pte_pa(proc, IMAGE), 0)                 # its code page: the first fetch faults
    result = m.run()
    assert result.stopped == "bug check"
    bc = result.bugcheck
    assert (bc.code, bc.params[:2]) == (MM, (0x41284, IMAGE))
    assert bc.process == f'{proc.pid} "hello"' and "rip" in bc.registers
    assert sibling.exit_status is None                # the machine stopped, not the process


def test_emu_run_prints_the_blue_screen_and_exits_126(apps, monkeypatch, capsys):
    spawn_ = Machine.spawn

    def spawn_and_garble(self, path, args=()):
        proc = spawn_(self, path, args)
        garble(self.executive, proc.space.pte_address(IMAGE, create=False), 0)
        return proc

    monkeypatch.setattr(Machine, "spawn", spawn_and_garble)
    assert main(["run", str(apps / "hello")]) == 126
    err = capsys.readouterr().err.splitlines()
    assert err[1] == "*** MEMORY_MANAGEMENT (0x0000001A)"
    assert err[2].startswith("*** Parameters: 0x0000000000041284, 0x0000000000400000, ")
    assert err[3].startswith("*** a PTE or the working set list is corrupted: 0x400000")
    assert 'Process: 12 "hello"' in "\n".join(err)


# -- kernel paths outside the memory manager that read a garbled entry ---------------------


def test_direct_io_on_a_user_pte_beyond_ram_is_pfn_list_corrupt(machine_factory, apps):
    """MmProbeAndLockPages meets a user PTE naming a frame beyond RAM: 0x4E/0x99."""
    m = machine_factory(mem="8M")
    m.add_driver(apps.parent / "drivers" / "direct.sys")
    proc = m.spawn(apps / "devread", ["\\Device\\Direct", "16"])
    ex = m.executive
    buffer = proc.image.symbols["buffer"]
    garble(ex, pte_pa(proc, buffer), (ex.mem.frames + 3) << 12 | VALID_RW)
    result = m.run()
    assert result.bugcheck.code == PFN and result.bugcheck.params[:2] == (0x99, ex.mem.frames + 3)


def test_a_kernel_stack_page_gone_is_page_fault_in_nonpaged_area(machine_factory, apps):
    """The kernel writes a frame onto a kernel stack whose PTE a driver zeroed: 0x50."""
    from emu.nt.kernel import KERNEL_STACK_TOP
    m = machine_factory(mem="8M")
    m.spawn(apps / "hello")
    ex = m.executive
    slot = KERNEL_STACK_TOP - 0x100
    garble(ex, ex.mm.system.pte_address(slot, create=False), 0)
    m.add_driver(apps.parent / "drivers" / "hello.sys")     # DriverEntry: a frame written there
    result = m.run()
    assert result.bugcheck.code == BugCheckCode.PAGE_FAULT_IN_NONPAGED_AREA
    assert result.bugcheck.params[:2] == (slot, 2)
