"""The MMU: the x86-64 4-level page walk, played in Python over guest physical RAM.

Intel SDM Vol. 3A §4.5 (4-level paging), §4.6 (access rights), §4.7 (#PF error
code), §4.8 (accessed and dirty flags).  The caller guarantees IA-32e mode
(CR0.PG=1, CR4.PAE=1, EFER.LMA=1); CR4.LA57 and protection keys are not modelled.
PCIDs tag what the TLB caches, not the walk (emu.hw.cpu, emu.hw.native): the walker
reads CR3's page-table base and ignores CR3[11:0].

A 48-bit linear address is four 9-bit table indices and a 12-bit page offset:

    63     48 47      39 38      30 29      21 20      12 11          0
   +---------+----------+----------+----------+----------+-------------+
   | sign ext| PML4 idx | PDPT idx |  PD idx  |  PT idx  | page offset |
   +---------+----------+----------+----------+----------+-------------+

CR3 holds the PML4's physical address; each entry holds the next table's (bits
12..MAXPHYADDR-1).  PS=1 in a PDPTE maps a 1 GiB page, in a PDE a 2 MiB page:
the walk stops there and the lower index bits join the page offset.

`walk` returns a Translation with every step; `fill` is the lean entry point for
the TLB-fill hook; `translate` gives just the physical address.  Whatever the
tables hold they raise only PageFault or GeneralProtection.

Choices where the SDM leaves room, checked against QEMU's walker (the oracle in
tests/hw/test_mmu_qemu.py):
- MAXPHYADDR is 40, as in Unicorn 2.1.4's QEMU: bit 39 of an entry is an address
  bit, bits 40..51 are reserved.
- Checks in walk order: P, then reserved bits, level by level; access rights only
  once the leaf is reached, so P=0 or a reserved bit lower down wins over a
  U/S or R/W restriction higher up.
- Accessed/dirty (set_accessed_dirty=True): an entry that references another table
  gets A as soon as the walk has passed it, so a fault further down leaves A set
  above (as QEMU does); the leaf gets A, and D on a write, only when the access is
  allowed.  QEMU alone sets A in a 1 GiB leaf PDPTE before checking the access;
  here every leaf size follows the same rule.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Protocol


class PTE(enum.IntFlag):
    """Bits of every paging-structure entry (SDM Vol. 3A Tables 4-14 to 4-20)."""

    P = 1 << 0  # Present: 0 means the entry maps nothing; any use of it is a #PF
    RW = 1 << 1  # Read/Write: 0 forbids writes through this entry (supervisor too if CR0.WP=1)
    US = 1 << 2  # User/Supervisor: 0 forbids every ring-3 access through this entry
    PWT = 1 << 3  # Page-level write-through: memory type (caching), no effect on access rights
    PCD = 1 << 4  # Page-level cache disable: memory type (caching), no effect on access rights
    A = 1 << 5  # Accessed: set by the walker when the entry is used for a translation
    D = 1 << 6  # Dirty: set in the leaf by the walker when the page is written
    PS = 1 << 7  # Page size: in a PDPTE maps 1 GiB, in a PDE 2 MiB (PTE: PAT; PML4E: reserved)
    G = 1 << 8  # Global: the leaf's TLB entry survives a CR3 load (CR4.PGE=1); no effect on rights
    NX = 1 << 63  # Execute-disable: 1 forbids instruction fetches (reserved unless EFER.NXE=1)


class PFErr(enum.IntFlag):
    """The #PF error code pushed by the processor (SDM Vol. 3A §4.7, Figure 4-12)."""

    P = 1 << 0  # 0: the page was not present; 1: a protection violation (or reserved bit)
    W = 1 << 1  # the access was a write
    U = 1 << 2  # the access was made in user mode (CPL 3)
    RSVD = 1 << 3  # a reserved bit was set in some paging-structure entry
    ID = 1 << 4  # the access was an instruction fetch (only if EFER.NXE=1 or CR4.SMEP=1)


