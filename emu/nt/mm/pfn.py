"""The PFN database: one record per physical frame saying what it holds and for whom.

Windows keeps an MMPFN per page frame (Windows Internals, 7th ed., ch. 5,
"Page frame number database"). Ours records the use, the owning process id
and the virtual address the frame backs, which is what ``emu debug``'s
``ptov`` and the address-space pictures need.

Frames are handed out from a FIFO free list: a freed frame goes to the back,
so a frame is reused as late as possible and allocation is deterministic.

Two more lists hold frames whose page was trimmed from a working set but whose
contents are still good (their PTEs are in transition, emu.nt.mm.softpte): the
modified list (not yet written to the pagefile) and the standby list (the
pagefile has a copy). Both are in FIFO order; a soft fault takes a frame back
off either, and when the free list is empty the oldest standby frame is given
to someone else (repurposed).

Asked to free a frame that is beyond RAM, free already or never handed out, the
database stops the machine with PFN_LIST_CORRUPT (0x4E) rather than corrupt its
lists; it also counts the frames each process holds, so that a process's end can
prove every one came back (emu.nt.mm.corruption).
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from emu.nt.bugcheck import BugCheck, BugCheckCode


class FrameUse(enum.Enum):
    """What a physical frame is used for."""

    FREE = "free"
    RESERVED = "reserved"       # frame 0: never handed out, so physical 0 is never a real frame
    PAGE_TABLE = "page table"   # a PML4, PDPT, PD or PT
    PRIVATE = "private"         # a process's own page (image, stack, heap)
    KERNEL = "kernel"           # the kernel's own pages (GDT, TSS, code, stacks, pools)
    STANDBY = "standby"         # a trimmed page, clean: the pagefile has a copy
    MODIFIED = "modified"       # a trimmed page, dirty: to be written before reuse


# -- PFN_LIST_CORRUPT (0x4E): the stops of a PFN database that is asked for the impossible --
# (Microsoft's bug check reference, "Bug Check 0x4E: PFN_LIST_CORRUPT"; see emu.nt.mm.corruption)

class PfnListCorrupt(enum.IntEnum):
    """Parameter 1 of PFN_LIST_CORRUPT (0x4E)."""

    LIST_ENTRY_CORRUPT = 0x02
    SHARE_COUNT_BELOW_ZERO = 0x07     # "unlocked a certain page more times than it locked it"
    PTE_OR_PFN_CORRUPT = 0x99


class PageLocation(enum.IntEnum):
    """The list a frame is on, as Windows numbers them (MMLISTS, MMPFN.PageLocation): the
    "current page state" of a 0x4E bug check."""

    ZeroedPageList = 0
    FreePageList = 1
    StandbyPageList = 2
    ModifiedPageList = 3
    ModifiedNoWritePageList = 4
    BadPageList = 5               # our frame 0: never handed out, like a bad page
    ActiveAndValid = 6


_LOCATION = {FrameUse.FREE: PageLocation.FreePageList,
             FrameUse.RESERVED: PageLocation.BadPageList,
             FrameUse.STANDBY: PageLocation.StandbyPageList,
             FrameUse.MODIFIED: PageLocation.ModifiedPageList}


def page_location(use: FrameUse) -> PageLocation:
    """The Windows page state of a frame in ``use``."""
    return _LOCATION.get(use, PageLocation.ActiveAndValid)


def corrupt_pfn(pfn: int, use: FrameUse, why: str) -> BugCheck:
    """0x4E/0x99: frame ``pfn``'s record and a PTE (or the caller) disagree."""
    return BugCheck(BugCheckCode.PFN_LIST_CORRUPT,
                    (int(PfnListCorrupt.PTE_OR_PFN_CORRUPT), pfn, int(page_location(use)), 0),
                    detail=f"a PTE or PFN is corrupted: frame {pfn:#x} is {use.value}; {why}")


def freed_twice(pfn: int) -> BugCheck:
    """0x4E/0x07: frame ``pfn`` is freed although it is free already (share count 0)."""
    return BugCheck(BugCheckCode.PFN_LIST_CORRUPT,
                    (int(PfnListCorrupt.SHARE_COUNT_BELOW_ZERO), pfn, 0, 0),
                    detail=f"frame {pfn:#x} is freed, but it is free already")


