"""The steppable page of a run (``emu run --html FILE``): one self-contained HTML file, its
steps the run's events (emu.stepsrecord), stepped with buttons, the keyboard and a slider.

The page carries its steps as one JSON blob (``<script type="application/json"
id="steps-data">``) and a small inline script that shows one step at a time; nothing is
fetched (no external script, font or image: CSS, SVG and JS are inline). Without JavaScript
the first step is shown as the page was written (``render_step``: the script fills in the
same fields the same way) and the table of every step below it. Each step's address
space (SpaceTrack) is stored as what changed since its process's previous step; the script
rebuilds the maps from those changes in order and marks what a step changed (space_rows
is the same rule in Python, for the first step). docs/report.md, "Steppable pages", is
this module in words.
"""

from __future__ import annotations

import html
import json
from typing import Any

from emu.fmt import addr
from emu.hw.mmu import PTE
from emu.stepsrecord import MAX_STEPS, own_fields
from emu.viz import addrmap

# What a page's steps may weigh (their JSON and their rows in the table, UTF-8): with the
# timeline (~11 bytes a step) and the page's own ~15 KB it stays under 2 MB; the steps
# past it are left out, and the page says so.
MAX_BYTES = 1_700_000

# The fields of an event's own record shown in decimal; every other integer is hex
# (addresses, codes, values), as the debugger prints them.
DECIMAL = frozenset({"pid", "parent", "tid", "number", "vector", "exit_status", "new_pid",
                     "index"})
# The timeline's width (SVG user units) and each event kind's colour.
WIDTH = 1000
COLOURS = {"syscall": "#1f77b4", "syscall-return": "#aec7e8", "exception": "#d62728",
           "page-fault": "#ff7f0e", "interrupt": "#9467bd", "dpc": "#8c564b",
           "kernel-call-done": "#c49c94", "cr3-load": "#2ca02c", "thread-dispatch": "#98df8a",
           "process-create": "#17becf", "process-exit": "#7f7f7f", "driver-load": "#bcbd22",
           "bugcheck": "#000000"}


def value_text(name: str, value: Any) -> str:
    """A field's value as the page shows it: integers in hex (``0x1f``) but those of
    ``DECIMAL``, null as ``-``, lists and objects field by field."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value) if name in DECIMAL else f"{value:#x}"
    if isinstance(value, list):
        return "[" + ", ".join(value_text(name, v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {value_text(k, v)}" for k, v in value.items()) + "}"
    return str(value)


def details_lines(step: dict[str, Any]) -> list[str]:
    """The event's own fields, one ``name = value`` line each."""
    return [f"{k} = {value_text(k, v)}" for k, v in own_fields(step).items()]


def fields(step: dict[str, Any], index: int, count: int) -> dict[str, str]:
    """The text of each field of the step panel (element id -> text), the script's too."""
    return {
        "step-index": f"{index} of {count - 1}" if count else "0",
        "step-position": str(step["position"]),
        "step-event": step["event"],
        "step-pid": "-" if step["pid"] is None else str(step["pid"]),
        "step-tid": "-" if step["tid"] is None else str(step["tid"]),
        "step-name": step["name"] or "(no process)",
        "step-ring": str(step["ring"]),
        "step-irql": str(step["irql"]),
        "step-rip": f"{step['rip']:#x}",
        "step-symbol": step["symbol"],
        "step-insn": step["insn"],
        "step-details": "\n".join(details_lines(step)) or "(no fields of its own)",
    }


def walk_rows(walk: dict[str, Any] | None) -> str:
    """The walk's table body: one row per entry read (name, index, entry address, value,
    flags), the refusing entry's row marked ``class="refused"``."""
    if walk is None:
        return ""
    rows = []
    for level in walk["levels"]:
        cls = ' class="refused"' if level["name"] == walk["refused"] else ""
        rows.append(f'<tr{cls}><td>{level["name"]}</td><td>{level["index"]}</td>'
                    f'<td>{level["entry_address"]:#x}</td><td>{level["value"]:#018x}</td>'
                    f'<td>{html.escape(level["flags"]) or "-"}</td></tr>')
    return "".join(rows)


