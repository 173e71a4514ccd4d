"""The address-space map: which virtual pages of each process map to which physical frames.

The seed's diagram (user-mode-and-kernel-mode.md, "Virtual address spaces"), drawn from the
live machine: two processes use pages at the same virtual address, 0x7F7'93950000, yet map
them to different physical frames, and contiguous virtual pages need not be contiguous in
physical memory. Everything comes from the real page tables in guest RAM
(AddressSpace.user_mappings). A VAD tree, when a process has one, adds only what page tables
cannot show: reserved ranges, and committed pages that have no frame yet.

    capture(proc)        -> ProcessMap: its valid pages (va, pfn, R/W, X, U/S, A, D), regions
    MapRecorder(machine)    captures each process as it exits, and the live ones on finish()
    render_text(maps)       one line per region; frames in VA order, ``a..b`` an inclusive run
    render_svg(maps)        the diagram: pages left and right, frames by PFN in the middle

A region is a run of consecutive virtual pages with one state and one protection. The
protection is named as VirtualQuery names it (winnt.h PAGE_*), from the leaf PTE:

    RW=0 NX=1  PAGE_READONLY        RW=0 NX=0  PAGE_EXECUTE_READ
    RW=1 NX=1  PAGE_READWRITE       RW=1 NX=0  PAGE_EXECUTE_READWRITE

Which pages the picture draws (it would be unreadable with thousands of arrows): with
``focus``, exactly the pages whose address lies in one of its [start, end) ranges, in every
process; without it, every page of a region of at most SMALL_REGION pages, and the first and
last EDGE_PAGES pages of a larger one. A row "... N pages not drawn" stands for the pages left
out; in the frame column "... N frames" marks the frames between two drawn ones that are not
drawn (free, page tables, kernel, or pages not drawn).
"""

from __future__ import annotations

import bisect
import enum
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape  # xml.sax.saxutils would import urllib.request (and ssl)
from itertools import pairwise
from typing import TYPE_CHECKING, NamedTuple

from emu.fmt import addr
from emu.hw.mmu import PTE
from emu.nt.layout import PAGE_SIZE
from emu.nt.mm.address_space import Mapping, Protection
from emu.nt.process import Process, ProcessState

if TYPE_CHECKING:
    from emu.machine import Machine

_PROTECTION = {  # (RW, not NX) -> what VirtualQuery would say
    (False, False): Protection.PAGE_READONLY, (True, False): Protection.PAGE_READWRITE,
    (False, True): Protection.PAGE_EXECUTE_READ, (True, True): Protection.PAGE_EXECUTE_READWRITE,
}


class RegionState(enum.Enum):
    """What backs a region (MEMORY_BASIC_INFORMATION.State, MEM_COMMIT split in two)."""

    COMMITTED = "committed"                    # every page valid, each with its own frame
    DEMAND_ZERO = "committed, no frame yet"    # committed in the VAD, never touched
    TRANSITION = "in transition"               # trimmed; its frame on the standby/modified list
    PAGEFILE = "in the pagefile"               # trimmed and written out; no frame
    RESERVED = "reserved"                      # MEM_RESERVE: address space, no storage


@dataclass(frozen=True)
class Page:
    """One valid 4 KiB user page, decoded from its leaf PTE (SDM Vol. 3A Table 4-20)."""

    va: int
    pfn: int
    writable: bool        # PTE.RW
    executable: bool      # PTE.NX clear (the machine runs with EFER.NXE=1)
    user: bool            # PTE.US
    accessed: bool        # PTE.A: the walker used this entry for a translation
    dirty: bool           # PTE.D: the page has been written

    @functools.cached_property    # a recorder's maps ask the same pages again (from_ptes)
    def protection(self) -> str:
        """The winnt.h name of this page's protection."""
        return _PROTECTION[(self.writable, self.executable)].name


