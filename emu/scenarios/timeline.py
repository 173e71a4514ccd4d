"""The timeline: which thread ran when, ring changes, interrupts, DPCs, faults, bug checks.

The witness (emu.scenarios.witness) turns the executive's events into Marks; this module
draws them as an SVG with one lane per process (and one for the system, where drivers
start and nobody's thread runs; and, when pages went to or came from the pagefile, one
for the disk). Each lane has two rows: ring 3 above, ring 0 below, so a system call, an
interrupt or a DPC shows as a step down into ring 0 in the lane of the thread that was on
the CPU; below them, the marks' labels, each in the first label row where it covers no
other label (a label with no room left is only in its mark's tooltip). The horizontal
axis is the order of events, not time (the instruction clock of each mark is in its
tooltip): a long computation and a system call take one step each.

Stores by ring-0 code are arrows: red when the store is stray (a DPC using a user-mode
address in whatever process it interrupted; a driver writing another driver's image),
blue when it lands where it belongs (kernel pool, or a page through a kernel mapping).

    render_timeline(marks, lanes) -> an <svg> element (no XML declaration: it is inlined)
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from emu.viz.addrmap import COLOURS

SYSTEM_LANE = 0
DISK_LANE = -1
SYSTEM_COLOUR = "#555555"
DISK_COLOUR = "#6e4b1f"
LEFT = 200             # room for lane labels
MIN_WIDTH = 760
TOP = 40
ROW_H = 16             # the ring-3 row, then the ring-0 row
LABEL_SIZE = 9         # font size of the marks' labels
LABEL_H = 11           # pitch of the label rows under each lane
LABEL_ROWS = 2
LANE_H = 2 * ROW_H + 8 + LABEL_ROWS * LABEL_H + 2
LEGEND_SIZE = 10
LEGEND_H = 16
CHAR_EM = 0.62         # advance of a monospace glyph, in em (DejaVu Sans Mono: 0.602)
MAX_WIDTH = 1180
HALO = ' stroke="#ffffff" stroke-width="3" paint-order="stroke"'   # legible over bars
RED, ORANGE, PURPLE, GREEN, AMBER = "#c0392b", "#d35400", "#7d3c98", "#1e8449", "#b7950b"
BLUE = "#1a5276"       # a store that lands where it belongs
DISK_READ = "#6e4b1f"  # a hard fault: the page read back from the pagefile
DISK_WRITE = "#85929e"  # pages written out to the pagefile


class MarkKind(enum.Enum):
    """What a mark on the timeline stands for."""

    RUN = "run"               # a thread gets the CPU (ring 3) until the next RUN
    SYSCALL = "syscall"       # a system service: ring 3 -> ring 0 -> ring 3
    FAULTS = "faults"         # soft or demand-zero page faults resolved (``count``)
    HARD_FAULTS = "hard-faults"  # page faults resolved by reading the pagefile (``count``)
    PAGE_OUT = "page-out"     # pages written to the pagefile (``count``), in the disk lane
    EXCEPTION = "exception"   # a fault nobody resolved: the process dies of it
    INTERRUPT = "interrupt"   # a device interrupt and its ISR, at DIRQL
    DPC = "dpc"               # a deferred procedure call, at DISPATCH_LEVEL
    WRITE = "write"           # ring-0 code stored bytes into ``target``'s lane
    PAGE = "page"             # a watched page now holds other bytes
    DRIVER = "driver"         # a DriverEntry at ring 0, in no process
    EXIT = "exit"             # a process ends
    BUGCHECK = "bugcheck"     # the system stops


@dataclass(frozen=True)
class Mark:
    """One thing on the timeline."""

    seq: int                  # its place in the order of events
    clock: int                # the machine's instruction clock then
    kind: MarkKind
    lane: int                 # a pid, SYSTEM_LANE or DISK_LANE
    label: str                # a few words shown beside it
    detail: str = ""          # the tooltip
    target: int | None = None  # WRITE: the lane the bytes landed in
    count: int = 1            # FAULTS, HARD_FAULTS, PAGE_OUT: how many
    stray: bool = False       # WRITE: the store went where it must not
    target_seq: int | None = None  # WRITE: the mark (a DriverEntry) whose image it hit


@dataclass(frozen=True)
class Lane:
    """A row of the timeline: a process, the system, or the disk."""

    ident: int
    label: str
    colour: str


def lanes_for(processes: Sequence[tuple[int, str]], *, disk: bool = False) -> list[Lane]:
    """The system lane, then one lane per (pid, name), coloured as in the address-space
    map (emu.viz.addrmap: the i-th process by pid gets the i-th colour); then, with
    ``disk``, the pagefile's lane."""
    out = [Lane(SYSTEM_LANE, "system (no process)", SYSTEM_COLOUR)]
    for i, (pid, name) in enumerate(sorted(processes)):
        out.append(Lane(pid, f"{name} ({pid})", COLOURS[i % len(COLOURS)]))
    if disk:
        out.append(Lane(DISK_LANE, "pagefile (disk)", DISK_COLOUR))
    return out