def walk_head(walk: dict[str, Any] | None) -> str:
    """One line over the walk: the access, the refusing entry and the error code."""
    if walk is None:
        return "no page walk at this step (only a #PF's steps have one)"
    return (f"{walk['access']} of {walk['address']:#x} at ring {walk['ring']}: "
            f"{walk['reason']} (error code {walk['error_code']:#x}, refused by "
            f"{walk['refused']})")


def render_step(step: dict[str, Any], index: int, count: int,
                space: dict[str, Any] | None = None) -> str:
    """The step panel as HTML, filled in for ``step`` (the page's first step, shown
    without JavaScript; the script rewrites the same elements); ``space``: its
    address space as SpaceTrack.step describes it."""
    cells = fields(step, index, count)
    walk = step["walk"]

    def cell(key: str) -> str:
        return f'<span id="{key}">{html.escape(cells[key])}</span>'
    return f"""<section id="step">
<table class="now">
<tr><th>step</th><td>{cell("step-index")}</td><th>position</th><td>{cell("step-position")}</td>
<th>event</th><td>{cell("step-event")}</td></tr>
<tr><th>process</th><td>{cell("step-name")} (pid {cell("step-pid")}, tid {cell("step-tid")})</td>
<th>ring</th><td>{cell("step-ring")}</td><th>IRQL</th><td>{cell("step-irql")}</td></tr>
<tr><th>RIP</th><td>{cell("step-rip")}</td><th>symbol</th><td>{cell("step-symbol")}</td>
<th>instruction</th><td><code>{cell("step-insn")}</code></td></tr>
</table>
<h3>The event</h3>
<pre id="step-details">{html.escape(cells["step-details"])}</pre>
<h3>The page walk</h3>
<p id="walk-head">{html.escape(walk_head(walk))}</p>
<table class="walk"><thead><tr><th>entry</th><th>index</th><th>entry address</th><th>value</th>
<th>flags</th></tr></thead><tbody id="walk-rows">{walk_rows(walk)}</tbody></table>
<pre id="walk-text">{html.escape(chr(10).join(walk["text"]) if walk else "")}</pre>
<h3>The address space</h3>
{space_html(space)}
<p class="legend">Rows by address: a region (grey; as the address-space map names it), then
its valid pages, each with its leaf PTE. Marked, against the process's previous step:
<span class="added">mapped</span>, <span class="changed">changed</span> (the changed values in
bold), <span class="removed">gone</span> (as it was).</p>
</section>"""


def timeline(steps: list[dict[str, Any]]) -> str:
    """The strip of every step, one mark each (coloured by event kind), the cursor on the
    first; a mark's x is its step number."""
    n = max(len(steps), 1)
    paths: dict[str, list[str]] = {}
    for i, step in enumerate(steps):
        x = (i + 0.5) * WIDTH / n
        paths.setdefault(step["event"], []).append(f"M{x:.1f} 6v22")
    marks = "".join(f'<path class="mark" data-event="{kind}" stroke="{COLOURS.get(kind, "#444")}"'
                    f' d="{"".join(d)}"><title>{kind}</title></path>'
                    for kind, d in paths.items())
    width = max(WIDTH / n, 2)
    return (f'<svg id="timeline" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} 34" '
            f'width="100%" height="34" preserveAspectRatio="none">'
            f'<rect x="0" y="4" width="{WIDTH}" height="26" fill="#f6f6f6"/>{marks}'
            f'<rect id="cursor" x="{0.5 * WIDTH / n - width / 2:.1f}" y="0" '
            f'width="{width:.1f}" height="34" fill="none" stroke="#e00" stroke-width="2"/>'
            f'</svg>')


def table(steps: list[dict[str, Any]]) -> str:
    """Every step in a row: its number, position, event, pid, ring, IRQL, RIP, symbol."""
    rows = "".join(_row(i, s) for i, s in enumerate(steps))
    return ('<table id="all-steps"><thead><tr><th>step</th><th>position</th><th>event</th>'
            '<th>pid</th><th>ring</th><th>IRQL</th><th>RIP</th><th>symbol</th></tr></thead>'
            f'<tbody>{rows}</tbody></table>')