@dataclass(frozen=True)
class Region:
    """Consecutive virtual pages [start, end) with one state and one protection."""

    start: int
    end: int
    protection: str               # a winnt.h name; "" for a reserved region (Protect is 0)
    state: RegionState
    pages: tuple[Page, ...] = ()  # the valid pages in address order (COMMITTED regions only)
    user: bool = True             # False: valid pages a ring-3 access may not use (US=0)
    owner: str = ""               # whose pages they are, when not a process's (a driver)

    @property
    def page_count(self) -> int:
        return (self.end - self.start) // PAGE_SIZE

    @property
    def frames(self) -> tuple[int, ...]:
        """The frame of each page, in address order."""
        return tuple(p.pfn for p in self.pages)


@dataclass(frozen=True)
class ProcessMap:
    """A snapshot of one process's user address space."""

    pid: int
    name: str
    pages: tuple[Page, ...]       # every valid user page, in address order
    regions: tuple[Region, ...]   # in address order
    at_exit: bool = False         # taken as the process exited: its frames were freed next
    moment: int = 0               # order of capture; equal moments were taken together
    heading: str = ""             # a map that is no process's (the drivers' images): its
                                  # column's heading instead of 'process N "name"'

    @property
    def title(self) -> str:
        """``process 12 "notepad"``, or the heading."""
        return self.heading or f'process {self.pid} "{self.name}"'


class VadRun(NamedTuple):
    """A run of a VAD, as far as the map needs it."""

    start: int
    end: int
    state: RegionState
    protection: str


def capture(proc: Process, *, at_exit: bool = False, moment: int = 0) -> ProcessMap:
    """The map of ``proc``'s user half, read from its page tables (and VAD tree, if any);
    raises ValueError once the process has terminated, since its page tables are gone."""
    if proc.state is ProcessState.TERMINATED:
        raise ValueError(f'capture: process {proc.pid} "{proc.name}" has terminated')
    pages = tuple(_page_of(m.va, m.pte) for m in proc.space.user_mappings())
    regions = _committed_regions(pages) + _split_by_pte(
        proc, _vad_only_regions(pages, vad_runs(proc)))
    regions.sort(key=lambda r: r.start)
    return ProcessMap(proc.pid, proc.name, pages, tuple(regions), at_exit, moment)


def from_ptes(pid: int, name: str, ptes: dict[int, int], runs: Sequence[VadRun]) -> ProcessMap:
    """The map ``capture`` takes, of a process whose user half's nonzero leaf PTEs (valid or
    not, by virtual page) and VAD runs were read as ``ptes`` and ``runs`` (a recorder that
    read them at an event: emu.stepsrecord): the same pages, regions and states."""
    pages = tuple(_page_of(va, pte) for va, pte in sorted(ptes.items()) if pte & 1)  # P
    regions = _committed_regions(pages) + _split_by_values(
        _vad_only_regions(pages, list(runs)), ptes.get)
    regions.sort(key=lambda r: r.start)
    return ProcessMap(pid, name, pages, tuple(regions))


_FRAME = 0x000F_FFFF_FFFF_F000     # a PTE's bits 12..51: its frame (SDM Vol. 3A Table 4-20)


@functools.lru_cache(maxsize=1 << 16)
def _page_of(va: int, pte: int) -> Page:
    """_page of a valid PTE's value (a recorder's maps repeat the same pages step after step)."""
    return _page(Mapping(va, (pte & _FRAME) >> 12, pte))


# The PTE bits a Page decodes, as plain ints: an IntFlag's & costs about 1.5 us, and a map
# of a large process decodes every page (capture, from_ptes).
_RW, _NX, _US, _A, _D = int(PTE.RW), int(PTE.NX), int(PTE.US), int(PTE.A), int(PTE.D)


def _page(m: Mapping) -> Page:
    pte = m.pte
    return Page(m.va, m.pfn, bool(pte & _RW), not pte & _NX, bool(pte & _US),
                bool(pte & _A), bool(pte & _D))


def _committed_regions(pages: Sequence[Page]) -> list[Region]:
    """Valid pages cut into runs of adjacent pages with the same protection."""
    regions: list[Region] = []
    run: list[Page] = []
    for page in pages:
        if run and (page.va != run[-1].va + PAGE_SIZE
                    or (page.protection, page.user) != (run[-1].protection, run[-1].user)):
            regions.append(_region_of(run))
            run = []
        run.append(page)
    if run:
        regions.append(_region_of(run))
    return regions


