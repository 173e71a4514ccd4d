"""The memory manager's views: ``vtop``, ``ptov`` (who maps a frame), ``vmmap`` (an address
space as regions), ``pfn`` (a frame's record) and ``tlb`` (what is cached)."""

from __future__ import annotations

import bisect
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from emu.debugger.records import ImageInfo, ProcessInfo, RegionRecord, TargetError
from emu.debugger.symbols import NTDLL
from emu.debugger.targetbase import Target
from emu.debugger.walkview import flag_names, frame_of, protect_name
from emu.hw import mmu
from emu.hw.mmu import PTE
from emu.nt import layout
from emu.nt.mm import softpte

_ADDR = 0x000F_FFFF_FFFF_F000
_SIGN = 0xFFFF_0000_0000_0000
KERNEL_SLOTS = range(layout.KERNEL_PML4_FIRST, 512)
USER_SLOTS = range(layout.KERNEL_PML4_FIRST)
MAX_TLB_LINES = 100


def size_text(n: int) -> str:
    """``4 KiB``, ``1 MiB``, ``1.5 MiB``: a size for people."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            value = n / (1 << shift)
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{n} B"


def entries(target: Target, cr3: int, slots: range) -> Iterator[tuple[int, int, int, int]]:
    """(level, va, entry address, entry) of every non-zero entry under the PML4 at ``cr3``
    in ``slots``, tables before what they map, by address; ``va`` is the first address
    the entry covers. Tables beyond RAM are not followed."""
    mem, ram = target.memory(), target.ram_size

    def scan(table: int, level: int, base: int, indices: range):
        values = struct.unpack("<512Q", mem.read(table, 4096))
        shift = 12 + 9 * (level - 1)
        for i in indices:
            entry = values[i]
            if not entry:
                continue
            va = base | i << shift
            if level == 4 and i >= 256:
                va |= _SIGN
            yield level, va, table + 8 * i, entry
            if entry & PTE.P and level > 1 and not (level < 4 and entry & PTE.PS) and \
                    entry & _ADDR < ram:
                yield from scan(entry & _ADDR, level - 1, va, range(512))

    yield from scan(cr3 & _ADDR, 4, 0, slots)


def leaves(target: Target, cr3: int, slots: range) -> Iterator[tuple[int, int, int, int]]:
    """(va, entry address, entry, page size) of every leaf entry that maps a page, and of
    every non-zero not-present PTE, by address."""
    for level, va, entry_pa, entry in entries(target, cr3, slots):
        present = entry & PTE.P
        if level == 1 or (present and level in (2, 3) and entry & PTE.PS):
            yield va, entry_pa, entry, 1 << (12 + 9 * (level - 1))


def _who(target: Target, pid: int | None) -> str:
    if pid is None:
        return "the system"
    return f'process {pid} "{target.process(pid).name}"'


def vtop_text(target: Target, va: int, pid: int | None) -> str:
    """``0x401000 -> physical 0x3e000 (frame 0x3e), in process 12 "hello"``."""
    pa = target.translate(va, pid)
    pid = target.owner_of(target.cr3_of(None)) if pid is None else pid
    return f"{va:#x} -> physical {pa:#x} (frame {pa >> 12:#x}), in {_who(target, pid)}"


def ptov_text(target: Target, pa: int) -> str:
    """Every process and virtual address whose page tables map the frame of ``pa`` (and the
    PTEs that hold it in transition)."""
    frame = pa >> 12
    record = target.pfn(frame)
    head = (f"frame {frame:#x} (physical {frame << 12:#x}-{(frame << 12) | 0xFFF:#x}): "
            f"{record.use}")
    if record.owner is not None:
        head += f", owner process {record.owner}"
    lines = [head]
    spaces: list[tuple[str, int, range]] = [
        (_who(target, p.pid), p.cr3, USER_SLOTS) for p in target.processes() if p.has_space]
    spaces.append(("kernel (every process)", target.cr3_of(None), KERNEL_SLOTS))
    for who, cr3, slots in spaces:
        if cr3 >> 12 == frame and slots is USER_SLOTS:
            lines.append(f"  {who:<28} its PML4 (CR3 {cr3:#x})")
        for level, va, entry_pa, entry in entries(target, cr3, slots):
            line = _maps_frame(level, va, entry, frame)
            if line:
                lines.append(f"  {who:<28} {line}  [{entry_pa:#x}] = {entry:#018x}")
    if len(lines) == 1:
        lines.append("  no page table maps this frame" +
                     (" (it is free)" if record.use == "free" else ""))
    return "\n".join(lines)


def _maps_frame(level: int, va: int, entry: int, frame: int) -> str:
    """How ``entry`` (at ``level``, covering from ``va``) refers to ``frame``, or ''."""
    if not entry & PTE.P:
        d = softpte.decode(entry)
        if level == 1 and d.state is softpte.PteState.TRANSITION and d.pfn == frame:
            return f"{va:#018x}  (transition: {d.describe()})"
        return ""
    base = frame_of(level, entry) >> 12
    leaf = level == 1 or (level in (2, 3) and entry & PTE.PS)
    if leaf:
        pages = 1 << (9 * (level - 1))
        if base <= frame < base + pages:
            return f"{va + ((frame - base) << 12):#018x}  {flag_names(entry, level)}"
        return ""
    if base == frame:
        span = 1 << (12 + 9 * (level - 1))
        kind = {4: "PDPT", 3: "PD", 2: "PT"}[level]
        return f"the {kind} for {va:#x}-{va + span - 1:#x}"
    return ""


def pfn_text(target: Target, pa: int) -> str:
    """The PFN database's record of the frame holding ``pa``, with its PTE cross-checked."""
    r = target.pfn(pa >> 12)
    lines = [f"frame {r.pfn:#x} (physical {r.pfn << 12:#x}-{(r.pfn << 12) | 0xFFF:#x})",
             f"  use       {r.use}" + _list_note(r.use)]
    if r.owner is not None:
        try:
            lines.append(f"  owner     {_who(target, r.owner)}")
        except TargetError:
            lines.append(f"  owner     process {r.owner} (gone)")
    elif r.use not in ("free", "reserved"):
        lines.append("  owner     the kernel (shared by every process)")
    if r.va is not None:
        lines.append(f"  va        {r.va:#x}")
    pte = None
    if r.pte_pa is not None:
        pte = int.from_bytes(target.memory().read(r.pte_pa, 8), "little")
        flags = f" ({flag_names(pte, 1)})" if pte & PTE.P else ""
        lines.append(f"  PTE       at physical {r.pte_pa:#x} = {pte:#018x}: "
                     f"{softpte.decode(pte).describe()}{flags}")
    if r.use in ("private", "standby", "modified") or r.slot is not None:
        lines.append("  pagefile  " + (f"slot {r.slot} holds a copy" if r.slot is not None
                                       else "no copy"))
        lines.append("  modified  " + _modified_text(r, pte))
    if r.locks:
        lines.append(f"  locked    {r.locks} time(s) (MmProbeAndLockPages: never trimmed)")
    if r.had_code:
        lines.append("  code      mapped executable once: translated code may be cached")
    return "\n".join(lines)