def text_width(text: str, size: float) -> float:
    """The width a monospace ``text`` takes at font ``size`` (an upper bound)."""
    return len(text) * size * CHAR_EM


class _Labels:
    """The label rows under each lane: where each label goes so that none covers another
    (or the bug check's line, which crosses every lane)."""

    def __init__(self, rows: dict[int, int], width: int, walls: Sequence[float]) -> None:
        self._rows = rows
        self.width = width
        self._taken = {(lane, k): [(w - 3, w + 3) for w in walls]
                       for lane in rows for k in range(LABEL_ROWS)}

    def place(self, lane: int, x: float, text: str) -> str:
        """The label as an SVG <text> in the first free row under ``lane`` at ``x`` (moved
        left if it would run past the right edge), or "" when no row has room."""
        if not text or lane not in self._rows:
            return ""
        w = text_width(text, LABEL_SIZE)
        x = max(LEFT - 36, min(x, self.width - 6 - w))
        for k in range(LABEL_ROWS):
            taken = self._taken[(lane, k)]
            if all(x + w + 2 <= a or b + 2 <= x for a, b in taken):
                taken.append((x, x + w))
                y = self._rows[lane] + 2 * ROW_H + 6 + LABEL_SIZE + k * LABEL_H
                return (f'<text class="label" x="{x:.0f}" y="{y}" font-size="{LABEL_SIZE}"'
                        f">{escape(text)}</text>")
        return ""


_LEGEND = (("#1f5fa8", "thread on the CPU (ring 3)"), ("#333333", "system call"),
           (AMBER, "page faults resolved in RAM"), (DISK_READ, "hard faults: read from disk"),
           (DISK_WRITE, "written to the pagefile"),
           (ORANGE, "interrupt + ISR"), (PURPLE, "DPC"), (BLUE, "ring-0 store"),
           (RED, "fault / bug check / stray store"), (GREEN, "watched page changed"))


def _legend(width: int, top: int) -> tuple[str, int]:
    """The legend in as many lines as ``width`` needs; (its SVG, the height it takes)."""
    parts, x, y = [], 8, top + LEGEND_H - 4
    for colour, text in _LEGEND:
        item = 14 + text_width(text, LEGEND_SIZE)
        if x > 8 and x + item > width - 8:
            x, y = 8, y + LEGEND_H
        parts.append(f'<rect x="{x}" y="{y - 9}" width="10" height="10" fill="{colour}"/>'
                     f'<text x="{x + 14}" y="{y}" font-size="{LEGEND_SIZE}">'
                     f"{escape(text)}</text>")
        x += int(item) + 18
    return f'<g class="legend">{"".join(parts)}</g>', y - top + 8