def view(step: dict[str, Any], index: int, count: int, same_as: int | None = None,
         space: Any = None) -> list[Any]:
    """One step as the page's JSON holds it: the panel's texts in ``FIELD_IDS`` order (the
    step's number the script writes itself), then its walk: null, the number of an earlier
    step with the same walk (``same_as``: a #PF's ``page-fault`` step repeats its
    ``exception`` step's), or [head, rows of cells, the refusing row's number, text]; then
    ``space``, its address space's element (SpaceTrack.step).
    Texts, not numbers: a 64-bit value (a PTE with NX, a kernel address) does not fit a
    JavaScript number."""
    cells = fields(step, index, count)
    walk = step["walk"]
    shown: list[Any] | int | None = same_as
    if walk is not None and same_as is None:
        rows = [[lv["name"], str(lv["index"]), f'{lv["entry_address"]:#x}',
                 f'{lv["value"]:#018x}', lv["flags"] or "-"] for lv in walk["levels"]]
        refused = next((i for i, lv in enumerate(walk["levels"])
                        if lv["name"] == walk["refused"]), -1)
        shown = [walk_head(walk), rows, refused, "\n".join(walk["text"])]
    return [*(cells[key] for key in FIELD_IDS), shown, space]


def views(steps: list[dict[str, Any]]):
    """``view`` of each step in turn, a walk the step before showed given by its number."""
    origin = None
    track = SpaceTrack()
    for i, step in enumerate(steps):
        walk = step["walk"]
        same = walk is not None and i > 0 and walk == steps[i - 1]["walk"]
        origin = origin if same else (i if walk is not None else None)
        yield view(step, i, len(steps), origin if same else None, track.step(i, step)[0])


FIELD_IDS = ("step-position", "step-event", "step-pid", "step-tid", "step-name",
             "step-ring", "step-irql", "step-rip", "step-symbol", "step-insn", "step-details")


# -- the address space at each step ----------------------------------------------------------

# A page row's columns (the region rows span them): the leaf PTE's fields (SDM Vol. 3A
# Table 4-20), 1 or 0 for each bit.
SPACE_COLUMNS = ("virtual page", "frame", "PTE", "R/W", "U/S", "NX", "A", "D")
# A PTE's bits that decide a region's protection or state (addrmap): a change to any other
# (the frame, A, D) of a valid page leaves the regions as they were.
_REGION_BITS = int(PTE.P | PTE.RW | PTE.US | PTE.NX)


def page_cells(va: int, pte: int) -> list[str]:
    """A valid page's row: its address, frame, PTE value and the bits R/W, U/S, NX, A, D."""
    return [addr(va, ticks=True), addr((pte & _FRAME) >> 12), f"{pte:#018x}",
            *("1" if pte & bit else "0" for bit in _BITS)]


_FRAME = 0x000F_FFFF_FFFF_F000
_BITS = (PTE.RW, PTE.US, PTE.NX, PTE.A, PTE.D)


def region_cells(r: addrmap.Region) -> list[str]:
    """A region's row: its range, then its protection, state and size as addrmap says."""
    n = r.page_count
    supervisor = " (supervisor only: US=0)" if r.pages and not r.user else ""
    return [f"{addr(r.start, ticks=True)}-{addr(r.end, ticks=True)}",
            f"{r.protection or '-'}, {r.state.value}, {n} page{'s' * (n != 1)}{supervisor}"]


class _Space:
    """One process's map as its steps so far left it (the page's rows)."""

    def __init__(self) -> None:
        self.ptes: dict[int, int] = {}
        self.runs: list[addrmap.VadRun] = []
        self.pages: dict[int, list[str]] = {}       # va -> page_cells
        self.regions: dict[int, list[str]] = {}     # start -> region_cells
        self.last = -1                              # its previous step's number
        self.name = ""