class CR0(enum.IntFlag):
    """Control register 0 (SDM Vol. 3A §2.5)."""

    PE = 1 << 0  # Protection enable
    MP = 1 << 1  # Monitor coprocessor
    EM = 1 << 2  # x87 emulation: 1 makes x87/SSE instructions #UD/#NM
    TS = 1 << 3  # Task switched
    ET = 1 << 4  # Extension type
    NE = 1 << 5  # Numeric error
    WP = 1 << 16  # Write protect: 1 makes supervisor writes honour R/W=0
    AM = 1 << 18  # Alignment mask (with RFLAGS.AC, alignment checks at CPL 3)
    PG = 1 << 31  # Paging


class CR4(enum.IntFlag):
    """Control register 4 (SDM Vol. 3A §2.5)."""

    PSE = 1 << 4  # Page size extensions (32-bit paging only; 4-level paging always has PS)
    PAE = 1 << 5  # Physical address extension: required for 4-level paging
    PGE = 1 << 7  # Page global enable
    PCIDE = 1 << 17  # Process-context identifiers: CR3[11:0] tags cached translations
    OSFXSR = 1 << 9  # OS supports FXSAVE/FXRSTOR (enables SSE)
    OSXMMEXCPT = 1 << 10  # OS handles SIMD floating-point exceptions
    SMEP = 1 << 20  # Supervisor-mode execution prevention: ring 0 may not fetch from user pages
    SMAP = 1 << 21  # Supervisor-mode access prevention: ring 0 data access to user pages faults


class EFER(enum.IntFlag):
    """The IA32_EFER MSR, 0xC0000080 (SDM Vol. 3A §2.2.1)."""

    SCE = 1 << 0  # System-call extensions (syscall/sysret)
    LME = 1 << 8  # Long mode enable
    LMA = 1 << 10  # Long mode active
    NXE = 1 << 11  # No-execute enable: makes PTE.NX meaningful (else it is a reserved bit)


class Access(enum.StrEnum):
    """What the access does; plain strings "read", "write", "fetch" are accepted too."""

    READ = "read"
    WRITE = "write"
    FETCH = "fetch"


class Prot(enum.IntFlag):
    """Rights `fill` grants on a page, numerically Unicorn's UC_PROT_* values."""

    READ = 1
    WRITE = 2
    EXEC = 4


RFLAGS_AC = 1 << 18  # Alignment check / access control: with CR4.SMAP, lets ring 0 touch user pages
MAXPHYADDR = 40  # physical-address width; bits MAXPHYADDR..51 of an entry are reserved
PAGE_SIZE = 4096
EFER_MSR = 0xC0000080  # the MSR number of IA32_EFER

LEVEL_NAMES = {4: "PML4E", 3: "PDPTE", 2: "PDE", 1: "PTE"}

# Hot-path copies of the flags as plain ints (arithmetic on IntFlag members is slow).
_P, _RW, _US, _A, _D, _PS, _NX = map(int, (PTE.P, PTE.RW, PTE.US, PTE.A, PTE.D, PTE.PS, PTE.NX))
_READ, _WRITE, _EXEC = map(int, (Prot.READ, Prot.WRITE, Prot.EXEC))
_WP, _SMEP, _SMAP, _NXE = map(int, (CR0.WP, CR4.SMEP, CR4.SMAP, EFER.NXE))
_G, _PGE = int(PTE.G), int(CR4.PGE)
# In fill_packed's answer: the translation is global (the leaf's G with CR4.PGE), so a TLB
# keeps it for every PCID (SDM Vol. 3A 4.10.2.4); native.Fill.GLOBAL, the same bit.
FILL_GLOBAL = 0x10
_ADDR = ((1 << MAXPHYADDR) - 1) & ~(PAGE_SIZE - 1)  # bits 12..MAXPHYADDR-1: a frame address
_RSVD_HIGH = ((1 << 52) - 1) & ~((1 << MAXPHYADDR) - 1)  # bits MAXPHYADDR..51
_RSVD_1G = ((1 << 30) - 1) & ~((1 << 13) - 1)  # bits 13..29 of a 1 GiB leaf PDPTE
_RSVD_2M = ((1 << 21) - 1) & ~((1 << 13) - 1)  # bits 13..20 of a 2 MiB leaf PDE
_CANONICAL_TOPS = (0, (1 << 17) - 1)  # va >> 47 of a canonical address
_RIGHTS_BITS = _RW | _US | _D | _NX | int(PTE.G)  # the bits of a leaf that decide a fill
_PF_P, _PF_W, _PF_U, _PF_RSVD, _PF_ID = map(int, (PFErr.P, PFErr.W, PFErr.U, PFErr.RSVD, PFErr.ID))
_PFERR = tuple(PFErr(code) for code in range(32))  # every error code, made once

