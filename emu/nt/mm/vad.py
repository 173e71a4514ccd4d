"""Virtual address descriptors: which parts of a process's user half are reserved or committed.

Windows keeps one VAD per allocation (Windows Internals, 7th ed., ch. 5,
"Virtual address descriptors"): the range a single NtAllocateVirtualMemory
reserved (or an image view), its allocation base, the protection it was
reserved with and its type. Inside one VAD, each page is reserved or
committed and has its own protection; we keep those as runs of pages with
one state and one protection, split when part of a run changes and merged
again when neighbours become equal.

    0x10000         0x20000                  0x30000          0x400000
    | VAD: MEM_PRIVATE, base 0x10000        |   free   ...   | VAD: MEM_IMAGE
    | run: commit RW | run: reserve         |                | R | RX | RW |

The set is pure data: no page tables, no frames, no NTSTATUS. The memory
manager (emu.nt.mm.virtual) decides what a request means and keeps the page
tables in step; this module only records the result.
"""

from __future__ import annotations

import bisect
import enum
import operator
import struct
from dataclasses import dataclass, field

PAGE_SIZE = 0x1000
ALLOCATION_GRANULARITY = 0x10000       # reservations start on 64 KiB boundaries (Windows)
MM_LOWEST_USER_ADDRESS = 0x0001_0000   # nothing can be allocated below this


class MemState(enum.IntEnum):
    """MEMORY_BASIC_INFORMATION.State (winnt.h)."""

    MEM_COMMIT = 0x1000       # backed by commit charge: readable as zeros until written
    MEM_RESERVE = 0x2000      # address space taken, no storage: every access faults
    MEM_FREE = 0x10000        # in no allocation


class MemType(enum.IntEnum):
    """MEMORY_BASIC_INFORMATION.Type (winnt.h)."""

    MEM_PRIVATE = 0x20000     # NtAllocateVirtualMemory, stacks
    MEM_MAPPED = 0x40000      # a view of a data section (not used yet)
    MEM_IMAGE = 0x1000000     # a view of an executable image


class PageProtect(enum.IntFlag):
    """Page protections (winnt.h PAGE_*): one base value, optionally with modifiers."""

    PAGE_NOACCESS = 0x01
    PAGE_READONLY = 0x02
    PAGE_READWRITE = 0x04
    PAGE_WRITECOPY = 0x08             # image views only: reported, never requested
    PAGE_EXECUTE = 0x10
    PAGE_EXECUTE_READ = 0x20
    PAGE_EXECUTE_READWRITE = 0x40
    PAGE_EXECUTE_WRITECOPY = 0x80     # the AllocationProtect of an image view
    PAGE_GUARD = 0x100                # one-shot: the first touch raises a guard page violation
    PAGE_NOCACHE = 0x200
    PAGE_WRITECOMBINE = 0x400


BASE_PROTECTIONS = frozenset(p for p in PageProtect if p <= PageProtect.PAGE_EXECUTE_WRITECOPY)
MODIFIERS = PageProtect.PAGE_GUARD | PageProtect.PAGE_NOCACHE | PageProtect.PAGE_WRITECOMBINE


def page_down(va: int) -> int:
    """The start of the page holding ``va``."""
    return va & ~(PAGE_SIZE - 1)


