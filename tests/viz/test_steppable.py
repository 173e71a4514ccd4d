"""``emu run --html FILE``: the steppable page (docs/report.md, "Steppable pages"), opened
in headless Chromium with the network off, stepped with the buttons, the keys, the slider
and a deep link, and checked against the machine's own record of the same run: its event
log (``--events``) and the debugger's ``walk`` at the fault."""

from __future__ import annotations

import html
import json
import re
import subprocess
import sys
from pathlib import Path

import emurun
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scenarios"))
import tour_browser  # noqa: E402 - the suite's headless Chromium helpers

from emu.machine import Machine  # noqa: E402
from emu.stepsrecord import MAX_STEPS, StepRecorder  # noqa: E402
from emu.viz import steps as steps_page  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent.parent
DRIVERS = ROOT / "guest" / "build" / "drivers"
IDS = ("step-index", *steps_page.FIELD_IDS)

# The test's probe, appended to a copy of the page after its own script: does each action,
# then reports what the page shows after each one.
PROBE = r"""<script>(function(){
var IDS=%s;
function snap(){var o={};IDS.forEach(function(id){o[id]=document.getElementById(id).textContent;});
 o.hash=location.hash;o.slider=document.getElementById("slider").value;
 o.cursor=document.getElementById("cursor").getAttribute("x");
 o.walk_head=document.getElementById("walk-head").textContent;
 o.walk_text=document.getElementById("walk-text").textContent;
 o.rows=[].map.call(document.querySelectorAll("#walk-rows tr"),function(tr){
  return [].map.call(tr.cells,function(td){return td.textContent;});});
 o.refused=[].map.call(document.querySelectorAll("#walk-rows tr.refused"),function(tr){
  return tr.cells[0].textContent;});
 return o;}
var out={start:snap(),after:[]};
%s.forEach(function(a){
 if(a[0]==="click"){document.getElementById(a[1]).click();}
 else if(a[0]==="key"){document.body.dispatchEvent(new KeyboardEvent("keydown",
  {key:a[1],bubbles:true}));}
 else{var s=document.getElementById("slider");s.value=String(a[1]);
  s.dispatchEvent(new Event("input",{bubbles:true}));}
 out.after.push(snap());});
out.resources=performance.getEntriesByType("resource").map(function(e){return e.name;});
var pre=document.createElement("pre");pre.id="steps-report";
pre.textContent=JSON.stringify(out);document.body.appendChild(pre);})();</script>"""


def emu(*args, stdin=None):
    """``python -m emu ARGS``, in a fork of this process (tests/emurun.py)."""
    return emurun.emu(*args, input=stdin, cwd=ROOT, timeout=300)


def emu_process(*args):
    """``python -m emu ARGS`` in a subprocess: a fresh interpreter (its own hash seed)."""
    return subprocess.run([sys.executable, "-m", "emu", *map(str, args)], capture_output=True,
                          text=True, timeout=300, cwd=ROOT)


def slow_neither(apps) -> list:
    """The seed's DPC: slowread's request is finished in victim's context."""
    return ["--driver", DRIVERS / "slowneither.sys", apps / "slowread", r"\Device\SlowNeither",
            "--", apps / "victim"]


@pytest.fixture(scope="module")
def run(apps, tmp_path_factory):
    """The slowneither run's page and its event log (the same run)."""
    folder = tmp_path_factory.mktemp("steps")
    page, log = folder / "run.html", folder / "run.jsonl"
    done = emu("run", "--html", page, "--events", log, *slow_neither(apps))
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in log.read_text().splitlines()]
    return page, records, done.stderr, folder


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """One headless Chromium, offline, for the module's pages (tour_browser.Browser)."""
    b = tour_browser.Browser(tmp_path_factory.mktemp("browser"), tour_browser.OFFLINE)
    yield b
    b.close()


def browse(browser, page: Path, folder: Path, actions: list, fragment: str = "",
           name: str = "probed") -> dict:
    """What the page shows at load and after each action, in headless Chromium, offline."""
    probe = PROBE % (json.dumps(list(IDS)), json.dumps(actions))
    return tour_browser.probed(browser, page.read_text(), folder, name, probe, fragment)


