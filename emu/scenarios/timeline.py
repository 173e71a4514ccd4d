"""The timeline: which thread ran when, ring changes, interrupts, DPCs, faults, bug checks.

The witness (emu.scenarios.witness) turns the executive's events into Marks; this module
draws them as an SVG with one lane per process (and one for the system, where drivers
start and nobody's thread runs). Each lane has two rows: ring 3 above, ring 0 below, so a
system call, an interrupt or a DPC shows as a step down into ring 0 in the lane of the
thread that was on the CPU. The horizontal axis is the order of events, not time (the
instruction clock of each mark is in its tooltip): a long computation and a system call
take one step each.

    render_timeline(marks, lanes) -> an <svg> element (no XML declaration: it is inlined)
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from emu.viz.addrmap import COLOURS

SYSTEM_LANE = 0
SYSTEM_COLOUR = "#555555"
LEFT = 200             # room for lane labels
MIN_WIDTH = 980        # the legend's width
TOP = 40
LANE_H = 46
ROW_H = 16             # the ring-3 row, then the ring-0 row
MAX_WIDTH = 1180
HALO = ' stroke="#ffffff" stroke-width="3" paint-order="stroke"'   # legible over bars
RED, ORANGE, PURPLE, GREEN, AMBER = "#c0392b", "#d35400", "#7d3c98", "#1e8449", "#b7950b"


class MarkKind(enum.Enum):
    """What a mark on the timeline stands for."""

    RUN = "run"               # a thread gets the CPU (ring 3) until the next RUN
    SYSCALL = "syscall"       # a system service: ring 3 -> ring 0 -> ring 3
    FAULTS = "faults"         # page faults MmAccessFault resolved (``count`` of them)
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
    lane: int                 # a pid, or SYSTEM_LANE
    label: str                # a few words shown beside it
    detail: str = ""          # the tooltip
    target: int | None = None  # WRITE: the lane the bytes landed in
    count: int = 1            # FAULTS: how many


@dataclass(frozen=True)
class Lane:
    """A row of the timeline: a process, or the system."""

    ident: int
    label: str
    colour: str


def lanes_for(processes: Sequence[tuple[int, str]]) -> list[Lane]:
    """The system lane, then one lane per (pid, name), coloured as in the address-space
    map (emu.viz.addrmap: the i-th process by pid gets the i-th colour)."""
    out = [Lane(SYSTEM_LANE, "system (no process)", SYSTEM_COLOUR)]
    for i, (pid, name) in enumerate(sorted(processes)):
        out.append(Lane(pid, f"{name} ({pid})", COLOURS[i % len(COLOURS)]))
    return out


def render_timeline(marks: Sequence[Mark], lanes: Sequence[Lane], title: str) -> str:
    """The timeline as an inline SVG element."""
    step = max(3, min(28, (MAX_WIDTH - LEFT - 40) // max(1, len(marks))))
    width = max(MIN_WIDTH, LEFT + step * (len(marks) + 2) + 40)
    rows = {lane.ident: TOP + i * LANE_H for i, lane in enumerate(lanes)}
    colours = {lane.ident: lane.colour for lane in lanes}
    height = TOP + len(lanes) * LANE_H + 34
    x_of = {m.seq: LEFT + step * (i + 1) for i, m in enumerate(marks)}
    end_x = LEFT + step * (len(marks) + 1)
    body = [_lane_svg(lane, rows[lane.ident], width) for lane in lanes]
    body += _runs_svg(marks, x_of, end_x, rows, colours)
    for m in marks:
        if m.kind is not MarkKind.RUN and m.lane in rows:
            body.append(_mark_svg(m, x_of[m.seq], step, rows, colours, height))
    return "\n".join([
        f'<svg xmlns="http://www.w3.org/2000/svg" class="timeline" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" font-family="monospace" '
        f'font-size="11">',
        f"<title>{escape(title)}</title>",
        "<desc>One lane per process; in each lane ring 3 above, ring 0 below. Left to "
        "right: the order of events (tooltips give the instruction clock).</desc>",
        '<defs><marker id="tl-head" viewBox="0 0 8 8" refX="8" refY="4" markerWidth="7" '
        f'markerHeight="7" orient="auto"><path d="M0,0 L8,4 L0,8 z" fill="{RED}"/></marker>'
        "</defs>",
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
        f'<text x="8" y="18" font-size="13" font-weight="bold">{escape(title)}</text>',
        *body,
        _legend(height - 12),
        "</svg>"])


def _lane_svg(lane: Lane, y: int, width: int) -> str:
    return (f'<g class="lane" data-lane="{lane.ident}">'
            f'<text x="8" y="{y + 14}" fill="{lane.colour}" font-weight="bold">'
            f"{escape(lane.label)}</text>"
            f'<text x="{LEFT - 40}" y="{y + 13}" font-size="9" fill="#777777">ring 3</text>'
            f'<text x="{LEFT - 40}" y="{y + 13 + ROW_H + 4}" font-size="9" fill="#777777">'
            f"ring 0</text>"
            f'<line x1="{LEFT}" y1="{y + ROW_H + 2}" x2="{width - 10}" y2="{y + ROW_H + 2}" '
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


def _mark_svg(m: Mark, x: int, step: int, rows: dict[int, int], colours: dict[int, str],
              height: int) -> str:
    y = rows[m.lane]
    ring0 = y + ROW_H + 5
    tip = f"<title>{escape(_tip(m))}</title>"
    k = m.kind
    w = max(2, step - 2)
    if k in (MarkKind.SYSCALL, MarkKind.FAULTS, MarkKind.DPC, MarkKind.DRIVER):
        fill = {MarkKind.SYSCALL: "#333333", MarkKind.FAULTS: AMBER, MarkKind.DPC: PURPLE,
                MarkKind.DRIVER: SYSTEM_COLOUR}[k]
        label = "" if k is MarkKind.SYSCALL else _small(x, ring0 + ROW_H + 8, m.label)
        return (f'<g class="{k.value}" data-lane="{m.lane}"><rect x="{x}" y="{ring0}" '
                f'width="{w}" height="{ROW_H - 4}" fill="{fill}"/>{tip}{label}</g>')
    if k is MarkKind.INTERRUPT:
        return (f'<g class="interrupt" data-lane="{m.lane}"><path d="M{x},{y - 2} '
                f'L{x + w},{y - 2} L{x + w / 2},{ring0 + ROW_H - 4} z" fill="{ORANGE}"/>'
                f"{tip}{_small(x, y - 4, m.label)}</g>")
    if k is MarkKind.EXCEPTION:
        c = y + ROW_H // 2
        return (f'<g class="exception" data-lane="{m.lane}"><path d="M{x},{c} L{x + 5},'
                f'{c - 6} L{x + 10},{c} L{x + 5},{c + 6} z" fill="{RED}"/>{tip}'
                f"{_small(x + 12, c + 4, m.label)}</g>")
    if k is MarkKind.PAGE:
        return (f'<g class="page-change" data-lane="{m.lane}"><circle cx="{x + 4}" '
                f'cy="{y + ROW_H // 2}" r="4" fill="{GREEN}"/>{tip}</g>')
    if k is MarkKind.EXIT:
        return (f'<g class="exit" data-lane="{m.lane}"><line x1="{x}" y1="{y + 1}" x2="{x}" '
                f'y2="{y + ROW_H}" stroke="#000000" stroke-width="2"/>{tip}'
                f"{_small(x + 3, y + ROW_H + 14, m.label)}</g>")
    if k is MarkKind.WRITE:
        return _write_svg(m, x, w, rows)
    return (f'<g class="bugcheck" data-lane="{m.lane}"><line x1="{x}" y1="{TOP - 6}" '
            f'x2="{x}" y2="{height - 30}" stroke="{RED}" stroke-width="3"/>{tip}'
            f'<text x="{x + 4}" y="{TOP - 8}" fill="{RED}" font-weight="bold">'
            f"{escape(m.label)}</text></g>")


def _write_svg(m: Mark, x: int, w: int, rows: dict[int, int]) -> str:
    """An arrow from the ring-0 row where the store ran to the lane it landed in."""
    y1 = rows[m.lane] + ROW_H + 5
    target = m.target if m.target in rows else SYSTEM_LANE
    y2 = rows[target] + (ROW_H // 2 if target != m.lane else ROW_H - 2)
    bend = x + w + 26
    return (f'<g class="dpc-write" data-lane="{m.lane}" data-process="{target}">'
            f'<path d="M{x + w / 2},{y1} C{bend},{y1} {bend},{y2} {x + w + 4},{y2}" '
            f'fill="none" stroke="{RED}" stroke-width="2" marker-end="url(#tl-head)"/>'
            f"<title>{escape(_tip(m))}</title>"
            f'<text x="{bend + 4}" y="{(y1 + y2) // 2 + 4}" fill="{RED}"{HALO}>'
            f"{escape(m.label)}</text></g>")


def _small(x: float, y: float, text: str) -> str:
    return f'<text x="{x}" y="{y}" font-size="9"{HALO}>{escape(text)}</text>' if text else ""


def _legend(y: int) -> str:
    items = (("run", "#1f5fa8", "thread on the CPU (ring 3)"), ("sys", "#333333", "system call"),
             ("pf", AMBER, "page faults resolved"), ("int", ORANGE, "interrupt + ISR"),
             ("dpc", PURPLE, "DPC"), ("av", RED, "fault / bug check / stray write"),
             ("pg", GREEN, "watched page changed"))
    parts, x = [], 8
    for _, colour, text in items:
        parts.append(f'<rect x="{x}" y="{y - 9}" width="10" height="10" fill="{colour}"/>'
                     f'<text x="{x + 14}" y="{y}" font-size="10">{escape(text)}</text>')
        x += 24 + 7 * len(text)
    return f'<g class="legend">{"".join(parts)}</g>'