def _region_of(run: list[Page]) -> Region:
    first = run[0]
    return Region(first.va, run[-1].va + PAGE_SIZE, first.protection, RegionState.COMMITTED,
                  tuple(run), first.user)


def _vad_only_regions(pages: Sequence[Page], runs: list[VadRun]) -> list[Region]:
    """The parts of VAD runs that have no valid page (the page tables win where both speak)."""
    vas = [p.va for p in pages]
    regions = []
    for run in runs:
        at = run.start
        for va in vas[bisect.bisect_left(vas, run.start):bisect.bisect_left(vas, run.end)]:
            if va > at:
                regions.append(Region(at, va, run.protection, run.state))
            at = va + PAGE_SIZE
        if at < run.end:
            regions.append(Region(at, run.end, run.protection, run.state))
    return regions


def _split_by_pte(proc: Process, regions: list[Region]) -> list[Region]:
    """Committed pages without a valid PTE are demand zero, in transition or in the
    pagefile: their software PTEs (emu.nt.mm.softpte) say which."""
    return _split_by_values(regions, proc.space.pte)


def _split_by_values(regions: list[Region], pte_of: Callable[[int], int | None]) -> list[Region]:
    """_split_by_pte with each page's PTE value given by ``pte_of`` (None: no page table)."""
    from emu.nt.mm.softpte import PteState, decode

    states = {PteState.TRANSITION: RegionState.TRANSITION,
              PteState.PAGEFILE: RegionState.PAGEFILE}
    out = []
    for region in regions:
        if region.state is not RegionState.DEMAND_ZERO:
            out.append(region)
            continue
        start, state = region.start, None
        for va in range(region.start, region.end, PAGE_SIZE):
            pte = pte_of(va)
            here = states.get(decode(pte).state, RegionState.DEMAND_ZERO) if pte else \
                RegionState.DEMAND_ZERO
            if state is not None and here is not state:
                out.append(Region(start, va, region.protection, state))
                start = va
            state = here
        out.append(Region(start, region.end, region.protection, state))
    return out


def vad_runs(proc: Process) -> list[VadRun]:
    """The reserved and committed runs of ``proc``'s VAD tree (emu.nt.mm.vad.VadSet), or []
    when it has none: the one place that knows the tree's shape."""
    vads = getattr(proc, "vads", None)
    if vads is None:
        return []
    from emu.nt.mm.vad import MemState, PageProtect  # only needed once trees exist

    out = []
    for vad in vads:
        for run in getattr(vad, "runs", ()):
            if run.state == MemState.MEM_RESERVE:
                out.append(VadRun(run.start, run.end, RegionState.RESERVED, ""))
            elif run.state == MemState.MEM_COMMIT:
                name = PageProtect(run.protect).name or addr(run.protect)
                out.append(VadRun(run.start, run.end, RegionState.DEMAND_ZERO, name))
    return out


class MapRecorder:
    """Captures every process's map: as it exits (Executive.exit_observers, the last moment
    its pages are visible) and, on ``snapshot_live``/``finish``, the ones still alive."""

    def __init__(self, machine: Machine) -> None:
        self._executive = machine.executive
        self._maps: dict[int, ProcessMap] = {}
        self._moment = 0
        self._executive.exit_observers.append(self._on_exit)

    @property
    def maps(self) -> list[ProcessMap]:
        """The maps captured so far, in pid order."""
        return [self._maps[pid] for pid in sorted(self._maps)]

    def _on_exit(self, proc: Process) -> None:
        self._moment += 1
        self._maps[proc.pid] = capture(proc, at_exit=True, moment=self._moment)

    def snapshot_live(self) -> list[ProcessMap]:
        """Capture every process that has not terminated, all at one moment (replacing an
        earlier live snapshot of it); returns every map."""
        self._moment += 1
        for proc in self._executive.processes:
            if proc.state is not ProcessState.TERMINATED:
                self._maps[proc.pid] = capture(proc, moment=self._moment)
        return self.maps

    def finish(self) -> list[ProcessMap]:
        """After the run: capture the processes still alive, stop observing, return every map."""
        maps = self.snapshot_live()
        if self._on_exit in self._executive.exit_observers:
            self._executive.exit_observers.remove(self._on_exit)
        return maps


