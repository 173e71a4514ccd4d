"""The PFN database: one record per physical frame saying what it holds and for whom.

Windows keeps an MMPFN per page frame (Windows Internals, 7th ed., ch. 5,
"Page frame number database"). Ours records the use, the owning process id
and the virtual address the frame backs, which is what ``emu debug``'s
``ptov`` and the address-space pictures need.

Frames are handed out from a FIFO free list: a freed frame goes to the back,
so a frame is reused as late as possible and allocation is deterministic.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass


class FrameUse(enum.Enum):
    """What a physical frame is used for."""

    FREE = "free"
    RESERVED = "reserved"       # frame 0: never handed out, so physical 0 is never a real frame
    PAGE_TABLE = "page table"   # a PML4, PDPT, PD or PT
    PRIVATE = "private"         # a process's own page (image, stack, heap)
    KERNEL = "kernel"           # the kernel's own pages (GDT, TSS, code, stacks)


@dataclass
class PfnEntry:
    use: FrameUse = FrameUse.FREE
    owner: int | None = None    # process id (None for the kernel / shared)
    va: int | None = None       # the virtual address this frame backs, when it has one
    had_code: bool = False      # once mapped executable: translated code may be cached for it


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


class PfnDatabase:
    """Frame allocator and per-frame records for ``frames`` frames of RAM."""

    def __init__(self, frames: int) -> None:
        self.entries = _Entries(frames)
        self.entries[0].use = FrameUse.RESERVED
        self._free: deque[int] = deque(range(1, frames))

    @property
    def free_count(self) -> int:
        return len(self._free)

    def allocate(self, use: FrameUse, owner: int | None = None, va: int | None = None) -> int:
        """Take a free frame for ``use``; raises OutOfFrames when RAM is exhausted."""
        if not self._free:
            raise OutOfFrames("out of physical memory")
        pfn = self._free.popleft()
        entry = self.entries[pfn]
        entry.use, entry.owner, entry.va = use, owner, va
        return pfn

    def release(self, pfn: int) -> None:
        """Return a frame to the free list (its contents are left as they are)."""
        entry = self.entries[pfn]
        if entry.use in (FrameUse.FREE, FrameUse.RESERVED):
            raise AssertionError(f"PfnDatabase.release: frame {pfn:#x} is {entry.use.value}")
        entry.use, entry.owner, entry.va = FrameUse.FREE, None, None   # had_code stays
        self._free.append(pfn)

    def release_many(self, pfns: list[int]) -> None:
        """Release each frame of ``pfns`` in order (process exit frees thousands)."""
        for pfn in pfns:
            self.release(pfn)

    def count(self, use: FrameUse) -> int:
        """How many frames are in ``use``."""
        return sum(1 for e in self.entries if e.use is use)
