"""Corrupt paging structures: the memory manager checks what an entry names before acting on it.

Page tables are kernel memory: user code cannot write them, a buggy driver can. On its slow
paths (a process's teardown, a decommit, the working-set trimmer, a soft or hard fault, a new
mapping) the memory manager reads entries back and acts on what they name: a frame to free or
to take back off the standby list, a pagefile slot to read or to release, a table to write a
PTE into. Acting on garbage would break its books without a word (a kernel frame on the free
list, a slot handed out twice) or fail in Python. So each such entry is checked against the
PFN database and the pagefile first, and one that cannot be right stops the machine, as
Windows does, with one of these (Microsoft's bug check reference, "Bug Check 0x1A:
MEMORY_MANAGEMENT" and "Bug Check 0x4E: PFN_LIST_CORRUPT"; parameter 1 names the violation):

    MEMORY_MANAGEMENT (0x1A)
      0x41284  "A PTE or the working set list is corrupted"   (va, PTE address, PTE)
      0x41790  "A page table page has been corrupted"         (its frame, entry address, entry)
               ... or lost, frames left when a process ends   (a frame, process id, count)
      0x41792  "A corrupted PTE has been detected"            (PTE address, low, high half)
      0x61941  "The paging hierarchy is corrupt"              (va, entry address, entry)
    PFN_LIST_CORRUPT (0x4E)
      0x02     "A list entry was corrupted"                   (frame, highest frame, 0)
      0x07     a page freed more often than it was taken      (frame, share count 0, 0)
      0x99     "A page table entry (PTE) or PFN is corrupted" (frame, page state, 0)

Parameters 2-4 follow the reference where it gives them (0x41792, 0x02, 0x07, 0x99, and
0x61941's parameter 2); the others are ours, as above (for 0x41790 the reference gives "the
address of the PFN" on x64: here, the frame number). None of this is on the hot path: the TLB
fill (emu.hw) trusts no entry anyway, it walks the tables and raises #PF for whatever the
hardware would refuse; the checks sit where the memory manager acts on an entry.
"""

from __future__ import annotations

import enum
from typing import Protocol

from emu.nt.bugcheck import BugCheck, BugCheckCode
from emu.nt.mm.pfn import FrameUse, PfnDatabase, corrupt_pfn

_P, _PS = 1, 0x80
_ADDRESS = 0x000F_FFFF_FFFF_F000


class FrameBooks(Protocol):
    """What the checks read of the memory manager (emu.nt.mm.address_space.MemoryManager):
    its PFN database. A protocol, so this module never imports the one that calls it."""

    pfn: PfnDatabase


class MemoryManagement(enum.IntEnum):
    """Parameter 1 of MEMORY_MANAGEMENT (0x1A): what the memory manager found broken."""

    PTE_OR_WORKING_SET_CORRUPT = 0x41284
    PAGE_TABLE_PAGE_CORRUPT = 0x41790
    CORRUPT_PTE = 0x41792
    PAGING_HIERARCHY_CORRUPT = 0x61941


# -- the stops -------------------------------------------------------------------------------

def corrupt_pte(pte_pa: int, pte: int, why: str) -> BugCheck:
    """0x1A/0x41792: the PTE at ``pte_pa`` holds ``pte``, which names nothing it may."""
    return BugCheck(BugCheckCode.MEMORY_MANAGEMENT,
                    (int(MemoryManagement.CORRUPT_PTE), pte_pa, pte & 0xFFFF_FFFF, pte >> 32),
                    detail=f"a corrupted PTE at physical {pte_pa:#x} ({pte:#018x}): {why}")


def corrupt_table(table_pfn: int, entry_pa: int, entry: int, why: str) -> BugCheck:
    """0x1A/0x41790: an entry of the page table in frame ``table_pfn`` is garbage."""
    return BugCheck(BugCheckCode.MEMORY_MANAGEMENT,
                    (int(MemoryManagement.PAGE_TABLE_PAGE_CORRUPT), table_pfn, entry_pa, entry),
                    detail=f"page table page {table_pfn:#x} is corrupted: the entry at physical "
                           f"{entry_pa:#x} ({entry:#018x}) {why}")


def corrupt_hierarchy(va: int, entry_pa: int, entry: int, why: str) -> BugCheck:
    """0x1A/0x61941: the tables above ``va`` cannot lead to a page table."""
    return BugCheck(BugCheckCode.MEMORY_MANAGEMENT,
                    (int(MemoryManagement.PAGING_HIERARCHY_CORRUPT), va, entry_pa, entry),
                    detail=f"the paging hierarchy above {va:#x} is corrupt: the entry at "
                           f"physical {entry_pa:#x} ({entry:#018x}) {why}")