def _modified_text(r, pte: int | None) -> str:
    """Whether the frame differs from its pagefile copy, derived as the memory manager
    derives it when it trims the page (emu.nt.mm.paging: the PFN's modified flag, or D in
    a valid PTE: the CPU sets D on a write, SDM Vol. 3A §4.8), and what that means."""
    copy = f"the copy in slot {r.slot}" if r.slot is not None else None
    if r.use == "standby":
        return f"no: {copy or 'its pagefile copy'} is current (a standby frame is clean)"
    if r.use == "modified":
        return ("yes: not written yet: the modified page writer stores it in "
                f"{f'slot {r.slot} again' if copy else 'a new slot'} before the frame is reused")
    dirty = pte is not None and bool(pte & PTE.P) and bool(pte & PTE.D)
    if dirty:
        return (f"yes: PTE.D = 1, written since {copy} was made: that copy is stale" if copy
                else "yes: PTE.D = 1 and no copy anywhere: a trim puts it on the modified "
                     "list")
    if r.modified:
        return ("yes: the PFN database marks it modified (PTE.D = 0): "
                + (f"{copy} is stale" if copy else "no copy anywhere"))
    if copy:
        return (f"no: PTE.D = 0 and {copy} is current: a trim puts the frame on the "
                "standby list")
    return ("no: zeroed on first touch and never written (PTE.D = 0): a trim frees the "
            "frame and its PTE becomes demand zero")


def _list_note(use: str) -> str:
    return {"free": " (on the free list)", "standby": " (on the standby list: clean, "
            "reusable, its PTE in transition)", "modified": " (on the modified list: to be "
            "written to the pagefile before reuse)", "reserved": " (frame 0 is never used)"
            }.get(use, "")


