"""The steppable page of a run (``emu run --html FILE``): one self-contained HTML file, its
steps the run's events (emu.stepsrecord), stepped with buttons, the keyboard and a slider.

The page carries its steps as one JSON blob (``<script type="application/json"
id="steps-data">``) and a small inline script that shows one step at a time; nothing is
fetched (no external script, font or image: CSS, SVG and JS are inline). Without JavaScript
the first step is shown as the page was written (``render_step``: the script fills in the
same fields the same way) and the table of every step below it. docs/report.md,
"Steppable pages", is this module in words.
"""

from __future__ import annotations

import html
import json
from typing import Any

from emu.stepsrecord import MAX_STEPS, own_fields

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


def render_step(step: dict[str, Any], index: int, count: int) -> str:
    """The step panel as HTML, filled in for ``step`` (the page's first step, shown
    without JavaScript; the script rewrites the same elements)."""
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


def view(step: dict[str, Any], index: int, count: int, same_as: int | None = None) -> list[Any]:
    """One step as the page's JSON holds it: the panel's texts in ``FIELD_IDS`` order (the
    step's number the script writes itself), then its walk: null, the number of an earlier
    step with the same walk (``same_as``: a #PF's ``page-fault`` step repeats its
    ``exception`` step's), or [head, rows of cells, the refusing row's number, text].
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
    return [*(cells[key] for key in FIELD_IDS), shown]


def views(steps: list[dict[str, Any]]):
    """``view`` of each step in turn, a walk the step before showed given by its number."""
    origin = None
    for i, step in enumerate(steps):
        walk = step["walk"]
        same = walk is not None and i > 0 and walk == steps[i - 1]["walk"]
        origin = origin if same else (i if walk is not None else None)
        yield view(step, i, len(steps), origin if same else None)


FIELD_IDS = ("step-position", "step-event", "step-pid", "step-tid", "step-name",
             "step-ring", "step-irql", "step-rip", "step-symbol", "step-insn", "step-details")


def _safe(text: str) -> str:
    """JSON text safe inside a <script>: no ``</`` and no ``<!--`` in it."""
    return text.replace("</", "<\\/").replace("<!--", "\\u003c!--")


def fitting(steps: list[dict[str, Any]], budget: int = MAX_BYTES) -> int:
    """How many of the first ``steps`` fit ``budget`` bytes (their JSON and table rows)."""
    used = 0
    for i, (step, shown) in enumerate(zip(steps, views(steps), strict=True)):
        used += len(_safe(json.dumps(shown, separators=(",", ":"))).encode()) + \
            len(_row(i, step).encode()) + 1
        if used > budget:
            return i
    return len(steps)


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
    kept = fitting(steps)
    left_out += len(steps) - kept
    steps = steps[:kept]
    count = len(steps)
    first = render_step(steps[0], 0, count) if steps else "<p>The run had no events.</p>"
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
<script type="application/json" id="steps-data">{blob(steps)}</script>
<script>{_JS}</script>
</body></html>
"""


_CSS = """body{font:14px/1.4 system-ui,sans-serif;margin:1em 2em;color:#222}
table{border-collapse:collapse}td,th{padding:2px 8px;text-align:left;vertical-align:top}
table.now th{color:#666;font-weight:normal}#all-steps td,#all-steps th,table.walk td,
table.walk th{border-bottom:1px solid #ddd;font-family:monospace}tr.refused{background:#fdd}
pre{background:#f6f6f6;padding:6px}nav{margin:8px 0}#slider{width:50%;vertical-align:middle}
.keys{color:#666;margin-left:1em}.noscript{color:#a00}"""

# The script: shows step i (the same fields as render_step, formatted as value_text does),
# keeps the slider, the cursor and the URL's #step=N in step.
_JS = r"""(function(){
"use strict";
var steps=JSON.parse(document.getElementById("steps-data").textContent);
var n=steps.length,at=0,W=""" + str(WIDTH) + r""";
var IDS=""" + json.dumps(list(FIELD_IDS)) + r""";
function set(id,t){document.getElementById(id).textContent=t;}
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