# One row per level, top down: (level, index shift, bits reserved always, bits reserved
# when PS=1, or 0 if PS does not end the walk here).
_LEVELS = (
    (4, 39, _PS, 0),
    (3, 30, 0, _RSVD_1G),
    (2, 21, 0, _RSVD_2M),
    (1, 12, 0, 0),
)

# Access -> the Prot bit it needs, which also names the access below.  Keys are str, so
# Access members find them too.
_NEEDS = {"read": _READ, "write": _WRITE, "fetch": _EXEC}


class Memory(Protocol):
    """Guest physical RAM as the walker sees it (beyond RAM: reads 0xFF, writes ignored)."""

    def read(self, pa: int, n: int) -> bytes: ...

    def write(self, pa: int, data: bytes) -> None: ...


@dataclass(frozen=True, slots=True)
class WalkStep:
    """One paging-structure entry the walk read (SDM Vol. 3A §4.5, Figure 4-8)."""

    level: int  # 4 = PML4, 3 = PDPT, 2 = PD, 1 = PT
    name: str  # "PML4E", "PDPTE", "PDE", "PTE"
    entry_address: int  # physical address of the 8-byte entry
    value: int  # the entry as read, before any A/D update
    index: int  # the 9 bits of the linear address that chose this entry

    @property
    def flags(self) -> PTE:
        """The entry's named flag bits."""
        return PTE(self.value & _FLAG_MASK)

    @property
    def frame(self) -> int:
        """The physical address the entry points to (next table or page frame)."""
        return self.value & _ADDR

    def __str__(self) -> str:
        names = "|".join(f.name for f in PTE if f & self.value) or "0"
        return (
            f"{self.name}[{self.index}] @ {self.entry_address:#x} = {self.value:#018x}"
            f" -> {self.frame:#x} {names}"
        )


_FLAG_MASK = sum(PTE)  # every named bit


@dataclass(frozen=True, slots=True)
class Translation:
    """A successful walk: where `va` lives and what the walk's mode may do there."""

    va: int
    pa: int
    page_size: int  # 4096, 2 MiB or 1 GiB
    writable: bool  # this mode may write the page (the leaf's D bit aside)
    user: bool  # U/S=1 at every level: a user-mode address
    executable: bool  # this mode may fetch instructions from the page
    dirty: bool  # the leaf's D bit after this walk
    steps: tuple[WalkStep, ...]
    readable: bool = True  # this mode may read the page (False only under SMAP)


