"""Software PTEs: what a not-present page-table entry says about its page.

The CPU ignores every bit of an entry whose P bit is 0 (SDM Vol. 3A §4.5, "If
the P flag is 0 ... software can use the other bits"), so the memory manager
keeps its own record there, in Windows x64's layouts (Windows Internals, 7th
ed., ch. 5, "Invalid PTEs"; MMPTE_SOFTWARE and MMPTE_TRANSITION):

    MMPTE_SOFTWARE (in the pagefile, or demand zero)
      63            32 31       12 11  10  9     5 4      1 0
     +----------------+-----------+---+---+-------+--------+---+
     | PageFileHigh   |     0     | 0 | 0 | Prot  | PFLow  | 0 |
     +----------------+-----------+---+---+-------+--------+---+
    PageFileHigh: the slot in paging file PFLow (we have one: 0); slot 0 is
    never used, so PageFileHigh = 0 with a protection means "demand zero".

    MMPTE_TRANSITION (the frame is still in RAM, on the standby or modified list)
      63  52 51            12 11  10  9     5 4     1 0
     +------+----------------+---+---+-------+-------+---+
     |  0   | PageFrameNumber| 1 | 0 | Prot  |   0   | 0 |
     +------+----------------+---+---+-------+-------+---+

Prot is Windows' 5-bit page protection (MM_READONLY 1 ... MM_EXECUTE_READWRITE
6, MM_GUARD_PAGE 0x10). A zero entry has no record at all: the VAD decides.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from emu.hw.mmu import PTE

_P, _RW, _NX = int(PTE.P), int(PTE.RW), int(PTE.NX)
TRANSITION = 1 << 11
PROTOTYPE = 1 << 10
_PROT_SHIFT, _PROT_MASK = 5, 0x1F
PROTECTION_SHIFT, PROTECTION_MASK = _PROT_SHIFT, _PROT_MASK   # where a PTE keeps its MM_* code
_SLOT_SHIFT = 32
_PFN_MASK = 0x000F_FFFF_FFFF_F000

# Windows' MM_* protection codes (the page's rights in five bits).
MM_READONLY, MM_EXECUTE, MM_EXECUTE_READ, MM_READWRITE = 1, 2, 3, 4
MM_EXECUTE_READWRITE = 6
MM_GUARD_PAGE = 0x10
MM_NAMES = {0: "no access", MM_READONLY: "read-only", MM_EXECUTE: "execute",
            MM_EXECUTE_READ: "execute/read", MM_READWRITE: "read/write", 5: "write-copy",
            MM_EXECUTE_READWRITE: "execute/read/write", 7: "execute/write-copy"}


class PteState(enum.Enum):
    """The states a leaf PTE can be in."""

    VALID = "valid"                 # P = 1: the hardware's format
    ZERO = "zero"                   # no record: reserved, free, or committed and untouched
    DEMAND_ZERO = "demand zero"     # a software PTE without a slot: a zeroed frame on touch
    PAGEFILE = "pagefile"           # a software PTE naming a pagefile slot
    TRANSITION = "transition"       # a frame on the standby or modified list


@dataclass(frozen=True)
class Decoded:
    """One PTE taken apart."""

    state: PteState
    protection: int = 0     # MM_* code (software and transition PTEs)
    slot: int = 0           # PAGEFILE: the pagefile slot
    pfn: int = 0            # VALID and TRANSITION: the frame

    def describe(self) -> str:
        """The PTE in words, as !pte would say it."""
        prot = MM_NAMES.get(self.protection & 7, "?") + \
            (", guard" if self.protection & MM_GUARD_PAGE else "")
        if self.state is PteState.VALID:
            return f"valid, frame {self.pfn:#x}"
        if self.state is PteState.TRANSITION:
            return f"transition, frame {self.pfn:#x} ({prot})"
        if self.state is PteState.PAGEFILE:
            return f"in the pagefile, slot {self.slot} ({prot})"
        if self.state is PteState.DEMAND_ZERO:
            return f"demand zero ({prot})"
        return "zero: no record (the VAD decides)"


def protection_of(pte: int) -> int:
    """The MM_* protection a valid leaf PTE gives (from its RW and NX bits)."""
    return _PROTECTION_OF[(pte & _RW) >> 1 | (0 if pte & _NX else 2)]


# protection_of by (writable | executable << 1): read-only, read/write, execute/read,
# execute/read/write (the clock asks it for every page it trims).
_PROTECTION_OF = (MM_READONLY, MM_READWRITE, MM_EXECUTE_READ, MM_EXECUTE_READWRITE)


def mm_protection(protect: int) -> int:
    """The MM_* code of a winnt.h PAGE_* protection (PAGE_GUARD becomes MM_GUARD_PAGE)."""
    base = {0x01: 0, 0x02: MM_READONLY, 0x04: MM_READWRITE, 0x08: 5, 0x10: MM_EXECUTE,
            0x20: MM_EXECUTE_READ, 0x40: MM_EXECUTE_READWRITE, 0x80: 7}.get(protect & 0xFF, 0)
    return base | (MM_GUARD_PAGE if protect & 0x100 else 0)


def with_protection(pte: int, protection: int) -> int:
    """A software or transition PTE with its protection field replaced (others: as is)."""
    if pte & _P or pte == 0:
        return pte
    return pte & ~(_PROT_MASK << _PROT_SHIFT) | (protection & _PROT_MASK) << _PROT_SHIFT


def pagefile_pte(slot: int, protection: int) -> int:
    """An MMPTE_SOFTWARE naming pagefile slot ``slot`` (> 0)."""
    if slot <= 0:
        raise ValueError(f"pagefile_pte: slot {slot} (slot 0 is reserved)")
    return slot << _SLOT_SHIFT | (protection & _PROT_MASK) << _PROT_SHIFT


def demand_zero_pte(protection: int) -> int:
    """An MMPTE_SOFTWARE with no slot: the page is zero until touched."""
    return (protection & _PROT_MASK) << _PROT_SHIFT


def transition_pte(pfn: int, protection: int) -> int:
    """An MMPTE_TRANSITION: the page's frame ``pfn`` still holds it, off every working set."""
    return pfn << 12 | TRANSITION | (protection & _PROT_MASK) << _PROT_SHIFT


def decode(pte: int) -> Decoded:
    """Take a leaf PTE apart (valid or not)."""
    if pte & _P:
        return Decoded(PteState.VALID, protection_of(pte), pfn=(pte & _PFN_MASK) >> 12)
    if pte == 0:
        return Decoded(PteState.ZERO)
    protection = pte >> _PROT_SHIFT & _PROT_MASK
    if pte & TRANSITION and not pte & PROTOTYPE:
        return Decoded(PteState.TRANSITION, protection, pfn=(pte & _PFN_MASK) >> 12)
    slot = pte >> _SLOT_SHIFT
    if slot:
        return Decoded(PteState.PAGEFILE, protection, slot=slot)
    return Decoded(PteState.DEMAND_ZERO, protection)
