"""Accounting checks: the memory manager's books against the page tables in RAM.

What must always hold (each broken rule is one line of the result):

- Every frame is in exactly one state, and the lists agree with the PFN records:
  free frames on the free list, standby and modified frames on their lists.
- Every leaf PTE of every address space agrees with the frame it names: a valid
  PTE's frame is in use for that process (or the kernel) and records this PTE as
  its PteAddress; a transition PTE's frame is on the standby or modified list; a
  pagefile PTE's slot is allocated, and no two PTEs name one slot. (A frame beyond RAM
  is a broken rule too, never a Python error: ``check`` must work on garbled tables.)
- Every page table's frame is a page-table frame; no page table is in a working
  set, so none is ever paged out.
- The working sets are exactly the valid pageable pages.
- The kernel half (PML4 slots 256-511) is identical in every PML4.
- Only a process with an address space holds frames.

``emu debug``'s ``check`` command and the tests call ``check_memory``.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from emu.nt.layout import KERNEL_PML4_FIRST, PAGE_SIZE
from emu.nt.mm import softpte
from emu.nt.mm.paging import is_paged_pool
from emu.nt.mm.pfn import FrameUse
from emu.nt.mm.softpte import PteState

if TYPE_CHECKING:
    from emu.nt.mm.address_space import AddressSpace, MemoryManager

_ADDRESS = 0x000F_FFFF_FFFF_F000
_P, _A, _PS = 1, 0x20, 0x80


def check_memory(mm: MemoryManager) -> list[str]:
    """Every broken rule, in words; an empty list when the books balance."""
    problems: list[str] = []
    _check_lists(mm, problems)
    slots: dict[int, str] = {}
    tracked: set[tuple[int, int]] = set()
    kernel_done = False
    for space in mm.spaces:
        halves = [(range(KERNEL_PML4_FIRST), space.owner)]
        if not kernel_done:                  # the kernel half is shared: walk it once
            halves.append((range(KERNEL_PML4_FIRST, 512), None))
            kernel_done = True
        for slots_range, owner in halves:
            _walk(mm, space, space.cr3, 4, 0, slots_range, owner, problems, slots, tracked)
    _check_kernel_half(mm, problems)
    live = {space.owner for space in mm.spaces}
    for owner in sorted(set(mm.pfn.owned) - live):
        problems.append(f"process {owner} has no address space left, yet holds "
                        f"{mm.pfn.owned[owner]} frame(s)")
    clock = {(ws.space.pml4_pfn, va) for ws in mm.pager.working_sets for va in ws.pages}
    for key in sorted(clock - tracked):
        problems.append(f"working set holds {key[1]:#x} (root {key[0]:#x}), not valid")
    for key in sorted(tracked - clock):
        problems.append(f"valid pageable page {key[1]:#x} (root {key[0]:#x}) is in no "
                        "working set")
    pagefile = mm.pager.pagefile
    if pagefile is not None and pagefile.used_slots != len(slots):
        problems.append(f"{len(slots)} slots named by PTEs and frames, "
                        f"{pagefile.used_slots} allocated")
    return problems


def _check_lists(mm: MemoryManager, problems: list[str]) -> None:
    pfn = mm.pfn
    free = set(pfn._free)
    if len(free) != len(pfn._free):
        problems.append("a frame is on the free list twice")
    for number in range(1, len(pfn.entries)):
        entry = pfn.entries[number]
        on = [name for name, members in (("free", free), ("standby", pfn.standby),
                                         ("modified", pfn.modified)) if number in members]
        expected = {FrameUse.FREE: ["free"], FrameUse.STANDBY: ["standby"],
                    FrameUse.MODIFIED: ["modified"]}.get(entry.use, [])
        if on != expected:
            problems.append(f"frame {number:#x} is {entry.use.value} but on "
                            f"{' and '.join(on) or 'no list'}")


def _walk(mm: MemoryManager, space: AddressSpace, table: int, level: int, base: int,
          slots_range: range, owner: int | None, problems: list[str],
          slots: dict[int, str], tracked: set[tuple[int, int]]) -> None:
    entries = struct.unpack("<512Q", mm.mem.read(table, PAGE_SIZE))
    for i in slots_range:
        entry = entries[i]
        va = base | i << (12 + 9 * (level - 1))
        if va & (1 << 47):
            va |= 0xFFFF_0000_0000_0000
        if level > 1:
            if entry & _P and not entry & _PS:
                frame = (entry & _ADDRESS) >> 12
                if frame >= len(mm.pfn.entries):
                    problems.append(f"the table below {va:#x} (level {level}) is in frame "
                                    f"{frame:#x}, beyond RAM")
                    continue
                if mm.pfn.entries[frame].use is not FrameUse.PAGE_TABLE:
                    problems.append(f"the table below {va:#x} (level {level}) is in frame "
                                    f"{frame:#x}, a {mm.pfn.entries[frame].use.value} frame")
                _walk(mm, space, frame * PAGE_SIZE, level - 1, va, range(512), owner,
                      problems, slots, tracked)
            continue
        _check_leaf(mm, space, va, table + 8 * i, entry, owner, problems, slots, tracked)


def _check_leaf(mm: MemoryManager, space: AddressSpace, va: int, pte_pa: int, entry: int,
                owner: int | None, problems: list[str], slots: dict[int, str],
                tracked: set[tuple[int, int]]) -> None:
    d = softpte.decode(entry)
    where = f"{va:#x}" + (f" of process {owner}" if owner is not None else "")
    if d.state is PteState.VALID:
        record = mm.pfn.entries[d.pfn] if d.pfn < len(mm.pfn.entries) else None
        if record is None or record.use in (FrameUse.FREE, FrameUse.STANDBY,
                                            FrameUse.MODIFIED, FrameUse.PAGE_TABLE):
            use = record.use.value if record else "beyond RAM"
            problems.append(f"{where} maps frame {d.pfn:#x}, which is {use}")
            return
        if owner is not None and record.owner != owner:
            problems.append(f"{where} maps frame {d.pfn:#x}, owned by {record.owner}")
        if (owner is not None or is_paged_pool(va)) and record.pte_pa != pte_pa:
            problems.append(f"{where}: frame {d.pfn:#x} records another PTE")
        if record.slot is not None:
            _claim(slots, record.slot, where, problems)
        pageable = owner is not None and space.working_set is not None or is_paged_pool(va)
        if pageable:
            tracked.add((space.pml4_pfn, va))
    elif d.state is PteState.TRANSITION:
        if d.pfn >= len(mm.pfn.entries):
            problems.append(f"{where} is in transition on frame {d.pfn:#x}, beyond RAM")
            return
        record = mm.pfn.entries[d.pfn]
        if record.use not in (FrameUse.STANDBY, FrameUse.MODIFIED) or record.pte_pa != pte_pa:
            problems.append(f"{where} is in transition on frame {d.pfn:#x}, which is "
                            f"{record.use.value}")
        if record.slot is not None:
            _claim(slots, record.slot, where, problems)
    elif d.state is PteState.PAGEFILE:
        pagefile = mm.pager.pagefile
        if pagefile is None or not pagefile.holds_page(d.slot):
            problems.append(f"{where} names pagefile slot {d.slot:#x}, which holds no page")
        _claim(slots, d.slot, where, problems)


def _claim(slots: dict[int, str], slot: int, where: str, problems: list[str]) -> None:
    if slot in slots:
        problems.append(f"pagefile slot {slot} belongs to both {slots[slot]} and {where}")
    slots[slot] = where


def _kernel_half(mm: MemoryManager, space: AddressSpace) -> tuple[int, ...]:
    """PML4 slots 256-511 without their Accessed bits: each copy of an entry gets A set by
    the walks made through its own PML4 (SDM §4.8), as on real hardware."""
    count = 512 - KERNEL_PML4_FIRST
    raw = struct.unpack(f"<{count}Q", mm.mem.read(space.cr3 + 8 * KERNEL_PML4_FIRST, 8 * count))
    return tuple(entry & ~_A for entry in raw)


def _check_kernel_half(mm: MemoryManager, problems: list[str]) -> None:
    reference = _kernel_half(mm, mm.system)
    for space in mm.spaces:
        if _kernel_half(mm, space) != reference:
            problems.append(f"the kernel half of PML4 {space.cr3:#x} differs from the "
                            "system's")