class PageFault(Exception):
    """#PF (vector 14): CR2 = address, error_code as pushed (SDM Vol. 3A §4.7).

    ``reason``, ``steps`` and ``level`` explain the fault; a fault the walker raises works
    them out from what the walk read only when first asked (a fault the memory manager
    resolves is never explained), so they are the same whenever they are read."""

    def __init__(
        self,
        address: int,
        error_code: PFErr,
        reason: str,
        steps: tuple[WalkStep, ...] = (),
        level: int = 0,
    ) -> None:
        super().__init__()
        self.address = address
        self.error_code = error_code
        # (reason, the entries walked up to and including level `level`, the level the
        # reason names: 0 for none), or None until `_explain` has worked them out.
        self._details: tuple[str, tuple[WalkStep, ...], int] | None = (reason, steps, level)
        self._explain: tuple | None = None

    @classmethod
    def _explained_later(cls, address: int, error_code: PFErr, explain: tuple) -> PageFault:
        """A fault whose details ``explain`` = (function, *arguments) gives when asked."""
        fault = cls.__new__(cls)
        fault.address, fault.error_code = address, error_code
        fault._details, fault._explain = None, explain
        return fault

    def _detail(self) -> tuple[str, tuple[WalkStep, ...], int]:
        details = self._details
        if details is None:
            function, *arguments = self._explain
            details = self._details = function(*arguments)
            self._explain = None
        return details

    @property
    def reason(self) -> str:
        """Why the access faults, in the SDM's words (which bit of which entry)."""
        return self._detail()[0]

    @property
    def steps(self) -> tuple[WalkStep, ...]:
        """The entries walked, as they were read, up to and including level ``level``."""
        return self._detail()[1]

    @property
    def level(self) -> int:
        """The level the reason names (0: none)."""
        return self._detail()[2]

    def __str__(self) -> str:
        return f"#PF at {self.address:#x}: {self.reason} (error code {int(self.error_code):#x})"

    def __reduce__(self) -> tuple:
        """Pickled explained (a debugger's snapshot sends faults between processes)."""
        return PageFault, (self.address, self.error_code, self.reason, self.steps, self.level)


class GeneralProtection(Exception):
    """#GP(0) for a non-canonical linear address (SDM Vol. 3A §3.3.7.1); CR2 is untouched."""

    def __init__(self, address: int, error_code: int = 0) -> None:
        self.address = address
        self.error_code = error_code
        super().__init__(f"#GP({error_code}): non-canonical address {address:#x}")


def is_canonical(va: int) -> bool:
    """True if bits 63..47 of the 64-bit `va` are all equal (SDM Vol. 1 §3.3.7.1)."""
    return va >> 47 in _CANONICAL_TOPS


def _descend(mem: Memory, va: int, cr3: int, efer: int, set_accessed: bool, seen: list):
    """Walk CR3 -> leaf, appending (entry address, value) to `seen`; set A in non-leaf entries.

    Returns (leaf value, level, page size, AND of all entries, OR of all entries), or, if
    the walk fails, an int: 0 for P=0, else the reserved bits found; that entry is last in
    `seen`.
    SDM Vol. 3A §4.5.4 (the walk) and §4.8 (A in the entries that reference others).
    """
    rsvd_base = _RSVD_HIGH if efer & _NXE else _RSVD_HIGH | _NX
    table = cr3 & _ADDR
    rights = _RW | _US  # AND over levels: R/W and U/S survive only if set everywhere
    nx = 0  # OR over levels: NX anywhere forbids fetches
    note = seen.append
    read_u64 = getattr(mem, "read_u64", None)     # RAM's fast path; any mem with read() works
    if read_u64 is None:
        read = mem.read
        def read_u64(pa: int) -> int:
            return int.from_bytes(read(pa, 8), "little")
    for level, shift, rsvd_always, rsvd_large in _LEVELS:
        ea = table | ((va >> shift) & 0x1FF) << 3
        entry = read_u64(ea)
        note((ea, entry))
        if not entry & _P:
            return 0
        bad = entry & (rsvd_base | rsvd_always)
        leaf = level == 1
        if rsvd_large and entry & _PS:
            bad |= entry & rsvd_large
            leaf = True
        if bad:
            return bad
        rights &= entry
        nx |= entry
        if leaf:
            return entry, level, 1 << shift, rights, nx
        if set_accessed and not entry & _A:
            mem.write(ea, ((entry | _A) & 0xFF).to_bytes(1, "little"))
        table = entry & _ADDR
    raise AssertionError("_descend: fell off the last level")  # pragma: no cover


