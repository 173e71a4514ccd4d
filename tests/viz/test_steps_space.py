"""The steppable page's address-space diagram (docs/report.md, "Steppable pages", "The
address space"): what the recorder reads at each event is the live map at that moment, and
the page, stepped in headless Chromium, shows it with the entries that changed marked,
against the recorder's own record of the same run."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scenarios"))
import tour_browser  # noqa: E402 - the suite's headless Chromium helpers

from emu.fmt import addr  # noqa: E402
from emu.machine import Machine  # noqa: E402
from emu.nt.process import ProcessState  # noqa: E402
from emu.scenarios import registry  # noqa: E402
from emu.scenarios.stage import play  # noqa: E402
from emu.stepsrecord import StepRecorder, _process  # noqa: E402
from emu.viz import addrmap  # noqa: E402
from emu.viz import steps as steps_page  # noqa: E402

# After each action: the diagram's head line and its rows (class, cells, which are bold).
PROBE = r"""<script>(function(){
function snap(){return {index:document.getElementById("step-index").textContent,
 head:document.getElementById("space-head").textContent,
 rows:[].map.call(document.querySelectorAll("#space-rows tr"),function(tr){
  return [tr.className,[].map.call(tr.cells,function(td){return td.textContent;}),
   [].map.call(tr.cells,function(td){return td.className==="diff";})];})};}
var out={start:snap(),after:[]};
%s.forEach(function(a){document.getElementById(a).click();out.after.push(snap());});
out.resources=performance.getEntriesByType("resource").map(function(e){return e.name;});
var pre=document.createElement("pre");pre.id="steps-report";
pre.textContent=JSON.stringify(out);document.body.appendChild(pre);})();</script>"""


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """One headless Chromium, offline, for the module's pages (tour_browser.Browser)."""
    b = tour_browser.Browser(tmp_path_factory.mktemp("browser"), tour_browser.OFFLINE)
    yield b
    b.close()


def browse(browser, text: str, folder: Path, step: int, clicks: list[str],
           name: str) -> dict:
    """What the page ``text`` shows at ``#step=step`` and after each click, offline."""
    return tour_browser.probed(browser, text, folder, name, PROBE % json.dumps(clicks),
                               f"#step={step}")


def python_view(steps: list, index: int) -> dict:
    """Step ``index``'s diagram as emu.viz.steps renders it (the first step's, server-side)."""
    head, rows = steps_page.space_view(steps, index)
    return {"head": head, "rows": [[cls, cells, diff] for cls, cells, diff in rows]}


def page_cells(va: int, pte: int) -> list[str]:
    """A valid page's row from its PTE's value, worked out here bit by bit (SDM Table 4-20)."""
    return [addr(va, ticks=True), addr(pte >> 12 & (1 << 40) - 1), f"{pte:#018x}",
            *(str(pte >> bit & 1) for bit in (1, 2, 63, 5, 6))]


def test_the_recorded_space_is_the_live_map_at_every_step(apps):
    # At every step the map made of what the recorder read (emu.viz.addrmap.from_ptes of
    # the changes so far) is the map addrmap.capture reads from the machine at that moment.
    checked = []

    class Checked(StepRecorder):
        state: dict = {}

        def record(self, event, d):
            out = super().record(event, d)
            space = out["space"]
            if space is None:
                return out
            ptes, runs = self.state.setdefault(space["pid"], ({}, []))
            if space["first"]:
                ptes.clear()
            for va, pte in space["ptes"].items():
                if pte:
                    ptes[va] = pte
                else:
                    del ptes[va]
            if space["runs"] is not None:
                runs[:] = space["runs"]
            proc = _process(self.executive, space["pid"]) or d["process"]
            if proc.state is ProcessState.TERMINATED:
                return out            # its tables wait for the CPU to leave them: no capture
            live = addrmap.capture(proc)
            assert addrmap.from_ptes(proc.pid, proc.name, ptes, runs) == live, out["position"]
            checked.append((out["event"], len(live.pages)))
            return out

    machine = Machine(64 << 20)
    try:
        Checked.attach(machine)
        machine.spawn(str(apps / "hotcold"), [])
        machine.run()
    finally:
        machine.close()
    assert len(checked) > 1000
    assert {"page-fault", "exception", "process-create", "process-exit"} <= \
        {e for e, _ in checked}
    assert max(n for _, n in checked) > 600           # the 608 pages it touched, and more


