"""``walk VA``: the 4-level page walk explained, level by level (Intel SDM Vol. 3A §4.5-§4.7).

The walk itself is emu.hw.mmu.walk (its steps, its Translation or its PageFault); this
module only puts it in words: the index bits of the address, each entry's address, value
and flags, the rights accumulated so far, and where it ends: a physical address, or the
entry and bit that fault for this access at this ring, with the error code it pushes. A
not-present PTE is read as the memory manager reads it (emu.nt.mm.softpte): demand zero,
a pagefile slot, or a frame in transition.
"""

from __future__ import annotations

from emu.debugger.records import RegionRecord, TargetError
from emu.debugger.targetbase import Target
from emu.hw import mmu
from emu.hw.mmu import PTE, PFErr, WalkStep
from emu.nt import layout
from emu.nt.mm import softpte
from emu.nt.mm.softpte import PteState

# What each level's entry points to, and the span of addresses one entry covers.
_NEXT = {4: "PDPT", 3: "PD", 2: "PT", 1: "frame"}
_SPAN = {4: "512 GiB", 3: "1 GiB", 2: "2 MiB", 1: "4 KiB"}
_FLAG_ORDER = (PTE.P, PTE.RW, PTE.US, PTE.PWT, PTE.PCD, PTE.A, PTE.D, PTE.PS, PTE.G, PTE.NX)
# The same bits as plain ints, for the lines written at every step of a steppable page (an
# IntFlag's & costs about 1.5 us: a tour spent 1.5 s of its 10 s there).
_FLAG_BITS = tuple((int(f), f.name) for f in _FLAG_ORDER)
_P, _RW, _US, _PS, _NX = int(PTE.P), int(PTE.RW), int(PTE.US), int(PTE.PS), int(PTE.NX)
# PAT, with PCD and PWT, picks the memory type (SDM Vol. 3A §11.12.3): bit 7 of a PTE (where
# a PDE or PDPTE has PS, Table 4-19: flag_names names it), bit 12 of a PDE or PDPTE that maps
# a page (Tables 4-15 and 4-17), where a 4 KiB frame address would have its lowest bit.
PAT_LARGE = 1 << 12
_ADDRESS = 0x000F_FFFF_FFFF_F000            # bits 51:12 of an entry
_ERROR_BITS = ((PFErr.P, "P", "protection violation", "not present"),
               (PFErr.W, "W/R", "write", "read"),
               (PFErr.U, "U/S", "user mode", "supervisor mode"),
               (PFErr.RSVD, "RSVD", "reserved bit set", "no reserved bit"),
               (PFErr.ID, "I/D", "instruction fetch", "data access"))
_PROTECT_WORDS = {0x01: "PAGE_NOACCESS", 0x02: "PAGE_READONLY", 0x04: "PAGE_READWRITE",
                  0x08: "PAGE_WRITECOPY", 0x10: "PAGE_EXECUTE", 0x20: "PAGE_EXECUTE_READ",
                  0x40: "PAGE_EXECUTE_READWRITE", 0x80: "PAGE_EXECUTE_WRITECOPY"}


def flag_names(value: int, level: int) -> str:
    """The set flag bits of an entry at ``level`` (1 = PTE), in bit order: ``P RW US A D NX``;
    bit 7 of a PTE and bit 12 of a PDE or PDPTE that maps a page are named PAT."""
    named = [(bit, "PAT" if bit == _PS and level == 1 else name)
             for bit, name in _FLAG_BITS if value & bit]
    if level in (2, 3) and value & _PS and value & PAT_LARGE:
        named.append((PAT_LARGE, "PAT"))
    return " ".join(name for _, name in sorted(named))


def frame_of(level: int, value: int) -> int:
    """The physical address an entry points to: the next table, or the page it maps (bits
    51:30 of a 1 GiB PDPTE, 51:21 of a 2 MiB PDE: bit 12 there is PAT, not an address)."""
    if level in (2, 3) and value & _PS:
        return value & _ADDRESS & ~((1 << (12 + 9 * (level - 1))) - 1)
    return value & _ADDRESS