def shows(record: dict, index: int, count: int, seen: dict) -> None:
    """``seen`` (the page) shows ``record`` (the event log's) as step ``index``."""
    assert seen["step-index"] == f"{index} of {count - 1}"
    assert seen["step-position"] == str(record["position"])
    assert seen["step-event"] == record["event"]
    assert seen["step-pid"] == ("-" if record["pid"] is None else str(record["pid"]))
    assert seen["step-ring"] == str(record["ring"])
    assert seen["step-irql"] == str(record["irql"])
    assert seen["step-rip"] == f"{record['rip']:#x}"
    assert seen["hash"] == f"#step={index}" and seen["slider"] == str(index)


def test_stepping_shows_each_event_as_the_log_records_it(run, browser):
    page, records, stderr, folder = run
    n = len(records)
    dpc = next(i for i, r in enumerate(records) if r["event"] == "dpc")
    actions = [["click", "next"], ["click", "next"], ["click", "prev"], ["key", "ArrowRight"],
               ["key", "ArrowRight"], ["key", "ArrowLeft"], ["key", "End"], ["key", "Home"],
               ["key", "ArrowLeft"], ["slide", dpc]]
    report = browse(browser, page, folder, actions)
    expected = [1, 2, 1, 2, 3, 2, n - 1, 0, 0, dpc]
    assert report["resources"] == []                  # nothing fetched
    shows(records[0], 0, n, {**report["start"], "hash": "#step=0"})
    for index, seen in zip(expected, report["after"], strict=True):
        shows(records[index], index, n, seen)
    # The DPC runs at DISPATCH_LEVEL in victim's context: the page says so.
    at_dpc = report["after"][-1]
    assert (at_dpc["step-name"], at_dpc["step-irql"]) == ("victim", "2")
    assert at_dpc["step-symbol"] == "slowneither.sys!DpcForIsr+0x0" or \
        "routine_symbol = slowneither.sys!DpcForIsr+0x0" in at_dpc["step-details"]
    # The cursor moved: a step's mark is at its place on the strip.
    assert report["after"][6]["cursor"] != report["after"][7]["cursor"]
    assert f"{n:,} steps" in stderr and f"written to {page}" in stderr


def test_a_deep_link_opens_at_its_step_with_the_fault_walk(run, browser):
    page, records, _, folder = run
    fault = next(i for i, r in enumerate(records) if r["event"] == "exception")
    report = browse(browser, page, folder, [["click", "next"]], f"#step={fault}", "deep")
    start = report["start"]
    shows(records[fault], fault, len(records), start)
    r = records[fault]
    assert start["walk_head"] == (f"{r['access']} of {r['address']:#x} at ring 3: not present:"
                                  f" P=0 in PML4E (error code {r['error_code']:#x}, refused by"
                                  f" PML4E)")
    cr3 = next(x["new"] for x in records[:fault] if x["event"] == "cr3-load" and
               x["new_pid"] == r["pid"])
    index = r["address"] >> 39 & 0x1FF
    assert start["rows"] == [["PML4E", str(index), f"{cr3 + index * 8:#x}",
                              "0x0000000000000000", "-"]]
    assert start["refused"] == ["PML4E"]
    # The walk is the debugger's `walk` at that fault, line for line.
    debugged = emu("debug", *slow_neither(ROOT / "guest" / "build" / "apps"),
                   stdin=f"catch page-fault\ncontinue\nwalk {r['address']:#x} write\nquit\n")
    assert start["walk_text"] in debugged.stdout
    assert start["walk_text"].startswith(f"walk {r['address']:#x} in process {r['pid']}")
    after = report["after"][0]                        # the next step: the page-fault event
    assert after["step-event"] == "page-fault" and after["hash"] == f"#step={fault + 1}"
    # The same fault's walk (the page-fault step's JSON names the exception step's).
    assert (after["walk_text"], after["rows"], after["refused"]) == \
        (start["walk_text"], start["rows"], start["refused"])


def test_a_deep_link_past_the_end_opens_the_last_step_and_a_bad_one_the_first(run, browser):
    page, records, _, folder = run
    n = len(records)
    past = browse(browser, page, folder, [], "#step=99999", "past")["start"]
    shows(records[n - 1], n - 1, n, past)                # and the address says #step=LAST
    bad = browse(browser, page, folder, [], "#step=x1", "bad")["start"]
    shows(records[0], 0, n, bad)