@dataclass(frozen=True)
class FrameUsers:
    """A frame that appears in the maps of two or more processes."""

    pfn: int
    users: tuple[tuple[int, int], ...]   # (pid, va), in order of capture
    reused: bool     # not shared: each earlier map was taken at its process's exit, before
                     # the next one, so the frame was freed and allocated again


def frames_in_several_maps(maps: Sequence[ProcessMap]) -> list[FrameUsers]:
    """Frames mapped by pages of more than one process, by frame number."""
    found: dict[int, list[tuple[ProcessMap, Page]]] = {}
    for pm in sorted(maps, key=lambda m: (m.moment, m.pid)):
        for page in pm.pages:
            found.setdefault(page.pfn, []).append((pm, page))
    out = []
    for pfn in sorted(found):
        entries = found[pfn]
        if len({pm.pid for pm, _ in entries}) < 2:
            continue
        reused = all(a.at_exit and a.moment < b.moment
                     for (a, _), (b, _) in pairwise(entries))
        out.append(FrameUsers(pfn, tuple((pm.pid, p.va) for pm, p in entries), reused))
    return out


# -- text -------------------------------------------------------------------------------------

def render_text(maps: Sequence[ProcessMap]) -> str:
    """The maps as text: per process a header and one line per region (range, protection,
    state, pages -> frames), then a line on frames mapped by more than one process."""
    ranges = {id(r): f"{addr(r.start, ticks=True)}-{addr(r.end, ticks=True)}"
              for pm in maps for r in pm.regions}
    regions = [r for pm in maps for r in pm.regions]
    w_range = max((len(t) for t in ranges.values()), default=0)
    w_prot = max((len(r.protection or "-") for r in regions), default=0)
    w_state = max((len(r.state.value) for r in regions), default=0)
    lines = []
    for pm in maps:
        when = "at exit" if pm.at_exit else "live"
        lines.append(f'process {pm.pid} "{pm.name}"  {len(pm.pages)} mapped pages in '
                     f"{len(pm.regions)} regions (captured {when})")
        for r in pm.regions:
            lines.append(f"  {ranges[id(r)]:<{w_range}}  {r.protection or '-':<{w_prot}}  "
                         f"{r.state.value:<{w_state}}  {_pages_text(r)}")
    lines.extend(_sharing_lines(maps))
    return "\n".join(lines) + "\n"


def _pages_text(r: Region) -> str:
    count = f"{r.page_count} page{'s' if r.page_count != 1 else ''}"
    if not r.pages:
        return count
    frames = r.frames
    noun = "frame" if len(frames) == 1 else "frames"
    supervisor = "  (supervisor only: US=0)" if not r.user else ""
    return f"{count} -> {noun} {frame_list(frames)}{supervisor}"


def frame_list(frames: Sequence[int]) -> str:
    """Frame numbers in the given order; three or more consecutive ones as ``first..last``."""
    parts, i = [], 0
    while i < len(frames):
        j = i
        while j + 1 < len(frames) and frames[j + 1] == frames[j] + 1:
            j += 1
        if j - i >= 2:
            parts.append(f"{addr(frames[i])}..{addr(frames[j])}")
        else:
            parts.extend(addr(f) for f in frames[i:j + 1])
        i = j + 1
    return ", ".join(parts)


def _sharing_lines(maps: Sequence[ProcessMap]) -> list[str]:
    several = frames_in_several_maps(maps)
    shared = [f for f in several if not f.reused]
    lines = [f"frame {addr(f.pfn)} is mapped by more than one process: "
             + ", ".join(f"process {pid} at {addr(va, ticks=True)}" for pid, va in f.users)
             for f in shared] or ["no physical frame is mapped by two processes"]
    lines += [f"frame {addr(f.pfn)} was reused after its process exited: "
              + ", then ".join(f"process {pid} at {addr(va, ticks=True)}" for pid, va in f.users)
              for f in several if f.reused]
    return lines


# -- picture ----------------------------------------------------------------------------------