def protect_name(protect: int) -> str:
    """``PAGE_READWRITE``, ``PAGE_READWRITE|PAGE_GUARD`` for a winnt.h protection."""
    base = _PROTECT_WORDS.get(protect & 0xFF, f"{protect & 0xFF:#x}")
    return base + ("|PAGE_GUARD" if protect & 0x100 else "")


def error_code_text(code: int) -> str:
    """``0x5 = P=1 (protection violation) W/R=0 (read) U/S=1 (user mode)`` (SDM Figure 4-12)."""
    parts = [f"{name}={int(bool(code & bit))} ({yes if code & bit else no})"
             for bit, name, yes, no in _ERROR_BITS[:3]]
    parts += [f"{name}=1 ({yes})" for bit, name, yes, _ in _ERROR_BITS[3:] if code & bit]
    return f"{int(code):#x} = " + " ".join(parts)


def index_line(va: int) -> str:
    """The VA split into its table indices and page offset (SDM Figure 4-8)."""
    return (f"  VA {va:#x} = PML4 {va >> 39 & 0x1FF} | PDPT {va >> 30 & 0x1FF} | "
            f"PD {va >> 21 & 0x1FF} | PT {va >> 12 & 0x1FF} | offset {va & 0xFFF:#05x}"
            f"    (bits 47:39 | 38:30 | 29:21 | 20:12 | 11:0)")


def _rights(steps: tuple[WalkStep, ...], nxe: bool) -> str:
    """What the entries so far allow: R, W if every RW=1, U if every US=1, X unless NX."""
    rw = all(s.value & _RW for s in steps)
    us = all(s.value & _US for s in steps)
    nx = nxe and any(s.value & _NX for s in steps)
    return " ".join(("R", "W" if rw else "-", "U" if us else "S", "-" if nx else "X"))


def step_lines(steps: tuple[WalkStep, ...], nxe: bool = True,
               cr3: int | None = None) -> list[str]:
    """One line per entry the walk read: address, value, flags, what it points to, rights;
    with ``cr3``, a second line saying where the entry's address comes from (SDM §4.5.4:
    the table's base, from CR3 or the entry above, plus the 9-bit index times 8)."""
    lines = []
    base, source = (cr3 or 0) & _ADDRESS, "CR3"
    for i, step in enumerate(steps):
        head = f"  {step.name:<5} [{step.entry_address:#x}] = {step.value:#018x}"
        where = (f"        {step.entry_address:#x} = {base:#x} (from {source}) + index "
                 f"{step.index} x 8") if cr3 is not None else None
        frame = frame_of(step.level, step.value)
        if not step.value & _P:
            lines.append(f"{head}  not present (P=0)")
        else:
            large = step.level in (2, 3) and bool(step.value & _PS)
            target = f"{_SPAN[step.level]} page at {frame:#x}" if large else \
                f"{_NEXT[step.level]} at {frame:#x}"
            lines.append(f"{head}  {flag_names(step.value, step.level):<16} -> {target:<22} "
                         f"rights so far: {_rights(steps[:i + 1], nxe)}")
            if large and step.value & PAT_LARGE:
                lines.append(f"        PAT (bit 12 of a {step.name} that maps a page) = 1: "
                             "a memory-type bit, not part of the frame address")
        if where:
            lines.append(where)
        base, source = frame, f"the {step.name}"
    return lines


def ad_line(steps: tuple[WalkStep, ...], access: str) -> str:
    """What this access does to the Accessed and Dirty flags (SDM Vol. 3A §4.8): A is set in
    every entry the walk uses, D in the entry that maps the page, by a write only."""
    leaf = steps[-1]
    clear = [s.name for s in steps if not s.value & PTE.A]
    a_part = ("A is already 1 in every entry this " + access + " uses" if not clear else
              f"this {access} sets A in {', '.join(clear)} (now 0)")
    d = int(bool(leaf.value & PTE.D))
    if access != "write":
        d_part = f"D ({leaf.name}) is {d}: a {access} never changes it"
    elif d:
        d_part = f"D ({leaf.name}) is already 1"
    else:
        d_part = f"this write sets D in the {leaf.name} (now 0)"
    return f"  A/D (SDM 4.8): {a_part}; {d_part}"