def render_timeline(marks: Sequence[Mark], lanes: Sequence[Lane], title: str) -> str:
    """The timeline as an inline SVG element."""
    step = max(3, min(28, (MAX_WIDTH - LEFT - 40) // max(1, len(marks))))
    width = max(MIN_WIDTH, LEFT + step * (len(marks) + 2) + 40,
                int(16 + text_width(title, 13)))
    rows = {lane.ident: TOP + i * LANE_H for i, lane in enumerate(lanes)}
    colours = {lane.ident: lane.colour for lane in lanes}
    lanes_end = TOP + len(lanes) * LANE_H
    legend, legend_h = _legend(width, lanes_end + 4)
    height = lanes_end + 4 + legend_h
    x_of = {m.seq: LEFT + step * (i + 1) for i, m in enumerate(marks)}
    end_x = LEFT + step * (len(marks) + 1)
    walls = [x_of[m.seq] for m in marks if m.kind is MarkKind.BUGCHECK]
    labels = _Labels(rows, width, walls)
    body = [_lane_svg(lane, rows[lane.ident], width) for lane in lanes]
    body += _runs_svg(marks, x_of, end_x, rows, colours)
    for m in marks:
        if m.kind is not MarkKind.RUN and m.lane in rows:
            body.append(_mark_svg(m, x_of, step, rows, labels, lanes_end))
    return "\n".join([
        f'<svg xmlns="http://www.w3.org/2000/svg" class="timeline" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" font-family="monospace" '
        f'font-size="11">',
        f"<title>{escape(title)}</title>",
        "<desc>One lane per process; in each lane ring 3 above, ring 0 below, the marks' "
        "labels under them. Left to right: the order of events (tooltips give the "
        "instruction clock).</desc>",
        "<defs>", _head("tl-stray", RED), _head("tl-store", BLUE), "</defs>",
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
        f'<text x="8" y="18" font-size="13" font-weight="bold">{escape(title)}</text>',
        *body, legend, "</svg>"])


def _head(ident: str, colour: str) -> str:
    return (f'<marker id="{ident}" viewBox="0 0 8 8" refX="8" refY="4" markerWidth="7" '
            f'markerHeight="7" orient="auto"><path d="M0,0 L8,4 L0,8 z" fill="{colour}"/>'
            "</marker>")


def _lane_svg(lane: Lane, y: int, width: int) -> str:
    rings = ("ring 3", "ring 0") if lane.ident != DISK_LANE else ("", "")
    return (f'<g class="lane" data-lane="{"disk" if lane.ident == DISK_LANE else lane.ident}">'
            f'<text x="8" y="{y + 14}" fill="{lane.colour}" font-weight="bold">'
            f"{escape(lane.label)}</text>"
            + "".join(f'<text x="{LEFT - 40}" y="{y + 13 + k * (ROW_H + 4)}" font-size="9" '
                      f'fill="#777777">{ring}</text>' for k, ring in enumerate(rings) if ring)
            + f'<line x1="{LEFT}" y1="{y + ROW_H + 2}" x2="{width - 10}" y2="{y + ROW_H + 2}" '
            f'stroke="#e0e0e0"/>'
            f'<line x1="8" y1="{y + LANE_H - 3}" x2="{width - 10}" y2="{y + LANE_H - 3}" '
            f'stroke="#cccccc"/></g>')


def _runs_svg(marks: Sequence[Mark], x_of: dict[int, int], end_x: int,
              rows: dict[int, int], colours: dict[int, str]) -> list[str]:
    """A bar in the ring-3 row from each RUN to the next RUN (or the end, or a bug check)."""
    out = []
    starts = [m for m in marks if m.kind in (MarkKind.RUN, MarkKind.BUGCHECK, MarkKind.DRIVER)]
    for m, after in zip(starts, [*starts[1:], None], strict=True):
        if m.kind is not MarkKind.RUN or m.lane not in rows:
            continue
        x1, x2 = x_of[m.seq], (x_of[after.seq] if after is not None else end_x)
        ends = [e for e in marks if e.kind is MarkKind.EXIT and e.lane == m.lane
                and x1 <= x_of[e.seq] <= x2]
        if ends:
            x2 = x_of[ends[0].seq]
        y = rows[m.lane]
        out.append(f'<rect class="run" data-lane="{m.lane}" x="{x1}" y="{y + 3}" '
                   f'width="{max(2, x2 - x1)}" height="{ROW_H - 4}" fill="{colours[m.lane]}" '
                   f'fill-opacity="0.45"><title>{escape(_tip(m))}</title></rect>')
    return out


def _tip(m: Mark) -> str:
    return f"clock {m.clock}: {m.detail or m.label}"


_BLOCK = {MarkKind.SYSCALL: "#333333", MarkKind.FAULTS: AMBER, MarkKind.DPC: PURPLE,
          MarkKind.DRIVER: SYSTEM_COLOUR, MarkKind.HARD_FAULTS: DISK_READ,
          MarkKind.PAGE_OUT: DISK_WRITE}


def _mark_svg(m: Mark, x_of: dict[int, int], step: int, rows: dict[int, int],
              labels: _Labels, lanes_end: int) -> str:
    x = x_of[m.seq]
    y = rows[m.lane]
    ring0 = y + ROW_H + 5
    tip = f"<title>{escape(_tip(m))}</title>"
    k = m.kind
    w = max(2, step - 2)
    head = f'<g class="{k.value}" data-lane="{m.lane}" data-seq="{m.seq}">'
    if k in _BLOCK:
        label = "" if k is MarkKind.SYSCALL else labels.place(m.lane, x, m.label)
        disk = ""
        if k is MarkKind.HARD_FAULTS and DISK_LANE in rows:   # the read, in the disk lane
            d = rows[DISK_LANE]
            disk = (f'<rect class="disk-read" x="{x}" y="{d + 3}" width="{w}" '
                    f'height="{ROW_H - 4}" fill="{DISK_READ}" fill-opacity="0.6"/>')
        row = y + 3 if k is MarkKind.PAGE_OUT else ring0
        return (f'{head}<rect x="{x}" y="{row}" width="{w}" height="{ROW_H - 4}" '
                f'fill="{_BLOCK[k]}"/>{disk}{tip}{label}</g>')
    if k is MarkKind.INTERRUPT:
        return (f'{head}<path d="M{x},{y + 1} L{x + w},{y + 1} L{x + w / 2},'
                f'{ring0 + ROW_H - 4} z" fill="{ORANGE}"/>{tip}'
                f"{labels.place(m.lane, x, m.label)}</g>")
    if k is MarkKind.EXCEPTION:
        c = y + ROW_H // 2
        return (f'{head}<path d="M{x},{c} L{x + 5},{c - 6} L{x + 10},{c} L{x + 5},{c + 6} z" '
                f'fill="{RED}"/>{tip}{labels.place(m.lane, x, m.label)}</g>')
    if k is MarkKind.PAGE:
        return (f'<g class="page-change" data-lane="{m.lane}"><circle cx="{x + 4}" '
                f'cy="{y + ROW_H // 2}" r="4" fill="{GREEN}"/>{tip}</g>')
    if k is MarkKind.EXIT:
        return (f'{head}<line x1="{x}" y1="{y + 1}" x2="{x}" y2="{y + ROW_H}" '
                f'stroke="#000000" stroke-width="2"/>{tip}'
                f"{labels.place(m.lane, x, m.label)}</g>")
    if k is MarkKind.WRITE:
        return _write_svg(m, x_of, w, rows, labels)
    width = labels.width
    right = x + 4 + text_width(m.label, 11) <= width - 4    # else it ends at the line
    place = f'x="{x + 4}"' if right else f'x="{x - 4}" text-anchor="end"'
    return (f'{head}<line x1="{x}" y1="{TOP - 6}" x2="{x}" y2="{lanes_end - 4}" '
            f'stroke="{RED}" stroke-width="3"/>{tip}'
            f'<text {place} y="{TOP - 8}" fill="{RED}" font-weight="bold">'
            f"{escape(m.label)}</text></g>")


def _write_svg(m: Mark, x_of: dict[int, int], w: int, rows: dict[int, int],
               labels: _Labels) -> str:
    """An arrow from the ring-0 row where the store ran to where it landed: a DriverEntry's
    mark (another driver's image), a process's ring-3 row (its page), or the system
    lane's ring-0 row (kernel memory of no process)."""
    x = x_of[m.seq]
    sx = x + w / 2
    colour, head = (RED, "tl-stray") if m.stray else (BLUE, "tl-store")
    if m.target_seq is not None and m.target_seq in x_of:     # under the other mark
        sy = rows[m.lane] + ROW_H + 5                         # over the ring-3 row
        tx, ty = x_of[m.target_seq] + w / 2, rows[SYSTEM_LANE] + ROW_H + 4
        arc = rows[SYSTEM_LANE] + 2
        d = f"M{sx},{sy} C{sx},{arc} {tx},{arc} {tx},{ty}"
        where = "mark"
    else:
        target = m.target if m.target in rows else SYSTEM_LANE
        ring0 = target == SYSTEM_LANE and not m.stray
        ty = rows[target] + (ROW_H + 5 + (ROW_H - 4) // 2 if ring0 else ROW_H // 2)
        sy = rows[m.lane] + ROW_H + 5 + (ROW_H - 4) // 2
        bend = x + w + 18
        d = f"M{x + w},{sy} C{bend},{sy} {bend},{ty} {x + w + 4},{ty}"
        where = "lane"
    cls = "stray-write" if m.stray else "write"
    return (f'<g class="{cls}" data-lane="{m.lane}" data-process="{m.target}" '
            f'data-points-at="{where}">'
            f'<path d="{d}" fill="none" stroke="{colour}" stroke-width="2" '
            f'marker-end="url(#{head})"/><title>{escape(_tip(m))}</title>'
            f"{labels.place(m.lane, x + w + 22, m.label)}</g>")