def _rights(rights: int, nx: int, cpl: int, cr0: int, cr4: int, rflags: int) -> int:
    """The Prot bits this mode has on a page with combined `rights`/`nx` (SDM Vol. 3A §4.6.1)."""
    user_page = rights & _US
    if cpl == 3:
        if not user_page:
            return 0
        return _READ | (_WRITE if rights & _RW else 0) | (0 if nx & _NX else _EXEC)
    prot = 0
    if not (user_page and cr4 & _SMAP and not rflags & RFLAGS_AC):
        prot = _READ | (_WRITE if rights & _RW or not cr0 & _WP else 0)
    if not (nx & _NX or (user_page and cr4 & _SMEP)):
        prot |= _EXEC
    return prot


def _translate(mem, va, access, cr3, cpl, cr0, cr4, efer, rflags, set_ad, seen):
    """Core of walk/fill: returns (leaf frame, page size, prot, leaf value after A/D, rights).

    Raises GeneralProtection/PageFault.  SDM Vol. 3A §4.5-§4.8.
    """
    if va >> 47 not in _CANONICAL_TOPS:
        raise GeneralProtection(va)
    need = _NEEDS.get(access)
    if need is None:
        raise ValueError(f"access must be 'read', 'write' or 'fetch', not {access!r}")
    found = _descend(mem, va, cr3, efer, set_ad, seen)
    if found.__class__ is int:
        raise _walk_fault(va, need, cpl, cr4, efer, seen, found)
    leaf, level, size, rights, nx = found
    prot = _rights(rights, nx, cpl, cr0, cr4, rflags)
    if not prot & need:
        raise _protection_fault(va, need, cpl, cr4, efer, rflags, seen, rights)
    if set_ad:
        new = leaf | _A | (_D if need == _WRITE else 0)
        if new != leaf:
            mem.write(seen[-1][0], (new & 0xFF).to_bytes(1, "little"))
            leaf = new
    return leaf & _ADDR & ~(size - 1), size, prot, leaf, rights


def walk(
    mem: Memory,
    va: int,
    access: Access | str,
    *,
    cr3: int,
    cpl: int,
    cr0: int,
    cr4: int,
    efer: int,
    rflags: int = 0,
    set_accessed_dirty: bool = False,
) -> Translation:
    """Translate `va` for `access` in this mode, SDM Vol. 3A §4.5-§4.8; raise #PF or #GP.

    With set_accessed_dirty, sets A in every entry used and D in the leaf on a write
    (§4.8); a faulting walk leaves A set in the non-leaf entries it passed, not in the
    leaf.  Without it, never writes memory.
    """
    seen: list = []
    frame, size, prot, leaf, rights = _translate(
        mem, va, access, cr3, cpl, cr0, cr4, efer, rflags, set_accessed_dirty, seen
    )
    return Translation(
        va=va,
        pa=frame | (va & (size - 1)),
        page_size=size,
        writable=bool(prot & _WRITE),
        user=bool(rights & _US),
        executable=bool(prot & _EXEC),
        dirty=bool(leaf & _D),
        steps=_steps(va, seen),
        readable=bool(prot & _READ),
    )


def translate(
    mem: Memory,
    va: int,
    access: Access | str,
    *,
    cr3: int,
    cpl: int,
    cr0: int,
    cr4: int,
    efer: int,
    rflags: int = 0,
    set_accessed_dirty: bool = False,
) -> int:
    """The physical address of `va` for `access`: walk(...).pa (SDM Vol. 3A §4.5)."""
    seen: list = []
    frame, size, _, _, _ = _translate(
        mem, va, access, cr3, cpl, cr0, cr4, efer, rflags, set_accessed_dirty, seen
    )
    return frame | (va & (size - 1))