class SpaceTrack:
    """Each step's address-space view (``space_view``): the steps' recorded changes
    (emu.stepsrecord, ``space``) applied in order, per process."""

    def __init__(self) -> None:
        self.spaces: dict[int, _Space] = {}

    def step(self, index: int, step: dict[str, Any]) -> tuple[Any, dict[str, Any] | None]:
        """Step ``index``'s JSON element (null: no address space; the pid alone: nothing
        changed since its previous step; else [pid, 1 on a first step else 0, pages that
        changed as [va, cells or 0: gone], regions likewise as [start, cells or 0], and on
        a first step the process's name]) and
        what ``space_rows`` needs to show it."""
        s = step.get("space")
        if s is None:
            return None, None
        pid = s["pid"]
        if s["first"] or pid not in self.spaces:
            self.spaces[pid] = _Space()
        space = self.spaces[pid]
        space.name = s["name"]
        first, previous = s["first"], space.last
        space.last = index
        pages: dict[int, list[str] | None] = {}
        regions: dict[int, list[str] | None] = {}
        regroup = first or s["runs"] is not None
        for va, pte in s["ptes"].items():
            old = space.ptes.get(va, 0)
            if (old ^ pte) & _REGION_BITS or not pte & PTE.P:
                regroup = True
            if pte:
                space.ptes[va] = pte
            else:
                del space.ptes[va]
            cells = page_cells(va, pte) if pte & PTE.P else None
            if cells != space.pages.get(va):
                pages[va] = cells
        if s["runs"] is not None:
            space.runs = list(s["runs"])
        if regroup:
            pm = addrmap.from_ptes(pid, "", space.ptes, space.runs)
            now = {r.start: region_cells(r) for r in pm.regions}
            for start in space.regions.keys() | now.keys():
                if space.regions.get(start) != now.get(start):
                    regions[start] = now.get(start)
        info = {"pid": pid, "first": first, "previous": previous, "space": space,
                "pages": {va: space.pages.get(va) for va in pages},      # before this step
                "regions": {a: space.regions.get(a) for a in regions}}
        for va, cells in pages.items():
            if cells is None:
                del space.pages[va]
            else:
                space.pages[va] = cells
        for start, cells in regions.items():
            if cells is None:
                del space.regions[start]
            else:
                space.regions[start] = cells
        if not first and not pages and not regions:
            return pid, info
        shown = [pid, int(first), [[va, c or 0] for va, c in sorted(pages.items())],
                 [[a, c or 0] for a, c in sorted(regions.items())]]
        return (shown + [space.name] if first else shown), info


def space_rows(info: dict[str, Any]) -> list[tuple[str, list[str], list[bool]]]:
    """The rows of a step's diagram, by address (a region before its pages): (class, cells,
    which cells differ from the previous step of the process). Class: ``region`` or
    ``page``, plus ``added``, ``changed`` or ``removed`` (gone since that step, its cells
    as they were) when the step changed it; nothing is marked on a process's first step."""
    space = info["space"]
    rows: list[tuple[int, int, str, list[str], list[bool]]] = []
    for order, now, before in ((0, space.regions, info["regions"]),
                               (1, space.pages, info["pages"])):
        kind = ("region", "page")[order]
        keys = now.keys() | {k for k, c in before.items() if c is not None}
        for key in keys:
            cells = now.get(key)
            if info["first"] or key not in before:
                rows.append((key, order, kind, cells, [False] * len(cells)))
            elif cells is None:
                old = before[key]
                rows.append((key, order, f"{kind} removed", old, [False] * len(old)))
            elif before[key] is None:
                rows.append((key, order, f"{kind} added", cells, [True] * len(cells)))
            else:
                rows.append((key, order, f"{kind} changed", cells,
                             [a != b for a, b in zip(cells, before[key], strict=True)]))
    rows.sort(key=lambda r: (r[0], r[1]))
    return [(cls, cells, diff) for _, _, cls, cells, diff in rows]


def space_head(info: dict[str, Any] | None) -> str:
    """One line over the diagram: whose space, its size, what changed since when."""
    if info is None:
        return "no address space at this step (no thread, or its page tables are freed)"
    space = info["space"]
    n, r = len(space.pages), len(space.regions)
    who = (f'process {info["pid"]} "{space.name}": {n} valid page{"s" * (n != 1)} in '
           f'{r} region{"s" * (r != 1)}')
    if info["first"]:
        return f"{who}; its first step here: nothing to compare with"
    pages, regions = info["pages"], info["regions"]
    added = sum(1 for va, c in pages.items() if c is None and va in space.pages)
    removed = sum(1 for va in pages if va not in space.pages)
    changed = len(pages) - added - removed
    if not pages and not regions:
        return f"{who}; no change since step {info['previous']}, its previous step"
    return (f"{who}; since step {info['previous']}, its previous step: {added} mapped, "
            f"{changed} changed, {removed} unmapped; {len(regions)} "
            f"region{'s' * (len(regions) != 1)} changed")