SMALL_REGION = 64      # regions up to this many pages are drawn whole
EDGE_PAGES = 8         # of a larger region, this many pages at each end
ROW = 18               # vertical pitch of a row
BOX_H = 14
PAGE_W = 190
FRAME_W = 100
ARROW_ROOM = 190       # horizontal room between a page column and the frame column
MARGIN = 16
TOP = 64               # first row, below the title and the column headings
LEFT_X = MARGIN
FRAMES_X = LEFT_X + PAGE_W + ARROW_ROOM
RIGHT_X = FRAMES_X + FRAME_W + ARROW_ROOM
WIDTH = RIGHT_X + PAGE_W + MARGIN
COLOURS = ("#1f5fa8", "#c0392b", "#27864a", "#7d3c98", "#c26a00", "#138d90", "#7b5a3c",
           "#b03a7a")
SHARED_COLOUR = "#666666"
BOUNDARY_COLOUR = "#c0392b"
HIT_COLOUR = "#c0392b"    # a frame ring-0 code wrote (emu.scenarios: a DPC's store)


class _Kind(enum.Enum):
    HEADER = "header"
    REGION = "region"
    PAGE = "page"
    UNBACKED = "unbacked"
    ELLIPSIS = "ellipsis"
    BOUNDARY = "boundary"


class _Row(NamedTuple):
    kind: _Kind
    text: str
    page: Page | None = None
    va: int = 0                  # BOUNDARY: the first address past the line


def _in_focus(start: int, end: int, focus: list[tuple[int, int]]) -> bool:
    return any(lo < end and start < hi for lo, hi in focus)


def _process_rows(pm: ProcessMap, focus: list[tuple[int, int]] | None,
                  boundaries: Sequence[tuple[int, str]] = ()) -> list[_Row]:
    """The rows of one process's column, following the drawing rule of the module doc;
    a boundary's line goes between the last row below its address and the first at or
    above it (or last)."""
    rows = [_Row(_Kind.HEADER, pm.title)]
    hidden = 0
    lines = sorted(boundaries)

    def cross(va: int) -> None:
        while lines and lines[0][0] <= va:
            at, text = lines.pop(0)
            rows.append(_Row(_Kind.BOUNDARY, text, va=at))

    def flush() -> None:
        nonlocal hidden
        if hidden:
            rows.append(_Row(_Kind.ELLIPSIS, f"... {hidden} page{'s' * (hidden != 1)} not drawn"))
            hidden = 0

    for region in pm.regions:
        if not region.pages:
            if focus is None or _in_focus(region.start, region.end, focus):
                flush()
                cross(region.start)
                n = region.page_count
                rows.append(_Row(_Kind.REGION, f"{region.state.value}, {n} page{'s' * (n != 1)}"))
                rows.append(_Row(_Kind.UNBACKED, addr(region.start, ticks=True)))
            continue
        labelled = False
        n = len(region.pages)
        for i, page in enumerate(region.pages):
            if focus is not None:
                drawn = _in_focus(page.va, page.va + PAGE_SIZE, focus)
            else:
                drawn = n <= SMALL_REGION or i < EDGE_PAGES or i >= n - EDGE_PAGES
            if not drawn:
                hidden += 1
                continue
            flush()
            cross(page.va)
            if not labelled:
                count = f"{n} page{'s' * (n != 1)}"
                rows.append(_Row(_Kind.REGION, f"{region.owner}: {region.protection}"
                                 if region.owner else f"{region.protection}, {count}"))
                labelled = True
            rows.append(_Row(_Kind.PAGE, addr(page.va, ticks=True), page))
    flush()
    cross(1 << 64)
    return rows