# -- vmmap ---------------------------------------------------------------------------------

def _rights_of_protect(protect: int) -> str:
    base = protect & 0xFF
    r = "r" if base in (0x02, 0x04, 0x08, 0x20, 0x40, 0x80) else "-"
    w = "w" if base in (0x04, 0x08, 0x40, 0x80) else "-"
    x = "x" if base in (0x10, 0x20, 0x40, 0x80) else "-"
    return r + w + x


def _region_name(r: RegionRecord, images: list[ImageInfo], pid: int) -> str:
    if r.type == "image":
        if NTDLL.base <= r.base < NTDLL.end:
            return "ntdll (system code: RtlUserThreadExit)"
        own = next((i for i in images if i.kind == "app" and i.pid == pid
                    and i.base <= r.base < i.end), None)
        return own.name if own else "image"
    if r.stack:
        if r.state == "reserve":
            return "stack (room to grow)"
        return "stack guard page" if r.protect & 0x100 else "stack"
    return "private"


def vmmap_user(target: Target, proc: ProcessInfo) -> list[str]:
    """The user half as VAD runs: range, size, state, rights, type, pages present, name."""
    regions = target.regions(proc.pid)
    if regions is None:
        return ["  (the VADs are not recorded in this dump)"]
    present = sorted(va for va, _, entry, _ in leaves(target, proc.cr3, USER_SLOTS)
                     if entry & PTE.P)                 # counted per region by bisection: the
                                                       # work is the pages present, not the size
    images = target.images()
    lines = [f"  {'start':<18} {'end':<18} {'size':>9}  state    rights U/S "
             f"{'protect':<26} type     present  name"]
    for r in regions:
        pages = bisect.bisect_left(present, r.end) - bisect.bisect_left(present, r.base)
        prot = protect_name(r.protect) if r.state == "commit" else "-"
        rights = _rights_of_protect(r.protect) if r.state == "commit" else "---"
        lines.append(f"  {r.base:#018x} {r.end:#018x} {size_text(r.end - r.base):>9}  "
                     f"{r.state:<8} {rights:<6} U   {prot:<26} {r.type:<8} "
                     f"{pages:>7}  {_region_name(r, images, proc.pid)}")
    if not regions:
        lines.append("  (no VADs: the address space is empty)")
    return lines


def kernel_area(va: int, images: list[ImageInfo]) -> str:
    """What part of the kernel half ``va`` is in (emu.nt.layout)."""
    for image in images:
        if image.kind == "driver" and image.base <= va < image.end:
            return f"driver {image.name}"
    size, stack = layout.KERNEL_POOL_SIZE, (layout.KERNEL_STACK_PAGES + 1) * layout.PAGE_SIZE
    areas = ((layout.KERNEL_GDT, 0x1000, "GDT and TSS"),
             (layout.KERNEL_TEXT, 0x1000, "kernel text (the iretq trampoline)"),
             (layout.KERNEL_POOL, size, "NonPagedPool"),
             (layout.KERNEL_POOL_NX, size, "NonPagedPoolNx"),
             (layout.KERNEL_POOL_PAGED, size, "PagedPool"),
             (layout.KERNEL_SYSTEM_PTES, size, "system PTEs (MDL mappings)"))
    for base, length, name in areas:
        if base <= va < base + length:
            return name
    if layout.KERNEL_STACK_BASE <= va < layout.KERNEL_POOL:
        slot = (va - layout.KERNEL_STACK_BASE) // stack
        return f"kernel stack {slot}" + (" (boot)" if slot == 0 else "")
    return "kernel"


@dataclass
class _Run:
    start: int
    end: int
    rights: str
    state: str
    name: str


def vmmap_kernel(target: Target) -> list[str]:
    """The kernel half: pages with the same rights in the same area, merged."""
    regs = target.registers()
    nxe = regs["efer"] & mmu.EFER.NXE
    images = target.images()
    runs: list[_Run] = []
    for va, _, entry, size in leaves(target, regs["cr3"], KERNEL_SLOTS):
        if entry & PTE.P:
            rights = "r" + ("w" if entry & PTE.RW else "-") + \
                ("-" if nxe and entry & PTE.NX else "x")
            state = "valid"
        else:
            rights, state = "---", softpte.decode(entry).state.value
        name = kernel_area(va, images)
        last = runs[-1] if runs else None
        if last and last.end == va and (last.rights, last.state, last.name) == \
                (rights, state, name):
            last.end = va + size
        else:
            runs.append(_Run(va, va + size, rights, state, name))
    lines = [f"  {'start':<18} {'end':<18} {'size':>9}  rights U/S state        name"]
    lines += [f"  {r.start:#018x} {r.end:#018x} {size_text(r.end - r.start):>9}  "
              f"{r.rights:<6} S   {r.state:<12} {r.name}" for r in runs]
    return lines


