"""The picture page of a scenario: one self-contained HTML file, SVG inline, no script.

For each act: the address-space diagram (emu.viz.addrmap: virtual pages of each process ->
physical frames, one colour per process), the driver images when the act shows them, the
kernel half every PML4 shares (emu.scenarios.pictures), and the timeline
(emu.scenarios.timeline). Then the checks and the narration. Nothing is fetched from the
network; a browser opened on the file from disk shows everything.

    page(result)          -> the HTML of one scenario (linking its acts' steppable pages)
    index(results, names) -> a page linking the scenarios' pages, with their verdicts
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from emu.scenarios.pictures import render_kernel_svg
from emu.scenarios.stage import ActRecord, ScenarioResult, failures
from emu.scenarios.timeline import render_timeline
from emu.viz.addrmap import render_svg

STYLE = """
body { font-family: sans-serif; margin: 24px; color: #222222; max-width: 1280px; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 32px; } h3 { font-size: 15px; }
blockquote { border-left: 4px solid #1f5fa8; margin: 12px 0; padding: 4px 12px;
             background: #f4f7fb; }
pre { background: #f6f6f6; padding: 12px; overflow-x: auto; font-size: 12px; }
.held { color: #1e8449; } .failed { color: #c0392b; font-weight: bold; }
.figure { overflow-x: auto; border: 1px solid #dddddd; margin: 8px 0 16px 0; }
li { margin: 6px 0; } .observed { color: #555555; font-size: 13px; }
"""


def _svg_inline(svg: str) -> str:
    """An SVG document without its XML declaration, ready to sit in HTML."""
    return svg[svg.index("<svg"):] if "<svg" in svg else ""


def _figure(heading: str, svg: str) -> list[str]:
    return [f"<h3>{escape(heading)}</h3>", f'<div class="figure">{svg}</div>'] if svg else []


def steps_file(name: str, number: int) -> str:
    """The file of scenario ``name``'s act ``number``'s steppable page (docs/tour.md):
    NAME-steps.html for the first act, NAME-steps-N.html for act N from the second on."""
    return f"{name}-steps.html" if number == 1 else f"{name}-steps-{number}.html"


def act_html(act: ActRecord, number: int, name: str = "") -> list[str]:
    """The pictures of one act (of scenario ``name``: the link to its steppable page)."""
    colour_of = {lane.ident: lane.colour for lane in act.lanes}
    parts = [f'<section class="act"><h2>Act {number}: {escape(act.title)}</h2>']
    if act.steps is not None:
        parts.append(f'<p class="steps"><a href="{escape(steps_file(name, number))}">'
                     "Step through this run</a> (every event of this act's machine, one "
                     "step at a time)</p>")
    drawn = [pm for pm in act.maps if pm.pages or pm.regions]
    if act.focus and drawn:
        parts += _figure("Address spaces: virtual pages -> physical frames",
                         _svg_inline(render_svg(drawn, focus=act.focus,
                                                boundaries=act.boundaries, hits=act.hits)))
    if act.kernel_map is not None and act.kernel_map.pages:
        parts += _figure("Driver images in the shared kernel half",
                         _svg_inline(render_svg([act.kernel_map])))
    parts += _figure("The kernel half", render_kernel_svg(act.halves, colour_of))
    parts += _figure("Timeline", render_timeline(act.marks, act.lanes,
                                                 f"Act {number}: {act.title}"))
    if act.text:
        parts.append(f"<pre>{escape(act.text)}</pre>")
    parts.append("</section>")
    return parts


def page(result: ScenarioResult) -> str:
    """The whole page of one played scenario."""
    sc = result.scenario
    verdict = ('<p class="held">The claim holds.</p>' if result.ok else
               '<p class="failed">FAILED: ' + escape("; ".join(failures(result))) + "</p>")
    checks = "".join(
        f'<li class="{"held" if c.held else "failed"}">{"held" if c.held else "FAILED"}: '
        f'{escape(c.claim)}<br/><span class="observed">{escape(c.observed)}</span></li>'
        for c in result.checks)
    body = [f"<h1>{escape(sc.name)}</h1>", f"<p>{escape(sc.title)}</p>",
            f"<blockquote>{escape(sc.claim)}</blockquote>",
            f"<p>Guest sources: {escape(', '.join(sc.sources))}</p>", verdict,
            f"<h2>Checks, from the machine's state</h2><ul>{checks}</ul>"]
    for i, act in enumerate(result.acts, 1):
        body += act_html(act, i, sc.name)
    body.append("<h2>Narration</h2><pre>" + escape("\n".join(result.lines)) + "</pre>")
    return _document(f"emu tour: {sc.name}", body)


INTRODUCTION = (
    "The seed (user-mode-and-kernel-mode.md) makes a handful of claims about user mode "
    "and kernel mode. Each page below shows one of them happen on a live machine: real "
    "x86-64 instructions of small guest apps and drivers, page tables in guest RAM, rings "
    "0 and 3, interrupts, DPCs, a pagefile. Then the claim is checked against the "
    "machine's state (page tables, the PFN database, exit statuses, bug check parameters, "
    "bytes in guest memory), and the page says whether it held.",
    "Each page has, for every act (one machine run): the address spaces (each process's "
    "virtual pages, the physical frames their PTEs name, one arrow per page), the kernel "
    "half every process's PML4 shares, and a timeline (a lane per process, ring 3 above "
    "ring 0; left to right the order of events; hover a mark for its instruction clock). "
    "Then the checks and the narration, word for word as `emu scenario run` prints it.",
)


# The index's word on the steppable pages (docs/report.md, "Steppable pages"), when the
# acts have them (`emu scenario run --out DIR` records them).
STEPPING = (
    "Every act also has a steppable page (\"(step through)\" below, \"Step through this "
    "run\" on a scenario's page): the act's run one event at a time, the same events "
    "`emu scenario run --events` logs. At each step: the process, ring, IRQL and "
    "instruction; the event's fields; a page fault's walk, level by level; the process's "
    "address space as its page tables and VADs held it then (regions, valid pages and "
    "their PTEs: frame, R/W, U/S, NX, A, D), with what changed since that process's "
    "previous step marked (a page mapped, a PTE changed, a page gone); the cursor on the "
    "act's timeline. Step with the Previous and Next buttons, the Left and Right arrow "
    "keys (Home: the first step, End: the last) or the slider; add #step=N to a page's "
    "address to open it at step N (steps count from 0). Without JavaScript a page shows "
    "its first step and a table of every step."
)


def index(results: Sequence[ScenarioResult], files: Sequence[str]) -> str:
    """A page introducing the tour, then listing the scenarios played, their verdicts, and
    links to their pages."""
    rows = "".join(
        f'<li><a href="{escape(f)}">{escape(r.scenario.name)}</a>: '
        f"{escape(r.scenario.title)} "
        f'<span class="{"held" if r.ok else "failed"}">({"holds" if r.ok else "FAILED"})'
        f"</span>{_steps_link(r)}</li>" for r, f in zip(results, files, strict=True))
    stepped = any(r.acts and r.acts[0].steps is not None for r in results)
    intro = [f'<p class="intro">{escape(text)}</p>'
             for text in (*INTRODUCTION, *((STEPPING,) if stepped else ()))]
    held = sum(r.ok for r in results)
    return _document("emu tour", ["<h1>The tour: the seed's claims on a live machine</h1>",
                                  *intro, f"<h2>The scenarios: {held} of {len(results)} "
                                  "claims hold</h2>", f"<ul>{rows}</ul>"])


def _steps_link(result: ScenarioResult) -> str:
    """The index's link to a scenario's first steppable page, when its acts were recorded."""
    if not result.acts or result.acts[0].steps is None:
        return ""
    return f' <a class="steps" href="{escape(steps_file(result.scenario.name, 1))}">' \
        "(step through)</a>"


def _document(title: str, body: list[str]) -> str:
    return "\n".join(["<!DOCTYPE html>", '<html lang="en">', "<head>",
                      '<meta charset="utf-8"/>', f"<title>{escape(title)}</title>",
                      f"<style>{STYLE}</style>", "</head>", "<body>", *body, "</body>",
                      "</html>", ""])