def page_up(va: int) -> int:
    """``va`` rounded up to a page boundary."""
    return (va + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


def granule_down(va: int) -> int:
    """``va`` rounded down to the 64 KiB allocation granularity."""
    return va & ~(ALLOCATION_GRANULARITY - 1)


def granule_up(va: int) -> int:
    """``va`` rounded up to the 64 KiB allocation granularity."""
    return (va + ALLOCATION_GRANULARITY - 1) & ~(ALLOCATION_GRANULARITY - 1)


@dataclass(frozen=True)
class Run:
    """Pages [start, end) of one VAD with one state and one protection (0 when reserved)."""

    start: int
    end: int
    state: MemState
    protect: int = 0

    @property
    def pages(self) -> int:
        return (self.end - self.start) // PAGE_SIZE

    def clip(self, start: int, end: int) -> Run:
        """The part of this run inside [start, end)."""
        return Run(max(self.start, start), min(self.end, end), self.state, self.protect)

    def same_kind(self, other: Run) -> bool:
        return self.state == other.state and self.protect == other.protect


@dataclass(frozen=True)
class RegionInfo:
    """MEMORY_BASIC_INFORMATION (winnt.h): pages from ``base`` on that share every attribute."""

    base: int
    allocation_base: int
    allocation_protect: int
    size: int
    state: MemState
    protect: int
    type: int                         # a MemType, or 0 for free memory

    #  0 BaseAddress  8 AllocationBase  16 AllocationProtect u32  20 PartitionId u16  22 pad
    # 24 RegionSize  32 State u32  36 Protect u32  40 Type u32  44 pad: 48 bytes in all
    LAYOUT = struct.Struct("<QQIH2xQIII4x")

    # MEMORY_BASIC_INFORMATION32, what a 32-bit process gets: seven u32, 28 bytes.
    LAYOUT32 = struct.Struct("<7I")

    def pack(self, bits: int = 64) -> bytes:
        """The x64 MEMORY_BASIC_INFORMATION (48 bytes, PartitionId 0), or for ``bits`` 32
        MEMORY_BASIC_INFORMATION32 (28 bytes)."""
        if bits == 32:
            return self.LAYOUT32.pack(self.base, self.allocation_base, self.allocation_protect,
                                      self.size, self.state, self.protect, self.type)
        return self.LAYOUT.pack(self.base, self.allocation_base, self.allocation_protect, 0,
                                self.size, self.state, self.protect, self.type)


class Vad:
    """One allocation (an MMVAD): [base, end), reserved at once, released at once."""

    def __init__(self, base: int, end: int, allocation_protect: int, type: MemType, *,
                 stack: bool = False) -> None:
        if base % PAGE_SIZE or end % PAGE_SIZE or end <= base:
            raise AssertionError(f"Vad: bad range {base:#x}-{end:#x}")
        self.base = base
        self.end = end
        self.allocation_protect = allocation_protect
        self.type = type
        self.stack = stack            # a thread's stack: its guard page moves down (see virtual)
        self.runs: list[Run] = [Run(base, end, MemState.MEM_RESERVE)]

    def __repr__(self) -> str:
        return f"Vad({self.base:#x}-{self.end:#x}, {self.type.name}, {len(self.runs)} runs)"

    def contains(self, start: int, end: int) -> bool:
        """True if [start, end) lies inside this allocation."""
        return self.base <= start and end <= self.end

    def run_at(self, va: int) -> Run:
        """The run holding the page of ``va`` (which must lie in this VAD)."""
        i = bisect.bisect_right(self.runs, va, key=_START) - 1
        run = self.runs[i]
        if not run.start <= va < run.end:
            raise AssertionError(f"Vad.run_at: {va:#x} is not in {self!r}")
        return run

    def runs_in(self, start: int, end: int) -> list[Run]:
        """The runs overlapping [start, end), clipped to it."""
        return [r.clip(start, end) for r in self.runs if r.start < end and start < r.end]

    def count(self, start: int, end: int, state: MemState) -> int:
        """How many pages of [start, end) are in ``state``."""
        return sum(r.pages for r in self.runs_in(start, end) if r.state == state)

    def set_range(self, start: int, end: int, state: MemState, protect: int = 0) -> None:
        """Give pages [start, end) ``state`` and ``protect``: split runs at the edges, merge."""
        if not self.contains(start, end) or start % PAGE_SIZE or end % PAGE_SIZE or end <= start:
            raise AssertionError(f"Vad.set_range: {start:#x}-{end:#x} is not inside {self!r}")
        kept: list[Run] = []
        for r in self.runs:
            if r.end <= start or r.start >= end:
                kept.append(r)
                continue
            if r.start < start:
                kept.append(Run(r.start, start, r.state, r.protect))
            if r.end > end:
                kept.append(Run(end, r.end, r.state, r.protect))
        kept.append(Run(start, end, state, protect if state == MemState.MEM_COMMIT else 0))
        kept.sort(key=lambda r: r.start)
        self.runs = _merged(kept)

    def region(self, va: int) -> RegionInfo:
        """VirtualQuery inside this VAD: from the page of ``va`` to the end of its run."""
        page = page_down(va)
        run = self.run_at(page)
        return RegionInfo(page, self.base, self.allocation_protect, run.end - page,
                          run.state, run.protect, self.type)


def _merged(runs: list[Run]) -> list[Run]:
    """Adjacent runs of the same kind made into one."""
    out: list[Run] = []
    for r in runs:
        if out and out[-1].end == r.start and out[-1].same_kind(r):
            out[-1] = Run(out[-1].start, r.end, r.state, r.protect)
        else:
            out.append(r)
    return out


@dataclass
class CommitCharge:
    """What a process has charged against the system commit limit, in pages.

    Page tables count too (Windows Internals, "Commit charge and the system commit
    limit"): the spans already paid for are remembered, because a page table, once
    built, stays until the process exits."""

    pages: int = 0                                     # committed pages (image, stack, heap)
    table_spans: set[tuple[int, int]] = field(default_factory=set)   # (level, va >> shift)
    root: int = 1                                      # the PML4

    @property
    def tables(self) -> int:
        return len(self.table_spans) + self.root

    @property
    def total(self) -> int:
        return self.pages + self.tables


# The VA bits above which one table of each level covers: PT 2 MiB, PD 1 GiB, PDPT 512 GiB.
TABLE_SHIFTS = ((1, 21), (2, 30), (3, 39))


def table_spans(start: int, end: int) -> set[tuple[int, int]]:
    """The (level, index) of every page table the pages [start, end) need below the PML4."""
    return {(level, i) for level, shift in TABLE_SHIFTS
            for i in range(start >> shift, ((end - 1) >> shift) + 1)}


_BASE = operator.attrgetter("base")
_START = operator.attrgetter("start")


class VadSet:
    """A process's VADs, ordered by address (Windows keeps an AVL tree; a sorted list
    answers the same questions), plus its commit charge and the frames it keeps aside."""

    def __init__(self, highest: int, lowest: int = MM_LOWEST_USER_ADDRESS) -> None:
        self.lowest = lowest
        self.highest = highest               # MmHighestUserAddress of the process
        self._vads: list[Vad] = []
        self.charge = CommitCharge()
        # Frames of committed pages that are not mapped (made PAGE_NOACCESS or PAGE_GUARD
        # after a touch): Windows keeps them in the invalid PTE, ours are hardware-only.
        self.parked: dict[int, int] = {}

    def __iter__(self):
        return iter(list(self._vads))

    def __len__(self) -> int:
        return len(self._vads)

    def find(self, va: int) -> Vad | None:
        """The VAD holding ``va`` (MiLocateAddress), or None if it is free."""
        i = bisect.bisect_right(self._vads, va, key=_BASE) - 1      # no list per page fault
        if i >= 0 and va < self._vads[i].end:
            return self._vads[i]
        return None

    def overlapping(self, start: int, end: int) -> list[Vad]:
        """The VADs that share a page with [start, end)."""
        return [v for v in self._vads if v.base < end and start < v.end]

    def insert(self, vad: Vad) -> Vad:
        """Add ``vad``, whose range must be free and inside the process's limits."""
        if vad.base < self.lowest or vad.end - 1 > self.highest:
            raise AssertionError(f"VadSet.insert: {vad!r} is outside the user range")
        if self.overlapping(vad.base, vad.end):
            raise AssertionError(f"VadSet.insert: {vad!r} overlaps an allocation")
        bisect.insort(self._vads, vad, key=lambda v: v.base)
        return vad

    def remove(self, vad: Vad) -> None:
        """Forget ``vad`` (its pages become free)."""
        self._vads.remove(vad)

    def clear(self) -> None:
        """Forget every VAD (process exit)."""
        self._vads.clear()

    def gaps(self) -> list[tuple[int, int]]:
        """The free ranges [start, end) between lowest and highest, in address order."""
        out, at = [], self.lowest
        for v in self._vads:
            if v.base > at:
                out.append((at, v.base))
            at = max(at, v.end)
        if at <= self.highest:
            out.append((at, self.highest + 1))
        return out

    def find_free(self, size: int, *, top_down: bool = False) -> int | None:
        """A 64 KiB-aligned base where ``size`` bytes are free (MiFindEmptyAddressRange),
        lowest first unless ``top_down`` (MEM_TOP_DOWN); None if no gap is large enough."""
        gaps = reversed(self.gaps()) if top_down else self.gaps()
        for start, end in gaps:
            if top_down:
                base = granule_down(end - size)
                if base >= granule_up(start) and base + size <= end:
                    return base
            else:
                base = granule_up(start)
                if base + size <= end:
                    return base
        return None

    def query(self, va: int) -> RegionInfo:
        """VirtualQuery: the region holding ``va``, or the free range around it."""
        vad = self.find(va)
        if vad is not None:
            return vad.region(va)
        page = page_down(va)
        following = [v.base for v in self._vads if v.base > page]
        end = min(following) if following else self.highest + 1
        return RegionInfo(page, 0, 0, end - page, MemState.MEM_FREE,
                          PageProtect.PAGE_NOACCESS, 0)

    def committed_pages(self) -> int:
        """Committed pages in every VAD."""
        return sum(v.count(v.base, v.end, MemState.MEM_COMMIT) for v in self._vads)