def fill(
    mem: Memory,
    va: int,
    access: Access | str,
    cr3: int,
    cpl: int,
    cr0: int,
    cr4: int,
    efer: int,
    rflags: int = 0,
    seen: list | None = None,
) -> tuple[int, int]:
    """TLB fill: (physical 4 KiB page of `va`, Prot bits), setting A/D (SDM Vol. 3A §4.8).

    Prot grants what this mode may do on the page now; WRITE only once the leaf's D bit
    is set, so the first write comes back here to set it (as QEMU's walker does); with
    FILL_GLOBAL too if the translation is global (G in the leaf, CR4.PGE).
    `seen`, if given, receives the (entry address, value) of each level walked.
    """
    packed = fill_packed(mem, va, access, cr3, cpl, cr0, cr4, efer, rflags,
                         [] if seen is None else seen)
    return packed & ~(PAGE_SIZE - 1), packed & (PAGE_SIZE - 1)


def fill_packed(mem: Memory, va: int, access: Access | str, cr3: int, cpl: int, cr0: int,
                cr4: int, efer: int, rflags: int, seen: list) -> int:
    """`fill` as the TLB-fill hook wants it: physical page | Prot bits in one int (no tuple
    per miss), `seen` receiving the entries walked. Raises PageFault/GeneralProtection."""
    if va >> 47 not in _CANONICAL_TOPS:
        raise GeneralProtection(va)
    need = _NEEDS.get(access)
    if need is None:
        raise ValueError(f"access must be 'read', 'write' or 'fetch', not {access!r}")
    found = _descend(mem, va, cr3, efer, True, seen)
    if found.__class__ is int:
        raise _walk_fault(va, need, cpl, cr4, efer, seen, found)
    leaf, _, size, rights, nx = found
    prot = _rights(rights, nx, cpl, cr0, cr4, rflags)
    if not prot & need:
        raise _protection_fault(va, need, cpl, cr4, efer, rflags, seen, rights)
    # A, and D on a write, in the leaf (SDM Vol. 3A §4.8), as _translate sets them.
    new = leaf | _A | (_D if need == _WRITE else 0)
    if new != leaf:
        mem.write(seen[-1][0], (new & 0xFF).to_bytes(1, "little"))
    if not new & _D:
        prot &= ~_WRITE
    if new & _G and cr4 & _PGE:
        prot |= FILL_GLOBAL              # G is the leaf's alone (SDM Vol. 3A 4.10.2.4)
    return (new & _ADDR & ~(size - 1)) | (va & (size - 1) & ~(PAGE_SIZE - 1)) | prot


def speculative_fills(
    mem: Memory,
    seen: list,
    va: int,
    *,
    cpl: int,
    cr0: int,
    cr4: int,
    efer: int,
    rflags: int = 0,
) -> list[tuple[int, int]]:
    """Translations a TLB may cache before they are asked for: [(vpage, pa | Prot), ...].

    SDM Vol. 3A §4.10.2.3: a processor may cache translations for accesses that never
    happen (prefetches, speculation), but never one whose entries have A = 0 unless it sets
    A. These are the other present 4 KiB PTEs of the page table of the 4-level walk `seen`
    (as `fill` records it) whose A is already 1, with the rights of this mode; WRITE only
    where D is already 1; FILL_GLOBAL where G is set and CR4.PGE. Nothing is written, so
    the Accessed bits stay exact.
    """
    if len(seen) != 4:
        return []                          # a large page: no page table below
    rsvd = _RSVD_HIGH if efer & _NXE else _RSVD_HIGH | _NX
    upper_and = seen[0][1] & seen[1][1] & seen[2][1]
    upper_or = seen[0][1] | seen[1][1] | seen[2][1]
    pt = seen[3][0] & ~(PAGE_SIZE - 1)
    base = va & ~((1 << 21) - 1)
    entries = struct.unpack("<512Q", mem.read(pt, PAGE_SIZE))
    out = []
    keep = out.append
    ready = _P | _A
    granted: dict[int, int] = {}         # the entry's rights bits -> Prot: a few per table
    for i, entry in enumerate(entries):
        if entry & ready != ready or entry & rsvd:
            continue
        bits = entry & _RIGHTS_BITS
        prot = granted.get(bits)
        if prot is None:
            prot = _rights(upper_and & entry, upper_or | entry, cpl, cr0, cr4, rflags)
            if not entry & _D:
                prot &= ~_WRITE
            if prot and entry & _G and cr4 & _PGE:
                prot |= FILL_GLOBAL
            granted[bits] = prot
        if prot:
            keep((base | i << 12, entry & _ADDR | prot))
    return out