def test_the_walk_names_the_pte_that_refuses_a_write(apps, browser, tmp_path):
    page, log = tmp_path / "ro.html", tmp_path / "ro.jsonl"
    done = emu("run", "--html", page, "--events", log, apps / "rowrite")
    assert done.returncode == 125, done.stderr
    records = [json.loads(line) for line in log.read_text().splitlines()]
    fault = next(i for i, r in enumerate(records) if r["event"] == "exception")
    report = browse(browser, page, tmp_path, [], f"#step={fault}")
    start = report["start"]
    assert start["refused"] == ["PTE"]
    assert [row[0] for row in start["rows"]] == ["PML4E", "PDPTE", "PDE", "PTE"]
    debugged = emu("debug", apps / "rowrite",
                   stdin=f"continue\nwalk {records[fault]['address']:#x} write\nquit\n")
    assert start["walk_text"] in debugged.stdout
    pte = next(line for line in debugged.stdout.splitlines() if line.startswith("  PTE "))
    value = re.search(r"= (0x[0-9a-f]{16})", pte).group(1)
    assert start["rows"][3][3] == value               # NX set: past 2^53, shown exactly
    assert int(value, 16) >> 63 == 1 and "NX" in start["rows"][3][4]


def test_without_javascript_the_first_step_and_the_table_show(run):
    page, records, _, folder = run
    # A sandboxed frame without allow-scripts runs no script (as a browser with JavaScript
    # off); the test's own page reads what the frame shows.
    report = tour_browser.without_script(
        folder, f"{page.as_uri()}#step=5",
        '{html:d.documentElement.outerHTML,noscript:d.querySelector("noscript .noscript")'
        '!==null&&d.querySelector("noscript .noscript").getBoundingClientRect().height>0}')
    shown, first = report["html"], records[0]
    assert f'<span id="step-index">0 of {len(records) - 1}</span>' in shown
    assert f'<span id="step-event">{first["event"]}</span>' in shown
    assert f'<span id="step-ring">{first["ring"]}</span>' in shown
    assert report["noscript"]                        # the note is shown
    rows = re.findall(r"<tr><td>(\d+)</td><td>(\d+)</td><td>([a-z0-9-]+)</td>", shown)
    assert [(int(i), int(p), e) for i, p, e in rows] == \
        [(i, r["position"], r["event"]) for i, r in enumerate(records)]


def test_the_page_is_self_contained_and_the_same_every_run(run, apps):
    page, records, _, folder = run
    text = page.read_text()
    again = emu_process("run", "--html", folder / "run.html", *slow_neither(apps))
    assert again.returncode == 0 and page.read_text() == text
    assert "https://" not in text and "http://" not in text.replace(
        "http://www.w3.org/2000/svg", "")
    assert not re.search(r"<(link|img|iframe)\b|\bsrc=", text)
    data = re.search(r'<script type="application/json" id="steps-data">(.*?)</script>', text,
                     re.S)
    assert len(json.loads(data.group(1))) == len(records)


def test_an_unwritable_html_path_is_refused_before_the_run(apps, tmp_path):
    for path, why in ((tmp_path / "no" / "page.html", "no such directory"),
                      (tmp_path, "is a directory")):
        done = emu("run", "--html", path, apps / "hello")
        assert done.returncode == 2
        assert done.stderr == f"emu: error: --html {path}: {why}" + \
            (f" {tmp_path / 'no'}\n" if why == "no such directory" else "\n")
        assert done.stdout == ""                      # the app never ran
    done = emu("run", "--html", tmp_path / "a", "--events", tmp_path / "a", apps / "hello")
    assert done.returncode == 2 and "the same file as --events" in done.stderr


def test_html_with_gdb_is_refused(apps, tmp_path):
    done = emu("run", "--html", tmp_path / "p.html", "--gdb", "1234", apps / "hello")
    assert (done.returncode, done.stderr) == (2, "emu: error: --html cannot be combined "
                                                 "with --gdb\n")


def _syscall(i: int) -> dict:
    return {"position": 123456789 + i, "clock": 123456789, "event": "syscall", "pid": 1234,
            "tid": 1238, "ring": 3, "irql": 0, "rip": 0x7FF7_1234_5678, "number": 0x55,
            "service": "NtCreateFile", "args": [0xFFFF_8000_1234_5678] * 6,
            "name": "averagelongname", "symbol": "averagelongname!NtCreateFile+0x8",
            "insn": "syscall", "walk": None}


