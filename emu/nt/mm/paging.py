"""Paging: working sets, the clock that trims them, the modified page writer, page-ins.

The seed: "When physical memory is low, the memory manager saves pages of
physical memory to a disk file." How that happens here, in Windows' terms
(Windows Internals, 7th ed., ch. 5, "Working sets", "Page frame number database"):

- A working set is the set of pages of one address space that are valid now.
  Each process has one; the kernel has one for its pageable memory (PagedPool).
  Page tables and nonpaged kernel memory are never in one: they never leave RAM.
- When the frames that can be had without I/O (free + standby) fall below a
  low-water mark, pages are trimmed: each working set keeps its pages in a
  clock, and the trimmer visits the working sets in turn, running each one's
  hand a little way: a page whose PTE has A = 1 gets A cleared (and its TLB
  entry dropped) and a second chance; a page whose A is still 0 when the hand
  comes back is trimmed: its
  PTE becomes a transition PTE and its frame goes to the modified list (dirty:
  PTE.D, or never written out) or the standby list (the pagefile has a copy).
  A page never written since it was zeroed needs no copy at all: its PTE goes
  back to demand zero and its frame to the free list.
- The modified page writer stores modified frames in pagefile slots and moves
  them to the standby list. When the free list is empty, the oldest standby
  frame is repurposed: its page's PTE now names its slot.
- A touch of a transition page is a soft fault (the frame comes back off its
  list, no I/O); of a pagefile page a hard fault (a frame is read back from the
  slot, which the page keeps while it stays clean); of a demand-zero page a
  zeroed frame.

Everything runs in instruction order from the allocation that needed a frame,
so the same run always evicts the same pages.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field, fields
from typing import Protocol

from emu.hw.memory import PhysicalMemory
from emu.hw.mmu import PTE
from emu.nt import layout
from emu.nt.bugcheck import BugCheck, BugCheckCode
from emu.nt.mm import softpte
from emu.nt.mm.corruption import check_page_frame, corrupt_pte, corrupt_working_set
from emu.nt.mm.pagefile import Pagefile, PagefileWriteError
from emu.nt.mm.pfn import FrameUse, OutOfFrames, PagingIoError, PfnDatabase, corrupt_pfn
from emu.nt.status import NTSTATUS

_P, _A, _D = int(PTE.P), int(PTE.A), int(PTE.D)
# A transition PTE: P = 0, Transition = 1, Prototype = 0 (emu.nt.mm.softpte.decode).
_TRANSITION_TEST = _P | softpte.TRANSITION | softpte.PROTOTYPE
_PFN_MASK = 0x000F_FFFF_FFFF_F000
_WALK = object()         # page_in: the PTE's address is not known yet
TRIM_STEPS = 64          # pages one visit of the trimmer moves a working set's hand


# What the pager uses of emu.nt.mm.address_space, as protocols: that module builds on this
# one (its address spaces join working sets here), so this one never imports it back.

class AddressSpace(Protocol):
    """One process's page tables (emu.nt.mm.address_space.AddressSpace), as the pager sees
    them: whose they are, their working set, where a page's PTE is."""

    owner: int | None
    working_set: WorkingSet | None

    def pte_address(self, va: int, *, create: bool) -> int | None: ...


class MemoryManager(Protocol):
    """The memory manager (emu.nt.mm.address_space.MemoryManager), as the pager sees it."""

    mem: PhysicalMemory
    pfn: PfnDatabase
    system: AddressSpace

    def new_frame(self, use: FrameUse, owner: int | None = None, va: int | None = None) -> int:
        ...

    def flush_tlb(self) -> None: ...


@dataclass
class PagingCounters:
    """What paging did, for one working set or the whole machine."""

    hard_faults: int = 0        # read back from the pagefile
    soft_faults: int = 0        # taken back off the standby or modified list
    demand_zero_faults: int = 0  # a zeroed frame for a page never touched (or never written)
    pages_written: int = 0      # pagefile writes
    pages_read: int = 0         # pagefile reads
    trims: int = 0              # pages taken out of a working set

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(eq=False)
class WorkingSet:
    """The valid pageable pages of one address space (or of the kernel's PagedPool), in
    the order its clock hand meets them: virtual address -> PTE address."""

    name: str
    space: AddressSpace
    pages: OrderedDict[int, int] = field(default_factory=OrderedDict)
    peak: int = 0
    counters: PagingCounters = field(default_factory=PagingCounters)


