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
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


class FrameUse(enum.Enum):
    """What a physical frame is used for."""

    FREE = "free"
    RESERVED = "reserved"       # frame 0: never handed out, so physical 0 is never a real frame
    PAGE_TABLE = "page table"   # a PML4, PDPT, PD or PT
    PRIVATE = "private"         # a process's own page (image, stack, heap)
    KERNEL = "kernel"           # the kernel's own pages (GDT, TSS, code, stacks, pools)
    STANDBY = "standby"         # a trimmed page, clean: the pagefile has a copy
    MODIFIED = "modified"       # a trimmed page, dirty: to be written before reuse


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
        self.entries[0].use = FrameUse.RESERVED
        self._free: deque[int] = deque(range(1, frames))
        self.standby: dict[int, None] = {}      # insertion-ordered: oldest first
        self.modified: dict[int, None] = {}
        self.on_slot_released: Callable[[int], None] | None = None

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
        return pfn

    def release(self, pfn: int) -> None:
        """Return a frame to the free list (its contents are left as they are); its page's
        pagefile copy, if any, goes too."""
        entry = self.entries[pfn]
        use = entry.use
        if use is FrameUse.FREE or use is FrameUse.RESERVED:
            raise AssertionError(f"PfnDatabase.release: frame {pfn:#x} is {use.value}")
        if use is FrameUse.STANDBY:
            del self.standby[pfn]
        elif use is FrameUse.MODIFIED:
            del self.modified[pfn]
        if entry.slot is not None:
            if self.on_slot_released is not None:
                self.on_slot_released(entry.slot)
            entry.slot = None
        entry.use, entry.owner, entry.va = FrameUse.FREE, None, None   # had_code stays
        entry.pte_pa, entry.modified, entry.locks = None, False, 0
        self._free.append(pfn)

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
        entry.use, entry.owner, entry.va = FrameUse.FREE, None, None
        entry.pte_pa, entry.slot, entry.modified, entry.locks = None, None, False, 0
        self._free.appendleft(pfn)
        return pfn

    def release_many(self, pfns: list[int]) -> None:
        """Release each frame of ``pfns`` in order (process exit frees thousands)."""
        for pfn in pfns:
            self.release(pfn)

    def count(self, use: FrameUse) -> int:
        """How many frames are in ``use``."""
        return sum(1 for e in self.entries if e.use is use)