def _steps(va: int, seen: list) -> tuple[WalkStep, ...]:
    """The WalkSteps for the (entry address, value) pairs a walk of `va` read."""
    return tuple(
        WalkStep(level, LEVEL_NAMES[level], ea, value, (va >> shift) & 0x1FF)
        for (ea, value), (level, shift, _, _) in zip(seen, _LEVELS, strict=False)
    )


def _error_code(need: int, cpl: int, cr4: int, efer: int, present: bool, rsvd: bool) -> PFErr:
    """The #PF error code for an access needing Prot bit `need` (SDM Vol. 3A §4.7)."""
    code = (_PF_P if present else 0) | (_PF_RSVD if rsvd else 0)
    if need == _WRITE:
        code |= _PF_W
    if cpl == 3:
        code |= _PF_U
    if need == _EXEC and (efer & _NXE or cr4 & _SMEP):
        code |= _PF_ID
    return _PFERR[code]


def _walk_fault(va, need, cpl, cr4, efer, seen, bad: int) -> PageFault:
    """The #PF for a walk that stopped at a not-present entry (bad=0) or on reserved bits;
    its reason and steps are worked out when first read."""
    code = _error_code(need, cpl, cr4, efer, present=bool(bad), rsvd=bool(bad))
    return PageFault._explained_later(va, code, (_walk_fault_details, va, tuple(seen), bad))


def _walk_fault_details(va: int, seen: tuple, bad: int) -> tuple[str, tuple[WalkStep, ...], int]:
    """(reason, steps, level) of `_walk_fault`'s fault."""
    steps = _steps(va, seen)
    last = steps[-1]
    if not bad:
        reason = f"not present: P=0 in {last.name}"
    else:
        reason = f"reserved bit {bad.bit_length() - 1} set in {last.name}"
    return reason, steps, last.level


def _first(steps: tuple[WalkStep, ...], bit: int, value: int) -> WalkStep:
    """The first step whose `bit` equals `value` (the leaf if none does)."""
    for step in steps:
        if bool(step.value & bit) == bool(value):
            return step
    return steps[-1]


def _protection_fault(va, need, cpl, cr4, efer, rflags, seen, rights) -> PageFault:
    """The #PF for a present translation the mode may not use this way (SDM Vol. 3A §4.6);
    its reason and steps are worked out when first read."""
    code = _error_code(need, cpl, cr4, efer, present=True, rsvd=False)
    return PageFault._explained_later(
        va, code, (_protection_details, va, need, cpl, cr4, rflags, tuple(seen), rights))


def _protection_details(va, need, cpl, cr4, rflags, seen, rights):
    """(reason, steps, level) of `_protection_fault`'s fault."""
    steps = _steps(va, seen)
    leaf = steps[-1]
    user_page = rights & _US
    if cpl == 3 and not user_page:
        step = _first(steps, _US, 0)
        reason = f"U/S=0 in {step.name}: supervisor page"
    elif need == _EXEC and any(s.value & _NX for s in steps):
        step = _first(steps, _NX, 1)
        reason = f"NX=1 in {step.name}: no-execute page"
    elif need == _EXEC:
        step = leaf
        reason = "SMEP: supervisor fetch from a user page"
    elif user_page and cr4 & CR4.SMAP and not rflags & RFLAGS_AC:
        step = leaf
        reason = "SMAP: supervisor access to a user page with RFLAGS.AC=0"
    else:
        step = _first(steps, _RW, 0)
        wp = ", CR0.WP=1" if cpl != 3 else ""
        reason = f"R/W=0 in {step.name}: read-only page{wp}"
    return reason, steps, step.level
