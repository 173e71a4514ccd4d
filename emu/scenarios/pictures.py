"""The address-space picture in the terminal, and the kernel half every process shares.

The user half comes from emu.viz.addrmap (ProcessMap: valid pages and regions read from
the page tables). The kernel half is read here from each process's own PML4: its slots
256-511 point at the very same PDPT frames in every process, which is what "all code
running in kernel mode shares a single virtual address space" means in hardware.

    capture_kernel_half(proc)     -> KernelHalf (the present kernel PML4 slots)
    text_map(maps, focus, halves) -> the compact text picture
    render_kernel_svg(halves)     -> each PML4's kernel slots -> the shared PDPT frames
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from typing import TYPE_CHECKING

from emu.fmt import addr
from emu.hw.mmu import PTE
from emu.nt.layout import KERNEL_PML4_FIRST, PAGE_SIZE
from emu.nt.process import Process
from emu.viz.addrmap import COLOURS, Page, ProcessMap, Region, RegionState

if TYPE_CHECKING:
    from emu.nt.kernel import Executive

_ADDRESS = 0x000F_FFFF_FFFF_F000
MAX_ROWS = 24
_STATE_WORD = {RegionState.PAGEFILE: "pagefile", RegionState.TRANSITION: "transition",
               RegionState.DEMAND_ZERO: "no frame yet", RegionState.RESERVED: "reserved"}


@dataclass(frozen=True)
class KernelHalf:
    """The kernel half as one process's PML4 sees it."""

    pid: int
    name: str
    cr3: int
    slots: tuple[tuple[int, int], ...]    # (PML4 slot, PDPT frame) for each present slot