def is_paged_pool(va: int) -> bool:
    """Is ``va`` in PagedPool, the only kernel memory that may leave RAM?"""
    return layout.KERNEL_POOL_PAGED <= va < layout.KERNEL_POOL_PAGED + layout.KERNEL_POOL_SIZE


class Pager:
    """The memory manager's paging half: one per machine. ``pagefile`` None: no paging."""

    def __init__(self, mm: MemoryManager, pagefile: Pagefile | None) -> None:
        self.mm = mm
        self.pagefile = pagefile
        self.counters = PagingCounters()
        self.system_ws: WorkingSet | None = None   # made with the first PagedPool page
        self.working_sets: list[WorkingSet] = []   # the live ones, in creation order
        self._turn = 0                              # the next one the trimmer visits
        frames = len(mm.pfn.entries)
        self.low = max(8, frames // 64)          # below this many available frames: trim
        self.high = 2 * self.low                 # ... until this many are available again
        # Resident pages whose frame holds a pagefile slot, as they joined a working set:
        # frame -> (working set, va). What _new_slot gives back when the pagefile is full,
        # without scanning every working-set page (entries may have left since: checked).
        self._slotted: dict[int, tuple[WorkingSet, int]] = {}
        if pagefile is not None:
            mm.pfn.on_slot_released = self._release_slot_of

    # -- which pages are in a working set -------------------------------------------------

    def working_set_of(self, space: AddressSpace, va: int) -> WorkingSet | None:
        if va >= layout.KERNEL_SPACE_START:
            if not is_paged_pool(va):
                return None
            if self.system_ws is None:
                self.system_ws = WorkingSet("PagedPool", self.mm.system)
                self.working_sets.insert(0, self.system_ws)
            return self.system_ws
        return space.working_set

    def track(self, space: AddressSpace, va: int, pte_pa: int, pfn: int) -> None:
        """``va`` was just made valid on frame ``pfn``: into its working set, if pageable
        (the frame then records this PTE as the one to change when the page leaves; a
        second mapping of the frame, such as an MDL's system-space view, records nothing)."""
        ws = self.working_set_of(space, va)
        if ws is None:
            return
        entry = self.mm.pfn.entries[pfn]
        entry.pte_pa = pte_pa
        if entry.slot is not None:
            self._slotted[pfn] = (ws, va)
        if va not in ws.pages:
            ws.pages[va] = pte_pa
            if len(ws.pages) > ws.peak:
                ws.peak = len(ws.pages)

    def untrack(self, space: AddressSpace, va: int) -> None:
        """``va`` is no longer valid: out of its working set."""
        ws = self.working_set_of(space, va)
        if ws is not None:
            ws.pages.pop(va, None)

    def start_working_set(self, space: AddressSpace, name: str, pages: list[int]) -> WorkingSet:
        """A process is complete: its pages (mapped while it was made, kept out of any
        working set until its VADs knew them) become pageable, in address order."""
        space.working_set = ws = WorkingSet(name, space)
        self.working_sets.append(ws)
        for va in sorted(pages):
            pte_pa = space.pte_address(va, create=False)
            self.track(space, va, pte_pa, (self.mm.mem.read_u64(pte_pa) & _PFN_MASK) >> 12)
        return ws

    def end_working_set(self, space: AddressSpace) -> None:
        """The process is going: its pages leave the clock (its frames are freed next)."""
        ws = space.working_set
        if ws is None or ws not in self.working_sets:
            return
        self.working_sets.remove(ws)
        ws.pages = OrderedDict()

    # -- getting a frame ------------------------------------------------------------------

    def make_room(self) -> None:
        """Before a frame is taken: balance if available frames are low, then make sure the
        free list has one (repurposing the oldest standby frame if need be)."""
        pfn = self.mm.pfn
        if self.pagefile is not None and pfn.available < self.low:
            self.balance()
        if not pfn.free_count:
            if not pfn.standby:
                if pfn.modified and self.pagefile is not None and \
                        self.pagefile.write_failures:
                    raise PagingIoError("the pagefile cannot be written: modified pages stay "
                                        "in RAM", NTSTATUS.STATUS_DISK_FULL)
                raise OutOfFrames("out of physical memory")
            self._repurpose()

    def balance(self) -> None:
        """MmWorkingSetManager and the modified page writer: trim until enough frames would
        be available once the modified ones are written, then write them."""
        pfn = self.mm.pfn
        wanted = self.high - pfn.available - len(pfn.modified)
        if wanted > 0:
            self.trim(wanted)
        self.write_modified()

    def trim(self, wanted: int) -> int:
        """Visit the working sets in turn, moving each one's clock hand up to TRIM_STEPS
        pages, until ``wanted`` pages are trimmed or every hand has gone round twice;
        returns how many were."""
        steps_left = 2 * sum(len(ws.pages) for ws in self.working_sets)
        trimmed, changed = 0, False
        while trimmed < wanted and steps_left > 0:
            ws = self.working_sets[self._turn % len(self.working_sets)]
            self._turn += 1
            steps = min(TRIM_STEPS, len(ws.pages), steps_left)
            steps_left -= max(steps, 1)
            done, touched = self._run_hand(ws, steps, wanted - trimmed)
            trimmed += done
            changed |= touched
        if changed:
            self.mm.flush_tlb()
        return trimmed

    def _run_hand(self, ws: WorkingSet, steps: int, wanted: int) -> tuple[int, bool]:
        """Up to ``steps`` pages of ``ws``'s clock: second chances and trims."""
        mem, entries, pages = self.mm.mem, self.mm.pfn.entries, ws.pages
        trimmed, changed = 0, False
        for _ in range(steps):
            if trimmed >= wanted or not pages:
                break
            va, pte_pa = pages.popitem(last=False)
            pte = mem.read_u64(pte_pa)
            if pte & _A and pte & _P:              # second chance: clear A, forget the TLB's
                mem.write_u64(pte_pa, pte & ~_A)
                pages[va] = pte_pa
                changed = True
                continue
            pte, pfn = self._ws_page(ws, va, pte_pa)     # about to act on its frame: checked
            if entries[pfn].locks:
                pages[va] = pte_pa
                continue
            self._trim_page(ws, va, pte_pa, pte, pfn)
            trimmed += 1
            changed = True
        return trimmed, changed

    def _trim_page(self, ws: WorkingSet, va: int, pte_pa: int, pte: int, pfn: int) -> None:
        """Take one page (already off ``ws``'s clock) out: transition, or demand zero."""
        entry = self.mm.pfn.entries[pfn]
        entry.modified |= bool(pte & _D)
        protection = softpte.protection_of(pte)
        if not entry.modified and entry.slot is None and entry.owner is not None:
            # Zeroed on first touch and never written since: nothing to keep.
            self.mm.mem.write_u64(pte_pa, softpte.demand_zero_pte(protection))
            self.mm.pfn.release(pfn)
        else:
            self.mm.mem.write_u64(pte_pa, softpte.transition_pte(pfn, protection))
            self.mm.pfn.to_transition(pfn)
        ws.counters.trims += 1
        self.counters.trims += 1

    def write_modified(self) -> int:
        """MiModifiedPageWriter: every modified frame to a pagefile slot (the one its page
        already has, or a new one), then to the standby list. A full pagefile or a failed
        write leaves the rest where they are, in RAM; nothing is lost."""
        if self.pagefile is None:
            return 0
        entries, written = self.mm.pfn.entries, 0
        for pfn in list(self.mm.pfn.modified):
            entry = entries[pfn]
            slot = entry.slot if entry.slot is not None else self._new_slot()
            if slot is None:
                break
            try:
                self.pagefile.write(slot, self.mm.mem.view(pfn * layout.PAGE_SIZE,
                                                           layout.PAGE_SIZE))
            except PagefileWriteError:
                if entry.slot is None:
                    self.pagefile.release(slot)
                break
            entry.slot, entry.modified = slot, False
            self.mm.pfn.written(pfn)
            ws = self._ws_of_entry(entry)
            if ws is not None:
                ws.counters.pages_written += 1
            self.counters.pages_written += 1
            written += 1
        return written

    def _new_slot(self) -> int | None:
        """A free pagefile slot; when none is left, the slots held by valid pages are given
        back first (MiReleasePageFileSpace: their copies would be rewritten anyway once the
        pages are trimmed, so they count as modified from now on)."""
        slot = self.pagefile.allocate()
        if slot is not None:
            return slot
        # Only the frames that joined a working set holding a slot can be such pages (a
        # valid page gets a slot only by a page-in, before it is mapped): O(1) amortized,
        # each is looked at once per time it became valid, however full the pagefile stays.
        # Slots come from a heap (lowest first), so the order they go back in is immaterial.
        entries = self.mm.pfn.entries
        slotted, self._slotted = self._slotted, {}
        for pfn, (ws, va) in slotted.items():
            pte_pa = ws.pages.get(va)
            if pte_pa is None or ws not in self.working_sets or entries[pfn].slot is None:
                continue                     # left its working set, or its slot went since
            if self._ws_page(ws, va, pte_pa)[1] != pfn:   # to act on: checked first
                continue                     # the page is on another frame now
            entry = entries[pfn]
            self._release_slot_of(entry.slot, pfn)
            entry.slot, entry.modified = None, True
        return self.pagefile.allocate()

    def purge_standby(self) -> int:
        """Repurpose every standby frame now (MemoryPurgeStandbyList): their pages are then
        only in the pagefile, and the frames are free."""
        count = 0
        while self.mm.pfn.standby:
            self._repurpose()
            count += 1
        return count

    def empty_working_sets(self) -> int:
        """Trim every page of every working set at once (MemoryEmptyWorkingSets)."""
        count = 0
        for ws in self.working_sets:
            for va, pte_pa in list(ws.pages.items()):
                pte, pfn = self._ws_page(ws, va, pte_pa)
                if self.mm.pfn.entries[pfn].locks:
                    continue
                del ws.pages[va]
                self._trim_page(ws, va, pte_pa, pte, pfn)
                count += 1
        if count:
            self.mm.flush_tlb()
        return count

    def _repurpose(self) -> None:
        """The oldest standby frame leaves its page, whose PTE now names its pagefile slot
        (the PTE must still name the frame in transition, else bug check 0x4E/0x99)."""
        pfn = next(iter(self.mm.pfn.standby))
        entry = self.mm.pfn.entries[pfn]
        pte = self.mm.mem.read_u64(entry.pte_pa) if entry.pte_pa is not None else 0
        if pte & _TRANSITION_TEST == softpte.TRANSITION and (pte & _PFN_MASK) >> 12 == pfn:
            # The common case, as softpte.decode would find it: in transition on this frame.
            self.mm.mem.write_u64(entry.pte_pa, softpte.pagefile_pte(
                entry.slot, pte >> softpte.PROTECTION_SHIFT & softpte.PROTECTION_MASK))
            self.mm.pfn.take_standby()
            return
        d = softpte.decode(pte) if entry.pte_pa is not None \
            else softpte.Decoded(softpte.PteState.ZERO)
        if d.state is not softpte.PteState.TRANSITION or d.pfn != pfn:
            where = "no PTE" if entry.pte_pa is None else f"a PTE at {entry.pte_pa:#x} that " \
                f"is {d.describe()}"
            raise corrupt_pfn(pfn, entry.use, f"the standby frame records {where}")
        self.mm.mem.write_u64(entry.pte_pa, softpte.pagefile_pte(entry.slot, d.protection))
        self.mm.pfn.take_standby()

    # -- what the memory manager reads back, checked (emu.nt.mm.corruption) -----------------

    def _ws_page(self, ws: WorkingSet, va: int, pte_pa: int) -> tuple[int, int]:
        """The PTE and frame of page ``va`` of ``ws``: a page in a working set is valid (else
        bug check 0x1A/0x41284) on a frame of its own that records this PTE (else 0x4E/0x99
        or 0x1A/0x41792)."""
        pte = self.mm.mem.read_u64(pte_pa)
        if not pte & _P:
            raise corrupt_working_set(va, pte_pa, pte, "is in a working set, not valid")
        return pte, check_page_frame(self.mm, pte_pa, pte, ws.space.owner, tracked=True)

    def _checked_slot(self, pte_pa: int, pte: int, slot: int) -> int:
        """``slot``, named by the pagefile PTE ``pte`` at ``pte_pa``, once the pagefile agrees
        that it holds a page (else bug check 0x1A/0x41792)."""
        if self.pagefile is None:
            raise corrupt_pte(pte_pa, pte, f"it names pagefile slot {slot:#x}, and there is "
                              "no pagefile")
        if not self.pagefile.holds_page(slot):
            where = "beyond the pagefile" if slot >= self.pagefile.slots else "free"
            raise corrupt_pte(pte_pa, pte, f"it names pagefile slot {slot:#x}, which is {where}")
        return slot

    def _release_slot_of(self, slot: int, pfn: int) -> None:
        """Frame ``pfn``'s pagefile copy is no longer needed: its slot goes back (a slot that
        holds no page means the frame's record is corrupt: bug check 0x4E/0x99)."""
        if not self.pagefile.holds_page(slot):
            raise corrupt_pfn(pfn, self.mm.pfn.entries[pfn].use,
                              f"its pagefile slot {slot:#x} holds no page")
        self.pagefile.release(slot)

    def _ws_of_entry(self, entry) -> WorkingSet | None:
        """The working set a frame's page belongs to (for the per-process counters)."""
        for ws in self.working_sets:
            if ws.space.owner == entry.owner:
                return ws
        return None

    # -- page-ins -------------------------------------------------------------------------

    def page_in(self, space: AddressSpace, va: int, use: FrameUse, owner: int | None, *,
                pte_pa: int | None | object = _WALK) -> int | None:
        """The frame holding not-valid page ``va`` again, if its PTE says where the page is
        (transition: a soft fault; pagefile: a hard fault); None when the page has no copy
        (demand zero, or no record). The caller maps the frame. ``pte_pa``: the caller has
        just walked to ``va``'s PTE (``space.pte_address(va, create=False)``)."""
        if pte_pa is _WALK:
            pte_pa = space.pte_address(va, create=False)
        ws = space.working_set if va < layout.KERNEL_SPACE_START else \
            self.system_ws if is_paged_pool(va) else None
        if ws is not None and va in ws.pages:
            recorded = ws.pages[va]
            raise corrupt_working_set(va, recorded, self.mm.mem.read_u64(recorded),
                                      "took a page fault, yet it is in its working set")
        if pte_pa is None:
            return None
        pte = self.mm.mem.read_u64(pte_pa)
        if not pte and va < layout.KERNEL_SPACE_START:
            return None                  # no record: a demand-zero fault (the common case)
        d = softpte.decode(pte)
        counters = self._counters(space, va)
        if d.state is softpte.PteState.TRANSITION:
            pfn = check_page_frame(self.mm, pte_pa, pte, owner, tracked=True)
            self.mm.pfn.reclaim(pfn)
            counters.soft_faults += 1
            self.counters.soft_faults += 1
            return pfn
        if d.state is not softpte.PteState.PAGEFILE:
            return None
        slot = self._checked_slot(pte_pa, pte, d.slot)
        pfn = self.mm.new_frame(use, owner, va)
        try:
            data = self.pagefile.read(slot)
        except OSError as err:          # failed or short: the page is lost, never zero-filled
            self.mm.pfn.release(pfn)
            status = getattr(err, "status", NTSTATUS.STATUS_DEVICE_DATA_ERROR)
            if va >= layout.KERNEL_SPACE_START:
                # KERNEL_DATA_INPAGE_ERROR (bug check reference, 0x7A): the PTE's address,
                # the I/O status, the PTE, the address that could not be paged in.
                raise BugCheck(BugCheckCode.KERNEL_DATA_INPAGE_ERROR,
                               (pte_pa, status, pte, va),
                               detail=f"kernel data at {va:#x} could not be read back from "
                                      f"pagefile slot {slot}: {err}") from None
            raise PagingIoError(str(err), status) from None
        self.mm.mem.write(pfn * layout.PAGE_SIZE, data)
        entry = self.mm.pfn.entries[pfn]
        entry.slot, entry.modified = slot, False        # the copy stays good while clean
        counters.hard_faults += 1
        counters.pages_read += 1
        self.counters.hard_faults += 1
        self.counters.pages_read += 1
        return pfn

    def discard(self, pte: int, pte_pa: int, owner: int | None) -> None:
        """The not-valid PTE ``pte`` of ``owner``'s page, at ``pte_pa``, is being cleared
        (decommit, process exit): free what it holds, once checked (emu.nt.mm.corruption)."""
        d = softpte.decode(pte)
        if d.state is softpte.PteState.TRANSITION:
            self.mm.pfn.release(check_page_frame(self.mm, pte_pa, pte, owner, tracked=True))
        elif d.state is softpte.PteState.PAGEFILE:
            slot = self._checked_slot(pte_pa, pte, d.slot)
            self.pagefile.release(slot)

    def demand_zero(self, space: AddressSpace, va: int) -> None:
        """Count a demand-zero fault for ``va``'s working set."""
        self._counters(space, va).demand_zero_faults += 1
        self.counters.demand_zero_faults += 1

    def _counters(self, space: AddressSpace, va: int) -> PagingCounters:
        """The counters of ``va``'s working set (a scratch set for a page that has none)."""
        ws = self.working_set_of(space, va)
        return ws.counters if ws is not None else PagingCounters()