def vmmap_text(target: Target, pid: int | None, part: str = "all") -> str:
    """``vmmap``: the user half of ``pid`` (from its VADs) and the shared kernel half."""
    pid = target.current_pid() if pid is None else pid
    lines = []
    if part in ("all", "user"):
        if pid is None:
            lines.append("no process: the system address space has no user half")
        else:
            proc = target.process(pid)
            if not proc.has_space:
                raise TargetError(f'process {pid} "{proc.name}" has ended: its address space '
                                  "is gone")
            lines.append(f'user half of process {pid} "{proc.name}" (CR3 {proc.cr3:#x}), '
                         "from its VADs")
            lines += vmmap_user(target, proc)
    if part in ("all", "kernel"):
        lines.append("kernel half (PML4 slots 256-511, the same in every process), "
                     "from the page tables")
        lines += vmmap_kernel(target)
    return "\n".join(lines)


# -- tlb -------------------------------------------------------------------------------------

def _prot_text(rights: int) -> str:
    return "".join(c if rights & bit else "-" for c, bit in (("r", 1), ("w", 2), ("x", 4)))


def tlb_text(target: Target, va: int | None = None, show_all: bool = False) -> str:
    """The STLB's cached translations (all, or those of the page of ``va`` checked against a
    fresh walk)."""
    entries = target.tlb()
    if va is not None:
        entries = [e for e in entries if e.vpage == va & ~0xFFF]
    current = target.pcid()
    lines = [f"second-level TLB (emu/hw/native.c, in front of the page walker): "
             f"{len(entries)} translation(s)" + (f" of page {va & ~0xFFF:#x}" if va else ""),
             "  (QEMU's own TLB is not readable through Unicorn; each of its misses asks "
             "this one first)",
             f"  tagged by PCID (CR3[11:0] when cached; the current PCID is {current}); "
             "\"global\" serves every PCID",
             f"  {'mode':<12} {'pcid':<14} {'virtual page':<18} {'physical page':<14} rights"]
    shown = entries if show_all or va is not None else entries[:MAX_TLB_LINES]
    for e in shown:
        line = (f"  {e.mode:<12} {_pcid_text(target, e):<14} {e.vpage:#018x} "
                f"{e.ppage:<#14x} {_prot_text(e.rights)}")
        if va is not None:
            line += "  " + _tlb_check(target, e)
        lines.append(line)
    if len(shown) < len(entries):
        lines.append(f"  ... {len(entries) - len(shown)} more (tlb all shows every one)")
    return "\n".join(lines)


def _pcid_text(target: Target, e) -> str:
    """``global``, or the PCID with the process whose space holds it now."""
    if e.pcid is None:
        return "global"
    if not e.owned:
        return f"{e.pcid} (free)"
    pid = target.owner_of(target.cr3_of(None) if e.space is None else e.space)
    return f"{e.pcid} ({'system' if pid is None else f'pid {pid}'})"


def _tlb_check(target: Target, e) -> str:
    cpl = 3 if e.mode == "user" else 0
    rflags = mmu.RFLAGS_AC if e.mode == "kernel AC=1" else 0
    if not e.owned:
        return "STALE: no address space holds its PCID (flushed before it is handed out)"
    try:
        # Checked against the tables of the space its PCID names (a global translation:
        # the loaded ones).
        tr = target.walk(e.vpage, None, "read", cpl, rflags=rflags, cr3=e.space)
    except (mmu.PageFault, mmu.GeneralProtection):
        return "STALE: the page tables no longer map it"
    if tr.pa & ~0xFFF != e.ppage:
        return f"STALE: the page tables now say {tr.pa & ~0xFFF:#x}"
    text = "agrees with the page tables"
    if tr.writable and not tr.dirty and not e.rights & mmu.Prot.WRITE:
        # Write is granted only once D is set, or later writes would never set it
        # (docs/platform-facts: QEMU's own walker does the same).
        text += (f"; {_prot_text(e.rights)} though the page tables allow a write: D = 0 in "
                 f"its {tr.steps[-1].name}, so write is granted only by a write fill, which "
                 "sets D (SDM 4.8)")
    return text