def space_html(info: dict[str, Any] | None) -> str:
    """The diagram's head line and table body as HTML (the script writes the same)."""
    rows = []
    for cls, cells, diff in (space_rows(info) if info is not None else ()):
        if cls.startswith("region"):
            tds = (f'<td{_diff(diff[0])}>{html.escape(cells[0])}</td>'
                   f'<td colspan="{len(SPACE_COLUMNS) - 1}"{_diff(diff[1])}>'
                   f'{html.escape(cells[1])}</td>')
        else:
            tds = "".join(f"<td{_diff(d)}>{html.escape(c)}</td>"
                          for c, d in zip(cells, diff, strict=True))
        rows.append(f'<tr class="{cls}">{tds}</tr>')
    return (f'<p id="space-head">{html.escape(space_head(info))}</p>\n'
            '<div class="space"><table id="space"><thead><tr>'
            + "".join(f"<th>{c}</th>" for c in SPACE_COLUMNS)
            + f'</tr></thead><tbody id="space-rows">{"".join(rows)}</tbody></table></div>')


def _diff(changed: bool) -> str:
    return ' class="diff"' if changed else ""


def space_view(steps: list[dict[str, Any]], index: int) -> tuple[str, list]:
    """Step ``index``'s diagram as the page shows it: (head line, rows of space_rows)."""
    track = SpaceTrack()
    info = None
    for i, step in enumerate(steps[:index + 1]):
        info = track.step(i, step)[1]
    return space_head(info), space_rows(info) if info is not None else []


def _safe(text: str) -> str:
    """JSON text safe inside a <script>: no ``</`` and no ``<!--`` in it."""
    return text.replace("</", "<\\/").replace("<!--", "\\u003c!--")


def fitting(steps: list[dict[str, Any]], budget: int = MAX_BYTES) -> int:
    """How many of the first ``steps`` fit ``budget`` bytes (their JSON and table rows)."""
    return _fit(steps, budget)[0]


# The last _fit: (its steps, their count, the budget, (kept, JSON of each kept step)); the page
# and the line that says what it weighs ask for the same steps' fit one after the other.
_last_fit: list[Any] = [None, -1, -1, None]


def _fit(steps: list[dict[str, Any]], budget: int) -> tuple[int, list[str]]:
    """How many of the first ``steps`` fit ``budget`` bytes, and each one's JSON."""
    if _last_fit[0] is steps and _last_fit[1] == len(steps) and _last_fit[2] == budget:
        return _last_fit[3]
    used, texts = 0, []
    kept = len(steps)
    for i, (step, shown) in enumerate(zip(steps, views(steps), strict=True)):
        text = _safe(json.dumps(shown, separators=(",", ":")))
        used += len(text.encode()) + len(_row(i, step).encode()) + 1
        if used > budget:
            kept = i
            break
        texts.append(text)
    _last_fit[:] = [steps, len(steps), budget, (kept, texts)]
    return kept, texts


def _row(i: int, s: dict[str, Any]) -> str:
    return (f'<tr><td>{i}</td><td>{s["position"]}</td><td>{s["event"]}</td>'
            f'<td>{"-" if s["pid"] is None else s["pid"]}</td><td>{s["ring"]}</td>'
            f'<td>{s["irql"]}</td><td>{s["rip"]:#x}</td><td>{html.escape(s["symbol"])}</td>'
            '</tr>')


def blob(steps: list[dict[str, Any]]) -> str:
    """The steps as the page's JSON (``view`` of each), safe inside a <script>."""
    return _safe(json.dumps(list(views(steps)), separators=(",", ":")))


def page(steps: list[dict[str, Any]], left_out: int, title: str) -> str:
    """The whole page: ``steps`` (a StepRecorder's), ``left_out`` events past the cap;
    only the first steps that fit ``MAX_BYTES`` are embedded, the rest are left out too."""
    kept, texts = _fit(steps, MAX_BYTES)
    left_out += len(steps) - kept
    steps = steps[:kept]
    count = len(steps)
    first = render_step(steps[0], 0, count, SpaceTrack().step(0, steps[0])[1]) if steps \
        else "<p>The run had no events.</p>"
    more = (f'<p id="left-out">The run had {count + left_out:,} events: the first '
            f'{count:,} are here, {left_out:,} were left out (a page holds at most '
            f'{MAX_STEPS:,} steps and {MAX_BYTES:,} bytes of them).</p>') if left_out else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>{html.escape(title)}</title>