def beyond_ram(pfn: int, frames: int) -> BugCheck:
    """0x4E/0x02: frame ``pfn`` is to be freed, but RAM ends at ``frames``."""
    return BugCheck(BugCheckCode.PFN_LIST_CORRUPT,
                    (int(PfnListCorrupt.LIST_ENTRY_CORRUPT), pfn, frames - 1, 0),
                    detail=f"frame {pfn:#x} is freed, but the last frame of RAM is "
                           f"{frames - 1:#x}")


@dataclass(slots=True)
class PfnEntry:
    use: FrameUse = FrameUse.FREE
    owner: int | None = None    # process id (None for the kernel / shared)
    va: int | None = None       # the virtual address this frame backs, when it has one
    had_code: bool = False      # once mapped executable: translated code may be cached for it
    pte_pa: int | None = None   # the PTE that maps it (valid or transition): MMPFN.PteAddress
    slot: int | None = None     # the pagefile slot holding a copy of it
    modified: bool = False      # its contents differ from the copy (or it has none to lose)
    locks: int = 0              # MmProbeAndLockPages: never trimmed while locked


class _Entries:
    """The PFN array, each record made on first use: a 64 MiB machine would otherwise spend
    a tenth of `emu run hello` building 16,384 records nobody reads."""

    def __init__(self, frames: int) -> None:
        self._frames = frames
        self._made: dict[int, PfnEntry] = {}

    def __len__(self) -> int:
        return self._frames

    def __getitem__(self, pfn: int) -> PfnEntry:
        entry = self._made.get(pfn)
        if entry is None:
            if not 0 <= pfn < self._frames:
                raise IndexError(f"frame {pfn:#x} is beyond RAM")
            entry = self._made[pfn] = PfnEntry()
        return entry

    def __iter__(self):
        return (self[pfn] for pfn in range(self._frames))

    def existing(self) -> dict[int, PfnEntry]:
        """The records made so far, by frame (read only: a frame ever handed out has one)."""
        return self._made

    def made(self) -> list[tuple[int, PfnEntry]]:
        """(frame, record) of every frame whose record exists: every frame ever used."""
        return list(self._made.items())


class OutOfFrames(Exception):
    """No free physical frame is left."""


