"""Address spaces: real x86-64 page tables in guest RAM, one PML4 per process.

    63      48 47    39 38    30 29    21 20    12 11       0
    +---------+--------+--------+--------+--------+----------+
    | sign    | PML4   | PDPT   | PD     | PT     | offset   |
    | extend  | index  | index  | index  | index  | in page  |
    +---------+--------+--------+--------+--------+----------+

The lower 256 PML4 slots map the process's private user half; slots 256-511
point to the SAME PDPTs in every process, so kernel memory is one shared space
(the seed: "all code running in kernel mode shares a single virtual address
space"). A new kernel PML4 entry is copied into every PML4 at once.
"""

from __future__ import annotations

import enum
import heapq
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any

from emu.hw.memory import PhysicalMemory
from emu.hw.mmu import PTE
from emu.nt.layout import KERNEL_PML4_FIRST, PAGE_SIZE
from emu.nt.mm import softpte
from emu.nt.mm.corruption import (
    check_page_frame,
    corrupt_hierarchy,
    corrupt_table,
    table_problem,
)
from emu.nt.mm.pagefile import Pagefile
from emu.nt.mm.paging import Pager, WorkingSet, is_paged_pool
from emu.nt.mm.pfn import FrameUse, OutOfFrames, PfnDatabase

ADDRESS_MASK = 0x000F_FFFF_FFFF_F000     # bits 12..51 of an entry: the next table or frame
_P, _PS = int(PTE.P), int(PTE.PS)
_UPPER_LEVELS = ((4, 39), (3, 30), (2, 21))      # (level, shift of its index) above the PT
_ZERO_PAGE = bytes(PAGE_SIZE)
LEVEL_NAMES = {4: "PML4E", 3: "PDPTE", 2: "PDE", 1: "PTE"}


class Protection(enum.IntFlag):
    """Page protections as VirtualAlloc takes them (winnt.h PAGE_*)."""

    PAGE_NOACCESS = 0x01
    PAGE_READONLY = 0x02
    PAGE_READWRITE = 0x04
    PAGE_EXECUTE = 0x10
    PAGE_EXECUTE_READ = 0x20
    PAGE_EXECUTE_READWRITE = 0x40


# A paging-structure entry above the leaf: present and writable, US for a user table.
_TABLE_KERNEL = int(PTE.P | PTE.RW)
_TABLE_USER = int(PTE.P | PTE.RW | PTE.US)

_WRITABLE = Protection.PAGE_READWRITE | Protection.PAGE_EXECUTE_READWRITE
_EXECUTABLE = (Protection.PAGE_EXECUTE | Protection.PAGE_EXECUTE_READ
               | Protection.PAGE_EXECUTE_READWRITE)


@cache        # a pure function of three small values, asked on every page fault
def leaf_flags(protect: Protection, *, user: bool, populated: bool = False) -> PTE:
    """The PTE bits that give ``protect``: RW for writable, NX unless executable, US for user.

    ``populated``: the page is made valid ahead of its first use, as a fault for that use
    would (Linux's populate path pre-faults a writable private page for write): Accessed
    is set, and Dirty too when the page is writable, since a new private page has no copy
    anywhere else. A page made valid by a real fault instead gets A, and D only for a write.
    """
    flags = PTE.P
    if populated:
        flags |= PTE.A
    if protect & _WRITABLE:
        flags |= PTE.RW | (PTE.D if populated else 0)
    if not protect & _EXECUTABLE:
        flags |= PTE.NX
    if user:
        flags |= PTE.US
    return flags


def index(va: int, level: int) -> int:
    """The 9-bit table index of ``va`` at ``level`` (4 = PML4 ... 1 = PT)."""
    return (va >> (12 + 9 * (level - 1))) & 0x1FF


@dataclass(frozen=True)
class Mapping:
    """One mapped 4 KiB page: virtual page, physical frame, the leaf PTE value."""

    va: int
    pfn: int
    pte: int