def _where(target: Target, pid: int | None, cr3: int) -> tuple[str, int | None]:
    """('process 4 "notepad"', pid) or the system address space; without ``pid``, the
    owner of the ``cr3`` the walk uses."""
    pid = target.owner_of(cr3) if pid is None else pid
    if pid is None:
        return "the system address space", None
    return f'process {pid} "{target.process(pid).name}"', pid


def address_space(target: Target, va: int, pid: int | None) -> tuple[str, str | None]:
    """(``process 12 "hello" (CR3 0xb000)``, None): the tables a walk of ``va`` for ``pid``
    uses; for a kernel address of a process that has ended, the loaded tables and a note
    saying why they stand in for the process's own."""
    cr3 = target.cr3_for(va, pid)
    if pid is not None and not target.process(pid).has_space:
        loaded, _ = _where(target, None, cr3)
        proc = target.process(pid)
        return (f"{loaded} (CR3 {cr3:#x})",
                f"  (not process {pid} \"{proc.name}\"'s own tables: it has ended and its "
                "PML4 is gone; the kernel half is the same in every address space)")
    where, _ = _where(target, pid, cr3)
    return f"{where} (CR3 {cr3:#x})", None


def default_ring(target: Target, pid: int | None) -> int:
    """The ring a walk is explained for by default: the CPL of ``pid``'s registers."""
    try:
        return target.cpl(pid)
    except TargetError:
        return target.cpl()


def walk_text(target: Target, va: int, pid: int | None = None, access: str = "read",
              cpl: int | None = None) -> str:
    """The explained walk of ``va`` for ``access`` at ring ``cpl`` in ``pid``'s tables."""
    ring = default_ring(target, pid) if cpl is None else cpl
    cr3 = target.cr3_for(va, pid)
    _, owner = _where(target, pid, cr3)
    regs = target.registers()
    space, note = address_space(target, va, pid)
    lines = [f"walk {va:#x} in {space}, {access} at ring {ring}", *([note] if note else []),
             index_line(va)]
    try:
        tr = target.walk(va, pid, access, ring, rflags=regs["rflags"])
    except mmu.GeneralProtection:
        lines.append(f"  #GP(0): {va:#x} is not canonical: bits 63..47 must all equal "
                     "bit 47. No walk happens and CR2 is not written.")
        return "\n".join(lines)
    except mmu.PageFault as fault:
        nxe = bool(regs["efer"] & mmu.EFER.NXE)
        lines += step_lines(fault.steps, nxe, cr3)
        lines += fault_lines(target, fault, access, ring, owner)
        lines.append(f"  A/D: the access faults: no A or D bit is set in the "
                     f"{fault.steps[-1].name}")
        return "\n".join(lines)
    nxe = bool(regs["efer"] & mmu.EFER.NXE)
    lines += step_lines(tr.steps, nxe, cr3)
    size = {4096: "4 KiB", 2 << 20: "2 MiB", 1 << 30: "1 GiB"}[tr.page_size]
    lines.append(f"  physical address {tr.pa:#x} ({size} page at "
                 f"{tr.pa & ~(tr.page_size - 1):#x} + offset {va & (tr.page_size - 1):#x})")
    granted = " ".join(("R" if tr.readable else "-", "W" if tr.writable else "-",
                        "X" if tr.executable else "-"))
    lines.append(f"  a ring-{ring} {access} is allowed: this mode may {granted} here")
    lines.append(ad_line(tr.steps, access))
    return "\n".join(lines)


def fault_lines(target: Target | None, fault: mmu.PageFault, access: str, ring: int,
                pid: int | None) -> list[str]:
    """The entry and bit that fault, in words, the error code, and for a not-present
    entry what the memory manager would make of it."""
    step = next((s for s in fault.steps if s.level == fault.level), fault.steps[-1])
    code = fault.error_code
    if code & PFErr.RSVD:
        why = (f"{fault.reason}: the entry is malformed, whatever the access "
               "(RSVD=1 in the error code)")
    elif not code & PFErr.P:
        why = (f"the {step.name} (level {step.level}) is not present (P=0): no translation "
               f"for the {_SPAN[step.level]} of addresses it covers")
    else:
        why = _protection_words(fault.reason, step, access, ring)
    lines = [f"  #PF: {why}", f"  error code {error_code_text(code)}"]
    if not code & (PFErr.P | PFErr.RSVD):
        lines += _not_present_lines(target, fault.address, step, pid)
    return lines