def render_svg(maps: Sequence[ProcessMap], *, focus: list[tuple[int, int]] | None = None,
               boundaries: Sequence[tuple[int, str]] = (),
               hits: dict[int, str] | None = None) -> str:
    """The seed's diagram as a self-contained SVG: the first process's pages on the left, the
    second's on the right (further ones alternate, stacked below), the frames they use in
    the middle by frame number, one arrow from each drawn page to its frame; each of
    ``boundaries`` (address, words) a dashed red line in every column, where that
    address falls among the drawn pages (the end of a user address space, say); each
    frame of ``hits`` (pfn -> a word or two: who wrote it) outlined in red, the words in
    its box."""
    body: list[str] = []
    anchors: list[tuple[int, Page, int, int, int]] = []   # (process index, page, x, y, side)
    bottoms = [TOP, TOP]
    for i, pm in enumerate(maps):
        side = i % 2
        x, y = (LEFT_X, RIGHT_X)[side], bottoms[side]
        colour = COLOURS[i % len(COLOURS)]
        for row in _process_rows(pm, focus, boundaries):
            body.append(_row_svg(row, pm, x, y, colour))
            if row.page is not None:
                anchors.append((i, row.page, x + PAGE_W if side == 0 else x, y + BOX_H // 2, side))
            y += ROW
        bottoms[side] = y + ROW
    users: dict[int, list[tuple[int, Page]]] = {}
    for i, page, *_ in anchors:
        users.setdefault(page.pfn, []).append((i, page))
    frame_y: dict[int, int] = {}
    y, previous = TOP, None
    for pfn in sorted(users):
        if previous is not None and pfn != previous + 1:
            gap = pfn - previous - 1
            body.append(_text(FRAMES_X + 6, y + 11, "ellipsis",
                              f"... {gap} frame{'s' * (gap != 1)}"))
            y += ROW
        body.append(_frame_svg(pfn, users[pfn], maps, y, (hits or {}).get(pfn, "")))
        frame_y[pfn] = y
        y, previous = y + ROW, pfn
    arrows = [_arrow_svg(i, x, ay, FRAMES_X if side == 0 else FRAMES_X + FRAME_W,
                         frame_y[page.pfn] + BOX_H // 2)
              for i, page, x, ay, side in anchors]
    height = max(*bottoms, y) + 2 * ROW
    notes = ["Dashed red line: the end of the user address space."] if boundaries else []
    if hits and any(pfn in frame_y for pfn in hits):
        notes.append("Red box: a frame ring-0 code wrote.")
    return _document(maps, body + arrows, height, notes)


def _document(maps: Sequence[ProcessMap], body: list[str], height: int,
              notes: Sequence[str] = ()) -> str:
    markers = [f'<marker id="head-{i}" viewBox="0 0 8 8" refX="8" refY="4" markerWidth="7" '
               f'markerHeight="7" orient="auto"><path d="M0,0 L8,4 L0,8 z" '
               f'fill="{COLOURS[i % len(COLOURS)]}"/></marker>' for i in range(len(maps))]
    names = ", ".join(f'{pm.pid} "{pm.name}"' for pm in maps)
    if all(pm.heading for pm in maps):
        title = "Virtual pages -> physical frames: " + ", ".join(pm.heading for pm in maps)
    else:
        title = (f"Virtual address spaces of process {names}" if len(maps) == 1 else
                 f"Virtual address spaces of processes {names}")
    heading = [
        _text(MARGIN, 20, "title", title),
        _text(LEFT_X, 46, "column", "virtual pages"),
        _text(FRAMES_X, 46, "column", "physical frames (PFN)"),
        _text(RIGHT_X, 46, "column", "virtual pages") if len(maps) > 1 else "",
        _text(MARGIN, height - ROW, "note", "A D: the PTE's Accessed and Dirty bits.  "
              "  ".join(["...: pages or frames not drawn.", *notes])),
    ]
    return "\n".join([
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family="monospace" font-size="11">',
        "<title>Address-space map</title>",
        f"<desc>Each arrow goes from a virtual page of a process to the physical frame its "
        f"PTE names. Drawn: every page of a region of at most {SMALL_REGION} pages, the "
        f"first and last {EDGE_PAGES} of a larger one, or only the pages in the focus "
        f"ranges.</desc>",
        '<rect width="100%" height="100%" fill="#ffffff"/>',
        "<defs>", *markers, "</defs>",
        *[h for h in heading if h], *body, "</svg>", ""])


_TEXT_STYLE = {"title": ' font-size="14" font-weight="bold"', "column": ' font-weight="bold"',
               "region": ' font-size="9" fill="#444444"', "ellipsis": ' fill="#777777"',
               "note": ' font-size="10" fill="#444444"', "flags": ' text-anchor="end"',
               "boundary": f' font-size="9" font-weight="bold" fill="{BOUNDARY_COLOUR}"',
               "hit": f' font-size="9" font-weight="bold" fill="{HIT_COLOUR}" '
                      'text-anchor="end"'}


def _text(x: int, y: int, cls: str, text: str, extra: str = "") -> str:
    return (f'<text class="{cls}" x="{x}" y="{y}"{_TEXT_STYLE.get(cls, "")}{extra}>'
            f"{escape(text)}</text>")


def _row_svg(row: _Row, pm: ProcessMap, x: int, y: int, colour: str) -> str:
    if row.kind is _Kind.HEADER:
        return _text(x, y + 11, "header", row.text, f' font-weight="bold" fill="{colour}"')
    if row.kind is _Kind.REGION:
        return _text(x, y + 11, "region", row.text)
    if row.kind is _Kind.ELLIPSIS:
        return _text(x + 6, y + 11, "ellipsis", row.text)
    if row.kind is _Kind.BOUNDARY:
        return (f'<g class="boundary" data-pid="{pm.pid}" data-va="{row.va:#x}">'
                f'<line x1="{x}" y1="{y + 1}" x2="{x + PAGE_W}" y2="{y + 1}" '
                f'stroke="{BOUNDARY_COLOUR}" stroke-width="2" '
                f'stroke-dasharray="6,3"/>{_text(x, y + 12, "boundary", row.text)}</g>')
    if row.kind is _Kind.UNBACKED:
        return (f'<g class="unbacked"><rect x="{x}" y="{y}" width="{PAGE_W}" height="{BOX_H}" '
                f'fill="none" stroke="{colour}" stroke-dasharray="3,2"/>'
                f'{_text(x + 6, y + 11, "label", row.text)}</g>')
    page = row.page
    flags = ("A" if page.accessed else "-") + " " + ("D" if page.dirty else "-")
    tip = (f'{pm.title} {addr(page.va, ticks=True)} -> frame '
           f"{addr(page.pfn)}, {page.protection}, {flags}")
    return (f'<g class="page" id="page-{pm.pid}-{page.va:x}"><title>{escape(tip)}</title>'
            f'<rect x="{x}" y="{y}" width="{PAGE_W}" height="{BOX_H}" fill="{colour}" '
            f'fill-opacity="0.15" stroke="{colour}"/>{_text(x + 6, y + 11, "label", row.text)}'
            f'{_text(x + PAGE_W - 6, y + 11, "flags", flags)}</g>')


def _frame_svg(pfn: int, users: list[tuple[int, Page]], maps: Sequence[ProcessMap],
               y: int, hit: str = "") -> str:
    owners = sorted({i for i, _ in users})
    colour = COLOURS[owners[0] % len(COLOURS)] if len(owners) == 1 else SHARED_COLOUR
    who = "; ".join(f'{maps[i].title} at {addr(p.va, ticks=True)}'
                    for i, p in users)
    tip = f"frame {addr(pfn)} (physical {addr(pfn * PAGE_SIZE, ticks=True)}): {who}"
    stroke = f'stroke="{HIT_COLOUR}" stroke-width="2.5"' if hit else f'stroke="{colour}"'
    words = _text(FRAMES_X + FRAME_W - 4, y + 10, "hit", hit) if hit else ""
    return (f'<g class="frame" id="frame-{pfn:x}"><title>{escape(tip)}'
            f'{escape(f"; {hit}" if hit else "")}</title>'
            f'<rect x="{FRAMES_X}" y="{y}" width="{FRAME_W}" height="{BOX_H}" fill="{colour}" '
            f'fill-opacity="0.15" {stroke}/>'
            f'{_text(FRAMES_X + 6, y + 11, "label", addr(pfn))}{words}</g>')


def _arrow_svg(i: int, x1: int, y1: int, x2: int, y2: int) -> str:
    colour = COLOURS[i % len(COLOURS)]
    return (f'<line class="arrow" x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="{colour}" '
            f'stroke-width="1" marker-end="url(#head-{i})"/>')