<style>{_CSS}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p id="summary">{count:,} steps, one per event of the run.</p>
{more}
<nav id="controls"><button id="prev" type="button">&#8592; Previous</button>
<input id="slider" type="range" min="0" max="{max(count - 1, 0)}" value="0" step="1"
 aria-label="step">
<button id="next" type="button">Next &#8594;</button>
<span class="keys">keys: &#8592; &#8594; Home End; link to a step: #step=N</span></nav>
<noscript><p class="noscript">JavaScript is off: this is the first step; every step is
in the table below.</p></noscript>
{timeline(steps)}
{first}
<h2>Every step</h2>
{table(steps)}
<script type="application/json" id="steps-data">[{",".join(texts)}]</script>
<script>{_JS}</script>
</body></html>
"""


_CSS = """body{font:14px/1.4 system-ui,sans-serif;margin:1em 2em;color:#222}
table{border-collapse:collapse}td,th{padding:2px 8px;text-align:left;vertical-align:top}
table.now th{color:#666;font-weight:normal}#all-steps td,#all-steps th,table.walk td,
table.walk th{border-bottom:1px solid #ddd;font-family:monospace}tr.refused{background:#fdd}
pre{background:#f6f6f6;padding:6px}nav{margin:8px 0}#slider{width:50%;vertical-align:middle}
.keys{color:#666;margin-left:1em}.noscript{color:#a00}
div.space{max-height:26em;overflow:auto;position:relative;border:1px solid #ddd}
table#space td,table#space th{font-family:monospace;padding:1px 6px;white-space:nowrap}
table#space thead th{position:sticky;top:0;background:#fff}
tr.region td{background:#eee;color:#444}.added,tr.added td{background:#cfc}
.changed,tr.changed td{background:#ffc}.removed,tr.removed td{background:#fdd;
text-decoration:line-through}td.diff{font-weight:bold}"""

# The script: shows step i (the same fields as render_step, formatted as value_text does),
# keeps the slider, the cursor and the URL's #step=N in step.
_JS = r"""(function(){
"use strict";
var steps=JSON.parse(document.getElementById("steps-data").textContent);
var n=steps.length,at=0,W=""" + str(WIDTH) + r""";
var IDS=""" + json.dumps(list(FIELD_IDS)) + r""";
function set(id,t){document.getElementById(id).textContent=t;}
var SP=IDS.length+1,NCOL=""" + str(len(SPACE_COLUMNS)) + r""",cache={};
function pidOf(x){return typeof x==="number"?x:x[0];}
function apply(c,d,olds){
 if(d[1]){c.pages=new Map();c.regions=new Map();c.name=d[4];}
 [["pages",2],["regions",3]].forEach(function(kv){var m=c[kv[0]];
  d[kv[1]].forEach(function(e){
   if(olds&&!olds[kv[0]].has(e[0])){olds[kv[0]].set(e[0],m.has(e[0])?m.get(e[0]):null);}
   if(e[1]===0){m.delete(e[0]);}else{m.set(e[0],e[1]);}});});}
function spaceAt(i){
 var x=steps[i][SP];if(x===null){return null;}
 var p=pidOf(x),c=cache[p];
 if(!c||c.at>i||(c.at===i&&!c.olds)){
  c=cache[p]={at:-1,last:-1,pages:new Map(),regions:new Map(),olds:null};}
 if(c.at<i){
  for(var k=c.at+1;k<i;k++){var y=steps[k][SP];
   if(y!==null&&pidOf(y)===p){if(typeof y!=="number"){apply(c,y,null);}c.last=k;}}
  c.prev=c.last;c.first=typeof x!=="number"&&x[1]===1;
  c.olds={pages:new Map(),regions:new Map()};
  if(typeof x!=="number"){apply(c,x,c.olds);}
  c.at=i;c.last=i;}
 return c;}
function spaceRows(c){
 var rows=[];
 [["regions",0,"region"],["pages",1,"page"]].forEach(function(k){
  var now=c[k[0]],before=c.olds[k[0]],keys=new Set(now.keys());
  before.forEach(function(v,key){if(v!==null){keys.add(key);}});
  keys.forEach(function(key){var cells=now.get(key),diff,cls=k[2];
   if(c.first||!before.has(key)){diff=cells.map(function(){return false;});}
   else if(cells===undefined){cells=before.get(key);cls+=" removed";
    diff=cells.map(function(){return false;});}
   else if(before.get(key)===null){cls+=" added";diff=cells.map(function(){return true;});}
   else{cls+=" changed";diff=cells.map(function(v,j){return v!==before.get(key)[j];});}
   rows.push([key,k[1],cls,cells,diff]);});});
 rows.sort(function(a,b){return a[0]-b[0]||a[1]-b[1];});
 return rows;}
function spaceHead(c,p){
 if(c===null){return "no address space at this step (no thread, or its page tables are freed)";}
 var n=c.pages.size,r=c.regions.size;
 var who="process "+p+" \""+c.name+"\": "+n+" valid page"+(n!==1?"s":"")+" in "+r+
  " region"+(r!==1?"s":"");
 if(c.first){return who+"; its first step here: nothing to compare with";}
 var added=0,removed=0,changed=0;
 c.olds.pages.forEach(function(v,va){if(!c.pages.has(va)){removed++;}
  else if(v===null){added++;}else{changed++;}});
 var rc=c.olds.regions.size;
 if(!c.olds.pages.size&&!rc){return who+"; no change since step "+c.prev+", its previous step";}
 return who+"; since step "+c.prev+", its previous step: "+added+" mapped, "+changed+
  " changed, "+removed+" unmapped; "+rc+" region"+(rc!==1?"s":"")+" changed";}
function showSpace(i){
 var c=spaceAt(i),body=document.getElementById("space-rows");
 set("space-head",spaceHead(c,c===null?null:pidOf(steps[i][SP])));
 while(body.firstChild){body.removeChild(body.firstChild);}
 if(c===null){return;}
 spaceRows(c).forEach(function(row){var tr=document.createElement("tr");tr.className=row[2];
  row[3].forEach(function(v,j){var td=document.createElement("td");td.textContent=v;
   if(row[4][j]){td.className="diff";}
   if(row[3].length===2&&j===1){td.colSpan=NCOL-1;}
   tr.appendChild(td);});
  body.appendChild(tr);});
 var hit=body.querySelector("tr.added,tr.changed,tr.removed"),box=body.closest("div");
 if(hit){box.scrollTop=Math.max(0,hit.offsetTop-box.clientHeight/3);}}
function show(i){
 if(!n){return;}
 i=Math.max(0,Math.min(n-1,i));at=i;var s=steps[i];
 set("step-index",i+" of "+(n-1));IDS.forEach(function(id,k){set(id,s[k]);});
 var w=s[IDS.length],body=document.getElementById("walk-rows");
 if(typeof w==="number"){w=steps[w][IDS.length];}
 while(body.firstChild){body.removeChild(body.firstChild);}
 if(w){
  set("walk-head",w[0]);
  w[1].forEach(function(cells,r){var tr=document.createElement("tr");
   if(r===w[2]){tr.className="refused";}
   cells.forEach(function(c){var td=document.createElement("td");td.textContent=c;
    tr.appendChild(td);});
   body.appendChild(tr);});
  set("walk-text",w[3]);
 }else{
  set("walk-head","no page walk at this step (only a #PF's steps have one)");
  set("walk-text","");}
 showSpace(i);
 document.getElementById("slider").value=String(i);
 var c=document.getElementById("cursor"),cw=parseFloat(c.getAttribute("width"));
 c.setAttribute("x",((i+0.5)*W/n-cw/2).toFixed(1));
 var h="#step="+i;if(location.hash!==h){history.replaceState(null,"",h);}}
function fromHash(){var m=/^#step=(\d+)$/.exec(location.hash);return m?parseInt(m[1],10):0;}
document.getElementById("prev").addEventListener("click",function(){show(at-1);});
document.getElementById("next").addEventListener("click",function(){show(at+1);});
document.getElementById("slider").addEventListener("input",function(e){
 show(parseInt(e.target.value,10));});
document.addEventListener("keydown",function(e){
 if(e.target&&e.target.id==="slider"){return;}
 var to={ArrowLeft:at-1,ArrowRight:at+1,Home:0,End:n-1}[e.key];
 if(to!==undefined){e.preventDefault();show(to);}});
window.addEventListener("hashchange",function(){show(fromHash());});
show(fromHash());
})();"""