def capture_kernel_half(proc: Process) -> KernelHalf:
    """Read PML4 slots 256-511 of ``proc`` (while its page tables exist)."""
    mem = proc.space.mm.mem
    slots = []
    for slot in range(KERNEL_PML4_FIRST, 512):
        entry = mem.read_u64(proc.space.cr3 + slot * 8)
        if entry & PTE.P:
            slots.append((slot, (entry & _ADDRESS) // PAGE_SIZE))
    return KernelHalf(proc.pid, proc.name, proc.space.cr3, tuple(slots))


def driver_map(ex: Executive) -> ProcessMap:
    """The pages of every loaded driver image in the shared kernel half, page -> frame, as
    a map emu.viz.addrmap draws like a process's (it is no process's: its heading says
    so), each region named after its driver."""
    pages, regions = [], []
    for driver in ex.drivers:
        if driver.unloaded:
            continue
        for va in sorted(driver.image.pages):
            mapping = ex.mm.system.lookup(va)
            if mapping is None:
                continue
            pte = mapping.pte
            page = Page(va, mapping.pfn, bool(pte & PTE.RW), not pte & PTE.NX,
                        bool(pte & PTE.US), bool(pte & PTE.A), bool(pte & PTE.D))
            pages.append(page)
            last = regions[-1] if regions else None
            if last is not None and last.end == va and last.protection == page.protection \
                    and last.owner == driver.image.name:
                regions[-1] = Region(last.start, va + PAGE_SIZE, last.protection,
                                     RegionState.COMMITTED, (*last.pages, page), False,
                                     last.owner)
            else:
                regions.append(Region(va, va + PAGE_SIZE, page.protection,
                                      RegionState.COMMITTED, (page,), False,
                                      driver.image.name))
    return ProcessMap(0, "driver images", tuple(pages), tuple(regions),
                      heading="driver images (kernel half)")


def driver_lines(ex: Executive) -> list[str]:
    """One line per driver image: its pages and the frames behind them."""
    out = []
    for driver in ex.drivers:
        if driver.unloaded:
            continue
        frames = [m.pfn for m in (ex.mm.system.lookup(va) for va in sorted(driver.image.pages))
                  if m is not None]
        out.append(f"    {driver.image.name:<14} {addr(driver.image.base, ticks=True)} -> "
                   f"frames {', '.join(addr(f) for f in frames)} (the same in every process)")
    return out


def slot_base(slot: int) -> int:
    """The first (canonical) address a kernel PML4 slot maps."""
    return (slot << 39) | 0xFFFF_0000_0000_0000


def pages_in(focus: Sequence[tuple[int, int]]) -> list[int]:
    """The page addresses of the focus ranges, in order (at most MAX_ROWS)."""
    out = []
    for lo, hi in focus:
        out.extend(range(lo & ~(PAGE_SIZE - 1), hi, PAGE_SIZE))
    return sorted(set(out))[:MAX_ROWS]


def _cell(pm: ProcessMap, va: int) -> str:
    for region in pm.regions:
        if region.start <= va < region.end:
            for page in region.pages:
                if page.va == va:
                    return f"frame {addr(page.pfn)}"
            return _STATE_WORD.get(region.state, region.state.value)
    return "-"


def text_map(maps: Sequence[ProcessMap], focus: Sequence[tuple[int, int]],
             halves: Sequence[KernelHalf],
             boundaries: Sequence[tuple[int, str]] = ()) -> str:
    """Rows of virtual pages, a column per process: the frame each page maps to (or what
    backs it instead), a dashed line with its words where each boundary address falls;
    then one line on the kernel half."""
    heads = [f"{pm.name} ({pm.pid})" for pm in maps]
    width = max([14, *(len(h) for h in heads)]) + 2
    lines = []
    rows = pages_in(focus)
    if rows and maps:
        lines.append((f"    {'virtual page':<18}    " + "".join(f"{h:<{width}}" for h in heads))
                     .rstrip())
        lines_at = sorted(boundaries)
        for va in [*rows, 1 << 64]:
            while lines_at and lines_at[0][0] <= va:
                lines.append(f"    {'- ' * 9}   {lines_at.pop(0)[1]}")
            if va < 1 << 64:
                cells = "".join(f"{_cell(pm, va):<{width}}" for pm in maps)
                lines.append(f"    {addr(va, ticks=True):<18} -> {cells}".rstrip())
    lines.extend(kernel_lines(halves))
    return "\n".join(lines) + "\n" if lines else ""


def kernel_lines(halves: Sequence[KernelHalf]) -> list[str]:
    """``kernel half: PML4 slots 256, 496 -> PDPT frames 0x3, 0x9 in every process``."""
    if not halves:
        return []
    shapes = {h.slots for h in halves}
    slots = ", ".join(str(s) for s, _ in halves[0].slots)
    frames = ", ".join(addr(f) for _, f in halves[0].slots)
    if len(shapes) == 1:
        every = {1: "in its PML4", 2: "in both processes' PML4s"}.get(
            len(halves), f"in all {len(halves)} processes' PML4s")
        return [f"    kernel half: PML4 slots {slots} -> PDPT frames {frames} {every}: "
                "one shared kernel space"]
    return [f"    kernel half of {h.name} ({h.pid}): slots "
            f"{', '.join(f'{s}->{addr(f)}' for s, f in h.slots)}" for h in halves]


def render_kernel_svg(halves: Sequence[KernelHalf], colour_of: dict[int, str]) -> str:
    """Each process's PML4 (its CR3) with its kernel slots, an arrow from each slot to the
    PDPT frame it names: every process's arrows meet at the same frames."""
    if not halves:
        return ""
    frames = sorted({f for h in halves for _, f in h.slots})
    box_h = 16
    rows = max(sum(len(h.slots) + 2 for h in halves), len(frames) + 1)
    height = 60 + rows * (box_h + 4) + 20
    width = 760
    frame_y = {f: 50 + i * (box_h + 14) for i, f in enumerate(frames)}
    body, y = [], 50
    for h in halves:
        colour = colour_of.get(h.pid, COLOURS[0])
        body.append(f'<text x="10" y="{y + 12}" fill="{colour}" font-weight="bold">'
                    f"{escape(h.name)} ({h.pid}): PML4 at {addr(h.cr3)}</text>")
        y += box_h + 4
        for slot, frame in h.slots:
            body.append(f'<g class="kslot" data-pid="{h.pid}" data-frame="{frame}">'
                        f'<rect x="20" y="{y}" width="300" height="{box_h}" fill="{colour}" '
                        f'fill-opacity="0.15" stroke="{colour}"/><text x="26" y="{y + 12}">'
                        f"slot {slot}: {escape(addr(slot_base(slot), ticks=True))}</text>"
                        f'<line x1="320" y1="{y + box_h // 2}" x2="520" '
                        f'y2="{frame_y[frame] + box_h // 2}" stroke="{colour}"/></g>')
            y += box_h + 4
        y += box_h
    for f in frames:
        body.append(f'<g class="kframe"><rect x="520" y="{frame_y[f]}" width="220" '
                    f'height="{box_h}" fill="#eeeeee" stroke="#555555"/><text x="526" '
                    f'y="{frame_y[f] + 12}">PDPT frame {addr(f)}</text></g>')
    return "\n".join([
        f'<svg xmlns="http://www.w3.org/2000/svg" class="kernel-half" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" font-family="monospace" '
        f'font-size="11">', "<title>The kernel half: shared by every address space</title>",
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
        '<text x="10" y="24" font-size="13" font-weight="bold">Kernel half (PML4 slots '
        '256-511): every process points at the same PDPT frames</text>',
        *body, "</svg>"])