def _protection_words(reason: str, step: WalkStep, access: str, ring: int) -> str:
    """The protection rule that denies, in words (SDM Vol. 3A §4.6)."""
    if reason.startswith("U/S=0"):
        return f"{step.name}.US = 0: a ring-3 access to a supervisor page"
    if reason.startswith("NX=1"):
        return (f"{step.name}.NX = 1: an instruction fetch from a no-execute page "
                "(EFER.NXE = 1)")
    if reason.startswith("R/W=0"):
        wp = "; CR0.WP = 1 makes R/W = 0 bind ring 0 too" if ring < 3 else ""
        return f"{step.name}.RW = 0: a write to a read-only page{wp}"
    if reason.startswith("SMEP"):
        return ("CR4.SMEP = 1: ring 0 may not fetch instructions from a user page "
                "(U/S = 1 at every level)")
    if reason.startswith("SMAP"):
        return ("CR4.SMAP = 1 and RFLAGS.AC = 0: ring 0 may not read or write a user page "
                "(U/S = 1 at every level)")
    return reason


def _not_present_lines(target: Target | None, va: int, step: WalkStep,
                       pid: int | None) -> list[str]:
    """What the not-present entry's software bits and the VADs say about ``va``."""
    lines = []
    if step.level == 1 and step.value:
        decoded = softpte.decode(step.value)
        lines.append(f"  the PTE's software bits: {decoded.describe()}: "
                     f"{_SOFT_MEANING[decoded.state]}")
        return lines
    if va >= layout.KERNEL_SPACE_START:
        lines.append("  a kernel address with no mapping: at ring 0 this is bug check 0x50 "
                     "(PAGE_FAULT_IN_NONPAGED_AREA); ring 3 gets an access violation")
        return lines
    if target is None or pid is None:
        return lines
    lines.append("  " + vad_verdict(target.regions(pid), va))
    return lines


_SOFT_MEANING = {
    PteState.DEMAND_ZERO: "MmAccessFault gives the page a zeroed frame and the access runs "
                          "again",
    PteState.PAGEFILE: "MmAccessFault reads the page back from the pagefile (a hard fault)",
    PteState.TRANSITION: "the frame still holds the page (standby or modified list); "
                         "MmAccessFault puts it back (a soft fault, no I/O)",
    PteState.ZERO: "the VAD decides",
    PteState.VALID: "",
}


def find_region(regions: list[RegionRecord] | None, va: int) -> RegionRecord | None:
    """The VAD run holding ``va``."""
    for r in regions or ():
        if r.base <= va < r.end:
            return r
    return None


def vad_verdict(regions: list[RegionRecord] | None, va: int) -> str:
    """What MmAccessFault decides for a user address with no valid PTE, from the VADs."""
    if regions is None:
        return "the VADs of this process are not recorded"
    r = find_region(regions, va)
    if r is None:
        return "the VADs say: free (in no allocation): an access violation"
    if r.state == "reserve":
        return (f"the VADs say: reserved, not committed ({r.type}, allocated at "
                f"{r.allocation_base:#x}): an access violation")
    prot = protect_name(r.protect)
    if r.protect & 0x100:
        return (f"the VADs say: committed {prot}: the first touch raises "
                "STATUS_GUARD_PAGE_VIOLATION" + (" (a stack: it grows one page)"
                                                 if r.stack else ""))
    if r.protect & 0xFF == 0x01:
        return f"the VADs say: committed {prot}: every access is an access violation"
    return (f"the VADs say: committed {prot} ({r.type}): a demand-zero page; MmAccessFault "
            "gives it a zeroed frame on first touch")