def test_the_cap_keeps_a_page_under_2_mb():
    # A run of MAX_STEPS big steps: the page embeds the first ones that fit and says so.
    steps = [_syscall(i) for i in range(MAX_STEPS)]
    page = steps_page.page(steps, 12_345, "big")
    assert len(page.encode()) < 2 * 1024 * 1024
    kept = steps_page.fitting(steps)
    assert 0 < kept < MAX_STEPS
    assert (f"The run had {MAX_STEPS + 12_345:,} events: the first {kept:,} are here, "
            f"{MAX_STEPS + 12_345 - kept:,} were left out") in page
    assert f'max="{kept - 1}"' in page
    data = re.search(r'id="steps-data">(.*?)</script>', page, re.S).group(1)
    assert len(json.loads(data)) == kept
    # Walk steps weigh more (a paging run's faults): still under 2 MB.
    walk = {"address": 0x7FF7_1234_5678, "access": "write", "ring": 3, "error_code": 7,
            "reason": "R/W=0 in PTE: read-only page", "refused": "PTE",
            "levels": [{"name": n, "index": 511, "entry_address": 0x12345678,
                        "value": 0x8000_0000_1234_5067, "flags": "P RW US A D NX"}
                       for n in ("PML4E", "PDPTE", "PDE", "PTE")],
            "text": ["  " + "x" * 110] * 12}
    faults = [{**_syscall(i), "event": "exception", "walk": walk} for i in range(MAX_STEPS)]
    heavy = steps_page.page(faults, 0, "faults")
    assert len(heavy.encode()) < 2 * 1024 * 1024 and "were left out" in heavy
    small = steps_page.page([_syscall(i) for i in range(40)], 0, "small")
    assert "left out" not in small and 'max="39"' in small


def test_the_recorder_keeps_the_first_events_and_counts_the_rest(apps, tmp_path):
    log = tmp_path / "log.jsonl"
    assert emu("run", "--events", log, apps / "hello").returncode == 0
    records = [json.loads(line) for line in log.read_text().splitlines()]
    machine = Machine(64 << 20)
    try:
        recorder = StepRecorder.attach(machine, max_steps=5)
        machine.spawn(str(apps / "hello"), [])
        machine.run()
    finally:
        machine.close()
    assert len(recorder.steps) == 5 and recorder.left_out == len(records) - 5
    for step, record in zip(recorder.steps, records, strict=False):
        assert {k: step[k] for k in record} == record     # the log's fields, the same values


def test_the_tour_writes_a_steppable_page_per_act_linked_from_its_page(apps, browser, tmp_path):
    # `emu scenario run --out DIR` (docs/tour.md, "The pictures"): the DPC scenario's first
    # act's page, its link, and its steps: the same as that act's own event records.
    name = "arbitrary-thread-context"
    log = tmp_path / "tour.jsonl"
    done = emu("scenario", "run", name, "--out", tmp_path, "--events", log)
    assert done.returncode == 0, done.stderr
    page = tmp_path / f"{name}-steps.html"
    acts = re.findall(r'<section class="act">', (tmp_path / f"{name}.html").read_text())
    links = re.findall(r'<a href="([^"]+)">Step through this run</a>',
                       (tmp_path / f"{name}.html").read_text())
    assert links == [f"{name}-steps.html"] + [f"{name}-steps-{n}.html"
                                              for n in range(2, len(acts) + 1)]
    assert all((tmp_path / link).is_file() for link in links) and len(acts) == 3
    index = (tmp_path / "index.html").read_text()
    assert f'href="{name}-steps.html">(step through)</a>' in index
    # The index's introduction says what the steppable pages are and how to step them.
    intro = html.unescape(" ".join(re.findall(r'<p class="intro">(.*?)</p>', index, re.S)))
    assert "steppable page" in intro and index.rindex("class=\"intro\"") < index.index("<ul>")
    for words in ("Previous and Next buttons", "Left and Right arrow keys", "Home", "End",
                  "the slider", "#step=N", "address space", "marked", "Without JavaScript"):
        assert words in intro, words
    records = [r for r in map(json.loads, log.read_text().splitlines()) if r["act"] == 1]
    report = browse(browser, page, tmp_path, [["click", "next"]], name="tour")
    assert report["resources"] == []                  # nothing fetched
    shows(records[0], 0, len(records), {**report["start"], "hash": "#step=0"})
    shows(records[1], 1, len(records), report["after"][0])
    # The pictures and the narration are those of a run without the pages (the steps are
    # recorded by a second, silent play): the timeline's clocks stay uncounted.
    plain = emu("scenario", "run", name)
    assert done.stdout.replace(f"Pictures: {tmp_path / 'index.html'}\n", "") == plain.stdout