def corrupt_working_set(va: int, pte_pa: int, pte: int, why: str) -> BugCheck:
    """0x1A/0x41284: a working set holds ``va``, whose PTE says otherwise."""
    return BugCheck(BugCheckCode.MEMORY_MANAGEMENT,
                    (int(MemoryManagement.PTE_OR_WORKING_SET_CORRUPT), va, pte_pa, pte),
                    detail=f"a PTE or the working set list is corrupted: {va:#x} (PTE at "
                           f"physical {pte_pa:#x}, {pte:#018x}) {why}")


# -- the checks ------------------------------------------------------------------------------

def check_page_frame(mm: FrameBooks, pte_pa: int, pte: int, owner: int | None, *,
                     tracked: bool) -> int:
    """The frame of ``owner``'s valid or transition leaf PTE ``pte`` (at ``pte_pa``), once
    the PFN database agrees: a frame of RAM (else 0x1A/0x41792), holding a page of
    ``owner`` in the state the PTE says (valid: in use; transition: standby or modified)
    whose record names this PTE (else 0x4E/0x99). ``tracked``: a valid page must record
    its PTE too (it is in a working set)."""
    pfn = (pte & _ADDRESS) >> 12
    if not 0 < pfn < len(mm.pfn.entries):
        raise corrupt_pte(pte_pa, pte, f"frame {pfn:#x} is not a frame of RAM")
    entry = mm.pfn.entries[pfn]
    if pte & _P:
        state_ok = entry.use is FrameUse.PRIVATE or entry.use is FrameUse.KERNEL
        named = entry.pte_pa == pte_pa or (entry.pte_pa is None and not tracked)
    else:
        state_ok = entry.use is FrameUse.STANDBY or entry.use is FrameUse.MODIFIED
        named = entry.pte_pa == pte_pa
    if not state_ok:
        raise corrupt_pfn(pfn, entry.use, f"the PTE at physical {pte_pa:#x} says "
                          + ("valid" if pte & _P else "in transition"))
    if entry.owner != owner:
        raise corrupt_pfn(pfn, entry.use, f"it belongs to {_who(entry.owner)}, the PTE at "
                          f"physical {pte_pa:#x} to {_who(owner)}")
    if not named:
        where = "no PTE" if entry.pte_pa is None else f"the PTE at {entry.pte_pa:#x}"
        raise corrupt_pfn(pfn, entry.use, f"it records {where}, not the one at physical "
                          f"{pte_pa:#x}")
    return pfn


def table_problem(mm: FrameBooks, entry: int, owner: int | None) -> str | None:
    """What is wrong with present upper-level entry ``entry`` of ``owner``'s tables, in
    words, or None: it must name a page-table frame of ``owner`` in RAM. We never map large
    pages, so PS set is garbage too."""
    pfn = (entry & _ADDRESS) >> 12
    if entry & _PS:
        return "has PS set (no large pages here)"
    if not 0 < pfn < len(mm.pfn.entries):
        return f"names frame {pfn:#x}, not a frame of RAM"
    record = mm.pfn.entries[pfn]
    if record.use is not FrameUse.PAGE_TABLE or record.owner != owner:
        return (f"names frame {pfn:#x}, a {record.use.value} frame of {_who(record.owner)}, "
                f"not a page table of {_who(owner)}")
    return None


def check_all_returned(mm: FrameBooks, owner: int) -> None:
    """Once process ``owner``'s address space and everything it kept aside are freed, it
    holds no frame; one left means its tables lost track of it (an entry above it was
    zeroed, say), and the frame would never be free again: bug check 0x1A/0x41790, with the
    first lost page table (or frame), the process and how many (MiDeletePteRange finds a
    page table's count of used entries wrong the same way)."""
    if not mm.pfn.owned.get(owner):
        return
    frames = mm.pfn.frames_of(owner)
    tables = [pfn for pfn in frames if mm.pfn.entries[pfn].use is FrameUse.PAGE_TABLE]
    first = (tables or frames)[0]
    raise BugCheck(BugCheckCode.MEMORY_MANAGEMENT,
                   (int(MemoryManagement.PAGE_TABLE_PAGE_CORRUPT), first, owner, len(frames)),
                   detail=f"{_who(owner)} has ended, yet it holds {len(frames)} frame(s) its "
                          f"page tables no longer name (the first: {first:#x}, a "
                          f"{mm.pfn.entries[first].use.value} frame)")


def _who(owner: int | None) -> str:
    return "the kernel" if owner is None else f"process {owner}"