@pytest.fixture(scope="module")
def paging(tmp_path_factory, monkeypatch_module):
    """The paging-to-disk scenario's steppable page and the recorder's steps behind it."""
    recorders = []
    attach = StepRecorder.attach.__func__

    def keep(cls, machine, *args, **kwargs):
        recorder = attach(cls, machine, *args, **kwargs)
        recorders.append(recorder)
        return recorder
    monkeypatch_module.setattr(StepRecorder, "attach", classmethod(keep))
    registry.load()
    result = play(registry.find("paging-to-disk"), None, steps=True)
    assert result.ok and len(recorders) == len(result.acts) == 1
    steps = recorders[0].steps
    kept = steps_page.fitting(steps)
    return result.acts[0].steps, steps[:kept], tmp_path_factory.mktemp("space")


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def _changes(steps: list):
    """Each step's page changes as the recorder read them: (index, va, old PTE, new PTE)."""
    state: dict[int, dict[int, int]] = {}
    for i, step in enumerate(steps):
        space = step["space"]
        if space is None:
            continue
        ptes = state.setdefault(space["pid"], {})
        if space["first"]:
            ptes.clear()
            continue
        for va, pte in space["ptes"].items():
            yield i, va, ptes.get(va, 0), pte
            ptes[va] = pte


def _start(row: list) -> int:
    return int(row[1][0].split("-")[0].replace("'", ""), 16)


def _end(row: list) -> int:
    return int(row[1][0].split("-")[1].replace("'", ""), 16)


def _highlighted(rows: list) -> set[str]:
    return {cells[0] for cls, cells, _ in rows if cls.startswith("page ")}


def test_a_demand_zero_fault_marks_the_page_it_mapped_and_stepping_back_moves_it(paging,
                                                                                 browser):
    text, steps, folder = paging
    # The first page mapped where nothing was: a demand-zero fault's page-fault step.
    i, va, old, pte = next(c for c in _changes(steps) if c[2] == 0 and c[3] & 1)
    assert steps[i]["event"] == "page-fault" and steps[i]["resolution"] == "resolved"
    report = browse(browser, text, folder, i, ["prev", "next"], "mapped")
    assert report["resources"] == []
    at, back, again = report["start"], report["after"][0], report["after"][1]
    row = next(r for r in at["rows"] if r[1][0] == addr(va, ticks=True))
    assert row == ["page added", page_cells(va, pte), [True] * 8]
    proc = f'process {steps[i]["space"]["pid"]} "{steps[i]["space"]["name"]}"'
    assert at["head"].startswith(proc)
    # The page shows what emu.viz.steps renders of the recorder's steps, row for row.
    assert at == {"index": f"{i} of {len(steps) - 1}", **python_view(steps, i)}
    # One step back: the page is not there yet; what is marked is that step's own changes.
    assert back["index"] == f"{i - 1} of {len(steps) - 1}"
    assert addr(va, ticks=True) not in [r[1][0] for r in back["rows"]]
    assert back == {"index": back["index"], **python_view(steps, i - 1)}
    marked = {addr(v, ticks=True) for j, v, o, n in _changes(steps) if j == i - 1 and (o | n) & 1}
    assert _highlighted(back["rows"]) == marked
    assert again == at


def test_a_page_out_marks_the_page_gone_and_its_region_in_transition(paging, browser):
    text, steps, folder = paging
    # A valid page whose PTE became a software PTE: trimmed from its working set.
    i, va, old, pte = next(c for c in _changes(steps) if c[2] & 1 and c[3] and not c[3] & 1)
    at = browse(browser, text, folder, i, [], "out")["start"]
    assert at == {"index": f"{i} of {len(steps) - 1}", **python_view(steps, i)}
    row = next(r for r in at["rows"] if r[1][0] == addr(va, ticks=True))
    assert row[0] == "page removed" and row[1][2] == f"{old:#018x}"
    # The region that holds it now says where it went (its range: "0x...-0x...").
    region = next(r for r in at["rows"] if r[0] in ("region", "region added", "region changed")
                  and _start(r) <= va < _end(r))
    assert region[0] != "region" and any(w in region[1][1] for w in ("in transition",
                                                                      "in the pagefile"))
    assert "unmapped" in at["head"] and not at["head"].endswith("0 unmapped")


def test_without_javascript_the_first_step_shows_its_diagram(paging):
    text, steps, folder = paging
    page = folder / "plain.html"
    page.write_text(text)
    shown = tour_browser.without_script(
        folder, page.as_uri(),
        '{head:d.getElementById("space-head").textContent,'
        'rows:[].map.call(d.querySelectorAll("#space-rows tr"),function(tr){'
        'return [tr.className,[].map.call(tr.cells,function(td){return td.textContent;}),'
        '[].map.call(tr.cells,function(td){return td.className==="diff";})];})}')
    first = python_view(steps, 0)
    assert shown == first and len(first["rows"]) > 5
    assert first["head"].endswith("its first step here: nothing to compare with")


def test_a_page_stays_small_with_its_maps(paging):
    text, steps, _ = paging
    assert len(text.encode()) < 2 * 1024 * 1024
    data = json.loads(re.search(r'id="steps-data">(.*?)</script>', text, re.S).group(1))
    # A full map only on a process's first step; a step that changed nothing is its pid.
    full = [d[-1] for d in data if isinstance(d[-1], list) and d[-1][1] == 1]
    assert len(full) == len({s["space"]["pid"] for s in steps if s["space"]})
    assert sum(isinstance(d[-1], int) for d in data) > 0