class PagingIoError(OutOfFrames):
    """No frame could be had because the pagefile failed (a full disk, a read error):
    the access that needed it gets STATUS_IN_PAGE_ERROR with ``status`` as the cause."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class PfnDatabase:
    """Frame allocator and per-frame records for ``frames`` frames of RAM."""

    def __init__(self, frames: int) -> None:
        self.entries = _Entries(frames)
        self._entries_made = self.entries.existing()
        self.frames = frames
        self.entries[0].use = FrameUse.RESERVED
        self._free: deque[int] = deque(range(1, frames))
        self.standby: dict[int, None] = {}      # insertion-ordered: oldest first
        self.modified: dict[int, None] = {}
        self.owned: dict[int, int] = {}         # process id -> frames it holds (any use)
        self.locked: set[int] = set()           # frames with MmProbeAndLockPages locks on
        self.on_slot_released: Callable[[int, int], None] | None = None   # (slot, frame)

    @property
    def free_count(self) -> int:
        return len(self._free)

    @property
    def available(self) -> int:
        """Frames that can be had without writing anything: free plus standby."""
        return len(self._free) + len(self.standby)

    def allocate(self, use: FrameUse, owner: int | None = None, va: int | None = None) -> int:
        """Take a free frame for ``use``; raises OutOfFrames when RAM is exhausted."""
        if not self._free:
            raise OutOfFrames("out of physical memory")
        pfn = self._free.popleft()
        entry = self.entries[pfn]
        entry.use, entry.owner, entry.va = use, owner, va
        if owner is not None:
            self.owned[owner] = self.owned.get(owner, 0) + 1
        return pfn

    def release(self, pfn: int) -> None:
        """Return a frame to the free list (its contents are left as they are); its page's
        pagefile copy, if any, goes too. A frame beyond RAM, free already or never handed
        out is a corrupt PTE or record behind the caller: bug check PFN_LIST_CORRUPT."""
        if not 0 <= pfn < self.frames:
            raise beyond_ram(pfn, self.frames)
        entry = self.entries[pfn]
        use = entry.use
        if use is FrameUse.FREE:
            raise freed_twice(pfn)
        if use is FrameUse.RESERVED:
            raise corrupt_pfn(pfn, use, "it is never handed out, so never freed")
        if use is FrameUse.STANDBY:
            del self.standby[pfn]
        elif use is FrameUse.MODIFIED:
            del self.modified[pfn]
        if entry.slot is not None:
            if self.on_slot_released is not None:
                self.on_slot_released(entry.slot, pfn)
            entry.slot = None
        self._disown(entry.owner)
        if entry.locks:
            self.locked.discard(pfn)
        entry.use, entry.owner, entry.va = FrameUse.FREE, None, None   # had_code stays
        entry.pte_pa, entry.modified, entry.locks = None, False, 0
        self._free.append(pfn)

    def lock(self, pfn: int) -> PfnEntry:
        """One more MmProbeAndLockPages lock on frame ``pfn``: it is never trimmed while
        locked. Returns its record."""
        entry = self.entries[pfn]
        entry.locks += 1
        self.locked.add(pfn)
        return entry

    def unlock(self, pfn: int) -> None:
        """One lock fewer on frame ``pfn`` (never below none)."""
        entry = self.entries[pfn]
        if entry.locks > 1:
            entry.locks -= 1
        else:
            entry.locks = 0
            self.locked.discard(pfn)

    def to_transition(self, pfn: int) -> None:
        """A page trimmed from its working set: its frame goes to the back of the modified
        list if its contents must be written first, else of the standby list."""
        entry = self.entries[pfn]
        if entry.modified or entry.slot is None:
            entry.use = FrameUse.MODIFIED
            self.modified[pfn] = None
        else:
            entry.use = FrameUse.STANDBY
            self.standby[pfn] = None

    def written(self, pfn: int) -> None:
        """The modified page writer stored the frame in its slot: to the standby list."""
        del self.modified[pfn]
        self.entries[pfn].use = FrameUse.STANDBY
        self.standby[pfn] = None

    def reclaim(self, pfn: int) -> None:
        """A soft fault: the frame comes off the standby or modified list, back in use."""
        self.standby.pop(pfn, None)
        self.modified.pop(pfn, None)
        entry = self.entries[pfn]
        entry.use = FrameUse.PRIVATE if entry.owner is not None else FrameUse.KERNEL

    def take_standby(self) -> int:
        """The oldest standby frame, off its list and free of its page (the caller has made
        the page's PTE point at the pagefile); the slot stays with the page."""
        pfn = next(iter(self.standby))
        del self.standby[pfn]
        entry = self.entries[pfn]
        self._disown(entry.owner)
        if entry.locks:
            self.locked.discard(pfn)
        entry.use, entry.owner, entry.va = FrameUse.FREE, None, None
        entry.pte_pa, entry.slot, entry.modified, entry.locks = None, None, False, 0
        self._free.appendleft(pfn)
        return pfn

    def _disown(self, owner: int | None) -> None:
        if owner is not None:
            left = self.owned[owner] - 1
            if left:
                self.owned[owner] = left
            else:
                del self.owned[owner]

    def frames_of(self, owner: int) -> list[int]:
        """Every frame ``owner`` holds, in frame order (a scan of the database: for reports,
        not for hot paths; ``owned`` has the count)."""
        return sorted(pfn for pfn, e in self.entries.made() if e.owner == owner
                      and e.use is not FrameUse.FREE)

    def release_many(self, pfns: list[int]) -> None:
        """Release each frame of ``pfns`` in order (process exit frees thousands): exactly
        ``release`` of each, the common case (a frame in use with no pagefile copy) done
        inline, anything else by ``release`` itself."""
        made, owned, frames, free = self._entries_made, self.owned, self.frames, self._free
        private, page_table, kernel, unused = (FrameUse.PRIVATE, FrameUse.PAGE_TABLE,
                                               FrameUse.KERNEL, FrameUse.FREE)
        for pfn in pfns:
            entry = made.get(pfn)
            if entry is None or entry.slot is not None or not 0 <= pfn < frames:
                self.release(pfn)
                continue
            use = entry.use                        # identity tests: an Enum's hash is slow
            if use is not private and use is not page_table and use is not kernel:
                self.release(pfn)
                continue
            owner = entry.owner
            if owner is not None:                  # _disown
                left = owned[owner] - 1
                if left:
                    owned[owner] = left
                else:
                    del owned[owner]
            if entry.locks:
                self.locked.discard(pfn)
            entry.use, entry.owner, entry.va = unused, None, None   # had_code stays
            entry.pte_pa, entry.modified, entry.locks = None, False, 0
            free.append(pfn)

    def count(self, use: FrameUse) -> int:
        """How many frames are in ``use``."""
        return sum(1 for e in self.entries if e.use is use)