class AddressSpace:
    """A set of page tables rooted at one PML4 frame (the value of CR3)."""

    def __init__(self, mm: MemoryManager, owner: int | None) -> None:
        self.mm = mm
        self.owner = owner
        self.pcid = 0             # the PCID its translations are cached under (MemoryManager)
        self.working_set: WorkingSet | None = None    # set once the process is complete
        # Upper-level entries found to name a page table of ours, as they were then: a
        # table is freed only with the whole space, so while an entry keeps its value it
        # needs no second look (pte_address, emu.nt.mm.corruption).
        self._checked: dict[int, int] = {}
        self.pml4_pfn = mm.new_frame(FrameUse.PAGE_TABLE, owner)
        mm.mem.zero(self.pml4_pfn * PAGE_SIZE)
        for slot, entry in mm.kernel_pml4e.items():
            mm.mem.write_u64(self.pml4_pfn * PAGE_SIZE + slot * 8, entry)

    @property
    def cr3(self) -> int:
        """The CR3 value that selects this address space."""
        return self.pml4_pfn * PAGE_SIZE

    def pte_address(self, va: int, *, create: bool) -> int | None:
        """Physical address of the PTE for ``va`` (creating missing tables if asked), or None.
        ``create``: a PTE is about to be written there, so each entry on the way must lead to
        a page table of ours (else bug check 0x1A/0x61941, emu.nt.mm.corruption)."""
        read_u64 = self.mm.mem.read_u64
        table = self.pml4_pfn * PAGE_SIZE
        for level, shift in _UPPER_LEVELS:             # every page fault comes here: lean
            entry_pa = table + ((va >> shift) & 0x1FF) * 8
            entry = read_u64(entry_pa)
            if not entry & _P:
                if not create:
                    return None
                if entry:                        # we never leave anything in one
                    raise corrupt_hierarchy(va, entry_pa, entry, "is not present, yet not 0")
                entry = self._new_table(va, level, entry_pa)
            elif create and self._checked.get(entry_pa) != entry:
                problem = table_problem(self.mm, entry, self._table_owner(va))
                if problem is not None:
                    raise corrupt_hierarchy(va, entry_pa, entry, problem)
                self._checked[entry_pa] = entry
            elif entry & _PS:
                return None                      # a large page: no PT below it
            table = entry & ADDRESS_MASK
        return table + ((va >> 12) & 0x1FF) * 8

    def _table_owner(self, va: int) -> int | None:
        """Whose page tables map ``va``: the kernel's for the kernel half, else ours."""
        return None if index(va, 4) >= KERNEL_PML4_FIRST else self.owner

    def _tracked(self, va: int) -> bool:
        """Does a valid page at ``va`` sit in a working set (its frame records its PTE)?"""
        if index(va, 4) >= KERNEL_PML4_FIRST:
            return is_paged_pool(va)
        return self.working_set is not None

    def _new_table(self, va: int, level: int, entry_pa: int) -> int:
        """Allocate a zeroed table below ``entry_pa``; user tables get US, kernel ones not."""
        kernel = index(va, 4) >= KERNEL_PML4_FIRST
        pfn = self.mm.new_frame(FrameUse.PAGE_TABLE, None if kernel else self.owner)
        self.mm.mem.zero(pfn * PAGE_SIZE)
        # Upper levels grant everything; the leaf PTE decides (SDM §4.6: rights combine).
        # The flags made an int first: an int with frame bits or'ed into a PTE member would
        # make an enum pseudo-member of that value, kept by the enum for ever.
        entry = pfn * PAGE_SIZE | (_TABLE_KERNEL if kernel else _TABLE_USER)
        self.mm.mem.write_u64(entry_pa, entry)
        if level == 4 and kernel:
            self.mm.share_kernel_pml4e(index(va, 4), entry)
        return entry

    def map_page(self, va: int, pfn: int, flags: PTE | int) -> None:
        """Map the 4 KiB page at ``va`` to frame ``pfn`` with leaf ``flags`` (a pageable
        page joins its working set). The TLB forgets ``va`` only if the PTE was valid: a
        change of P from 0 to 1 needs no invalidation, since no TLB entry or paging-structure
        cache entry is made from an entry whose P is 0 (SDM Vol. 3A 4.10.4.3), and every
        change from 1 to 0 here invalidates (``unmap_page``, the pager's trims)."""
        pte_pa = self.pte_address(va, create=True)
        mem = self.mm.mem
        was_valid = mem.read_u64(pte_pa) & _P
        mem.write_u64(pte_pa, pfn * PAGE_SIZE | int(flags))
        if was_valid:
            self.mm.page_changed(self, va)
        self.mm.pager.track(self, va, pte_pa, pfn)

    def unmap_page(self, va: int) -> int | None:
        """Remove the mapping of ``va``; returns the frame it mapped, or None (a not-valid
        PTE is left as it is)."""
        pte_pa = self.pte_address(va, create=False)
        if pte_pa is None:
            return None
        pte = self.mm.mem.read_u64(pte_pa)
        if not pte & _P:
            return None
        self.mm.mem.write_u64(pte_pa, 0)
        self.mm.page_changed(self, va)
        self.mm.pager.untrack(self, va)
        return (pte & ADDRESS_MASK) // PAGE_SIZE

    def discard_page(self, va: int) -> int | None:
        """Clear the PTE of ``va`` whatever its state: returns the frame of a valid page
        (the caller frees it); a transition page's frame or a pagefile slot is freed here.
        What the PTE names is checked first (emu.nt.mm.corruption)."""
        pte_pa = self.pte_address(va, create=False)
        if pte_pa is None:
            return None
        pte = self.mm.mem.read_u64(pte_pa)
        if pte & PTE.P:
            check_page_frame(self.mm, pte_pa, pte, self.owner, tracked=self._tracked(va))
            return self.unmap_page(va)
        if pte:
            self.mm.pager.discard(pte, pte_pa, self.owner)
            self.mm.mem.write_u64(pte_pa, 0)
        return None

    def set_software_protection(self, va: int, protection: int) -> None:
        """NtProtectVirtualMemory on a page that is not valid: its software PTE (if it has
        one) records the new MM_* protection, as Windows' does."""
        pte_pa = self.pte_address(va, create=False)
        if pte_pa is not None:
            pte = self.mm.mem.read_u64(pte_pa)
            self.mm.mem.write_u64(pte_pa, softpte.with_protection(pte, protection))

    def pte(self, va: int) -> int | None:
        """The leaf PTE value of ``va`` in any state, or None if no page table holds it."""
        pte_pa = self.pte_address(va, create=False)
        return None if pte_pa is None else self.mm.mem.read_u64(pte_pa)

    def lookup(self, va: int) -> Mapping | None:
        """The 4 KiB mapping of ``va`` if its PTE is present (no A/D side effects)."""
        pte_pa = self.pte_address(va, create=False)
        if pte_pa is None:
            return None
        pte = self.mm.mem.read_u64(pte_pa)
        if not pte & _P:
            return None
        return Mapping(va & ~0xFFF, (pte & ADDRESS_MASK) // PAGE_SIZE, pte)

    def checked_lookup(self, va: int) -> Mapping | None:
        """lookup, for a caller about to act on the frame (remap it, keep it aside): the
        PFN database must agree the frame holds this page (emu.nt.mm.corruption)."""
        pte_pa = self.pte_address(va, create=False)
        mapping = self.lookup(va)
        if mapping is not None:
            check_page_frame(self.mm, pte_pa, mapping.pte, self.owner,
                             tracked=self._tracked(va))
        return mapping

    def user_mappings(self) -> Iterator[Mapping]:
        """Every present 4 KiB page of the user half, in address order."""
        yield from self._mappings(self.cr3, 4, 0, range(KERNEL_PML4_FIRST))

    def _mappings(self, table: int, level: int, base: int, slots: range) -> Iterator[Mapping]:
        entries = struct.unpack("<512Q", self.mm.mem.read(table, PAGE_SIZE))
        for i in slots:
            entry = entries[i]
            if not entry & _P:
                continue
            va = base | i << (12 + 9 * (level - 1))
            if level == 1:
                yield Mapping(va, (entry & ADDRESS_MASK) >> 12, entry)
            elif not entry & _PS:
                yield from self._mappings(entry & ADDRESS_MASK, level - 1, va, range(512))

    def release_user_half(self) -> None:
        """Free every user frame and user page table, then the PML4 (process exit); pages
        in transition or in the pagefile give back their frame or slot."""
        self.mm.pager.end_working_set(self)
        self._free_tables(self.cr3, 4, range(KERNEL_PML4_FIRST))
        self.mm.pfn.release(self.pml4_pfn)
        self.mm.forget(self)

    def _free_tables(self, table: int, level: int, slots: range) -> None:
        """Free what the entries ``slots`` of ``table`` (at ``level``) name, each checked
        first (MiDeletePte's checks: emu.nt.mm.corruption), then the tables below."""
        entries = struct.unpack_from("<512Q", self.mm.mem.read(table, PAGE_SIZE))
        frames = []
        tracked = self.working_set is not None
        records, owner = self.mm.pfn.entries.existing(), self.owner
        if level == 1:
            # The common case checked inline (a process's exit frees thousands of pages);
            # anything unusual gets check_page_frame's verdict.
            private, keep = FrameUse.PRIVATE, frames.append
            for i in slots:
                entry = entries[i]
                if not entry:
                    continue
                entry_pa = table + 8 * i
                if entry & _P:
                    pfn = (entry & ADDRESS_MASK) >> 12
                    record = records.get(pfn)
                    if record is None or not pfn or record.owner != owner or \
                            record.use is not private or \
                            (record.pte_pa != entry_pa and (tracked or record.pte_pa)):
                        pfn = check_page_frame(self.mm, entry_pa, entry, owner,
                                               tracked=tracked)
                    keep(pfn)
                else:
                    self.mm.pager.discard(entry, entry_pa, owner)
            self.mm.pfn.release_many(frames)
            return
        for i in slots:
            entry, entry_pa = entries[i], table + 8 * i
            if not entry:
                continue
            problem = table_problem(self.mm, entry, self.owner) if entry & _P else \
                "is not present, yet not 0"
            if problem is not None:
                raise corrupt_table(table >> 12, entry_pa, entry, problem)
            pfn = (entry & ADDRESS_MASK) >> 12
            self._free_tables(pfn * PAGE_SIZE, level - 1, range(512))
            frames.append(pfn)
        self.mm.pfn.release_many(frames)


class PcidPool:
    """Process-context identifiers for address spaces: 1-4095, the lowest free first (so
    the same runs give the same PCIDs). PCID 0 is never handed out: it is what a CR3 load
    naming no PCID uses, flushed at every such load, so no space's translations stay
    there. With all 4,095 taken, a new space gets 0 (its loads flush). A PCID handed out
    again is flushed first (``on_reuse``): the space that had it may have left
    translations under it (SDM Vol. 3A 4.10.1: software must invalidate a PCID before it
    uses it for other page tables)."""

    LIMIT = 4096                  # CR3[11:0]

    def __init__(self, on_reuse: Callable[[int], None] | None = None) -> None:
        self._free = list(range(1, self.LIMIT))      # a heap: already in order
        self._on_reuse = on_reuse

    def allocate(self) -> int:
        """A PCID no live space has, flushed; 0 when every one is taken."""
        if not self._free:
            return 0
        pcid = heapq.heappop(self._free)
        if self._on_reuse is not None:
            self._on_reuse(pcid)
        return pcid

    def release(self, pcid: int) -> None:
        """``pcid``'s space is gone: it may be handed out again (0: nothing to do)."""
        if pcid:
            heapq.heappush(self._free, pcid)

    @property
    def in_use(self) -> int:
        """How many PCIDs live spaces hold."""
        return self.LIMIT - 1 - len(self._free)


class MemoryManager:
    """Owns RAM, the PFN database, the shared kernel half and every address space."""

    def __init__(self, mem: PhysicalMemory, on_page_changed: Callable[[int, int], None],
                 on_code_frame_reused: Callable[[], None], *,
                 on_tlb_flush: Callable[[], None] | None = None,
                 on_pcid_reuse: Callable[[int], None] | None = None,
                 pagefile: Pagefile | None = None) -> None:
        self.mem = mem
        self.pcids = PcidPool(on_pcid_reuse)
        self._pcid_of: dict[int, int] = {}        # a live space's CR3 -> its PCID
        self._on_code_frame_reused = on_code_frame_reused   # translated code may be stale
        self.pfn = PfnDatabase(mem.frames)
        self.pager = Pager(self, pagefile)
        self.kernel_pml4e: dict[int, int] = {}
        self.spaces: list[AddressSpace] = []
        self._on_page_changed = on_page_changed   # (cr3, va): the TLB must forget va
        self._on_tlb_flush = on_tlb_flush         # many PTEs changed: forget everything
        # The commit charge and limit: emu.nt.mm.virtual's SystemCommit, made on first use
        # (not imported here: virtual imports this module). Held here, not in a module-level
        # table keyed by the manager: its processes refer back to the manager, which would
        # keep every machine alive for the life of the interpreter.
        self.commit: Any = None
        self.system = self.create_address_space(owner=None)

    def create_address_space(self, owner: int | None) -> AddressSpace:
        """A new PML4 with the kernel half already shared."""
        space = AddressSpace(self, owner)
        space.pcid = self.pcids.allocate()
        self._pcid_of[space.cr3] = space.pcid
        self.spaces.append(space)
        return space

    def forget(self, space: AddressSpace) -> None:
        """``space`` is gone (its tables freed): its PCID may be handed out again."""
        self.spaces.remove(space)
        self._pcid_of.pop(space.cr3, None)
        self.pcids.release(space.pcid)

    def pcid_of(self, cr3: int) -> int:
        """The PCID of the live address space whose PML4 is at ``cr3`` (0: none)."""
        return self._pcid_of.get(cr3, 0)

    def share_kernel_pml4e(self, slot: int, entry: int) -> None:
        """A new kernel PML4 entry: copy it into every PML4 so the kernel half stays one space."""
        self.kernel_pml4e[slot] = entry
        for space in self.spaces:
            self.mem.write_u64(space.cr3 + slot * 8, entry)

    def page_changed(self, space: AddressSpace, va: int) -> None:
        self._on_page_changed(space.cr3, va)

    def flush_tlb(self) -> None:
        """Many PTEs changed at once (a trim): drop every cached translation."""
        if self._on_tlb_flush is not None:
            self._on_tlb_flush()

    def new_frame(self, use: FrameUse, owner: int | None = None, va: int | None = None) -> int:
        """A frame for ``use`` (contents as they were), trimming working sets first if
        frames run low; raises OutOfFrames when none can be had."""
        self.pager.make_room()
        return self.pfn.allocate(use, owner, va)

    def allocate_frame(self, use: FrameUse, owner: int | None, va: int | None) -> int:
        """A zeroed frame (demand-zero semantics: a new page never leaks old contents)."""
        pfn = self.new_frame(use, owner, va)
        self.mem.write(pfn * PAGE_SIZE, _ZERO_PAGE)
        return pfn

    def map_new(self, space: AddressSpace, va: int, protect: Protection, *,
                use: FrameUse = FrameUse.PRIVATE, data: bytes = b"") -> int:
        """Back the page at ``va`` with a new zeroed frame holding ``data``; returns the frame."""
        user = index(va, 4) < KERNEL_PML4_FIRST
        pfn = self.allocate_frame(use, space.owner if user else None, va)
        self.pfn.entries[pfn].modified = True        # made by the kernel: no copy anywhere
        if data:
            self.mem.write(pfn * PAGE_SIZE, data[:PAGE_SIZE])
        if protect & _EXECUTABLE:
            entry = self.pfn.entries[pfn]
            if entry.had_code:
                # Unicorn keeps translated blocks by physical page and does not see our
                # writes (platform-facts.md): a frame reused for new code must be flushed.
                self._on_code_frame_reused()
            entry.had_code = True
        try:
            space.map_page(va, pfn, leaf_flags(protect, user=user, populated=True))
        except OutOfFrames:
            self.pfn.release(pfn)          # no frame left for a page table: nothing maps it
            raise
        return pfn
