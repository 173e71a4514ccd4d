"""The address-space map: text and picture checked against the page tables of real runs."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from itertools import pairwise

import pytest

from emu.fmt import addr
from emu.nt.layout import PAGE_SIZE
from emu.nt.loader import PF_W, PF_X
from emu.viz.addrmap import (
    EDGE_PAGES,
    SMALL_REGION,
    MapRecorder,
    Page,
    ProcessMap,
    Region,
    RegionState,
    capture,
    frame_list,
    frames_in_several_maps,
    render_svg,
    render_text,
)

SVG = "{http://www.w3.org/2000/svg}"
SEED_VA = 0x7F7_93950000           # where the seed's Notepad and MyApp both have pages


def run_mapped(machine_factory, apps, *commands, **kwargs):
    """Run ``commands`` with a MapRecorder; also keep, independently, each process's
    (va -> pfn) straight from its page tables at exit. Returns (maps, tables, procs)."""
    m = machine_factory(**kwargs)
    rec = MapRecorder(m)
    tables: dict[int, dict[int, int]] = {}

    def observe(proc):
        tables[proc.pid] = {mp.va: mp.pfn for mp in proc.space.user_mappings()}

    m.executive.exit_observers.append(observe)
    procs = [m.spawn(apps / name, list(args)) for name, *args in commands]
    m.run()
    for proc in procs:                     # alive at the end: read their tables now
        if proc.pid not in tables:
            tables[proc.pid] = {mp.va: mp.pfn for mp in proc.space.user_mappings()}
    return rec.finish(), tables, procs


def hexnum(text: str) -> int:
    return int(text.replace("'", ""), 16)


def parse_text(text: str) -> dict[int, list[tuple[int, int]]]:
    """(va, pfn) of every page the text lists, per pid, in the order listed."""
    listed: dict[int, list[tuple[int, int]]] = {}
    pid = None
    for line in text.splitlines():
        if m := re.match(r'process (\d+) "', line):
            pid = int(m.group(1))
            listed[pid] = []
        elif line.startswith("  ") and " -> frame" in line:
            start = hexnum(line.split()[0].split("-")[0])
            frames = []
            for item in line.split(" -> ")[1].split(" ", 1)[1].split(", "):
                lo, _, hi = item.partition("..")
                frames.extend(range(hexnum(lo), hexnum(hi or lo) + 1))
            listed[pid] += [(start + i * PAGE_SIZE, f) for i, f in enumerate(frames)]
    return listed


def boxes(root, cls):
    """(id, label, (x0, y0, x1, y1)) of every <g class=cls> box."""
    out = []
    for g in root.iter(f"{SVG}g"):
        if g.get("class") == cls:
            r = g.find(f"{SVG}rect")
            label = next(t.text for t in g.iter(f"{SVG}text") if t.get("class") == "label")
            x, y = int(r.get("x")), int(r.get("y"))
            out.append((g.get("id"), label, (x, y, x + int(r.get("width")),
                                             y + int(r.get("height")))))
    return out


def hit(found, x, y):
    """The one box whose rectangle holds (x, y)."""
    inside = [b for b in found if b[2][0] <= x <= b[2][2] and b[2][1] <= y <= b[2][3]]
    assert len(inside) == 1, (x, y, inside)
    return inside[0]


def check_arrows(svg: str, tables: dict[int, dict[int, int]]) -> int:
    """Every arrow starts on a page box and ends on the box of the frame that page's PTE
    names; returns the number of arrows."""
    root = ET.fromstring(svg)
    pages, frames = boxes(root, "page"), boxes(root, "frame")
    arrows = [e for e in root.iter() if e.get("class") == "arrow"]
    assert len(arrows) == len(pages)
    for a in arrows:
        assert a.tag in (f"{SVG}line", f"{SVG}path") and a.get("marker-end")
        page_id, page_label, _ = hit(pages, int(a.get("x1")), int(a.get("y1")))
        _, pid, va = page_id.split("-")
        pid, va = int(pid), int(va, 16)
        assert page_label == addr(va, ticks=True)
        _, frame_label, _ = hit(frames, int(a.get("x2")), int(a.get("y2")))
        assert frame_label == addr(tables[pid][va])
    return len(arrows)


@pytest.fixture(scope="module")
def two_counters(apps):
    from emu import Machine

    made = []

    def factory(**kwargs):
        made.append(Machine(**kwargs))
        return made[-1]

    yield run_mapped(factory, apps, ("counter", "a", "2"), ("counter", "b", "2"))
    for m in made:
        m.close()


def test_the_text_lists_every_mapped_page_exactly_once(two_counters):
    maps, tables, _ = two_counters
    assert [pm.pid for pm in maps] == sorted(tables) and len(maps) == 2
    listed = parse_text(render_text(maps))
    for pid, mapping in tables.items():
        assert sorted(listed[pid]) == sorted(mapping.items())      # each page once, right frame


def test_the_picture_has_one_arrow_per_page_to_the_frame_the_pte_names(two_counters):
    maps, tables, _ = two_counters
    svg = render_svg(maps)
    drawn = check_arrows(svg, tables)
    # counter's regions are all small enough to be drawn whole
    assert all(len(r.pages) <= SMALL_REGION for pm in maps for r in pm.regions)
    assert drawn == sum(len(t) for t in tables.values())


def test_the_picture_is_self_contained(two_counters):
    svg = render_svg(two_counters[0])
    assert "<script" not in svg and "href" not in svg and "@import" not in svg
    assert re.findall(r"https?://[^\"]*", svg) == ["http://www.w3.org/2000/svg"]
    frames = [g for g in ET.fromstring(svg).iter(f"{SVG}g") if g.get("class") == "frame"]
    ys = [int(g.find(f"{SVG}rect").get("y")) for g in frames]
    assert ys == sorted(ys)                          # frames top to bottom by number


def test_no_frame_is_shared_between_the_two_processes(two_counters):
    maps, tables, _ = two_counters
    a, b = (set(t.values()) for t in tables.values())
    assert not a & b
    assert frames_in_several_maps(maps) == []
    assert render_text(maps).splitlines()[-1] == "no physical frame is mapped by two processes"


def test_image_code_is_execute_read_and_data_read_write(two_counters):
    maps, _, procs = two_counters
    for pm, proc in zip(maps, procs, strict=True):
        by_va = {p.va: p for p in pm.pages}
        for va, flags in proc.image.page_flags.items():
            want = ("PAGE_EXECUTE_READ" if flags & PF_X else
                    "PAGE_READWRITE" if flags & PF_W else "PAGE_READONLY")
            assert by_va[va].protection == want
            region = next(r for r in pm.regions if r.start <= va < r.end)
            assert region.protection == want and region.state is RegionState.COMMITTED
        assert {"PAGE_EXECUTE_READ", "PAGE_READWRITE"} <= {r.protection for r in pm.regions}


def test_the_output_is_deterministic(machine_factory, apps, two_counters):
    again, _, _ = run_mapped(machine_factory, apps, ("counter", "a", "2"), ("counter", "b", "2"))
    first = two_counters[0]
    assert again == first
    assert render_text(again) == render_text(first)
    assert render_svg(again) == render_svg(first)


def test_processes_alive_at_the_end_are_captured_by_finish(machine_factory, apps):
    maps, tables, procs = run_mapped(machine_factory, apps, ("counter", "a", "50"),
                                     ("counter", "b", "50"), max_insns=20_000)
    assert all(p.exit_status is None for p in procs)   # the budget stopped them
    assert [pm.at_exit for pm in maps] == [False, False]
    assert maps[0].moment == maps[1].moment            # one live snapshot
    check_arrows(render_svg(maps), tables)


def test_a_terminated_process_cannot_be_captured(machine_factory, apps):
    m = machine_factory()
    p = m.spawn(apps / "hello", [])
    m.run()
    with pytest.raises(ValueError, match="has terminated"):
        capture(p)


def test_focus_draws_only_the_pages_in_its_ranges(two_counters):
    maps, tables, _ = two_counters
    image = (0x400000, 0x404000)
    svg = render_svg(maps, focus=[image])
    drawn = check_arrows(svg, tables)
    in_range = sum(image[0] <= va < image[1] for t in tables.values() for va in t)
    assert drawn == in_range > 0
    assert "pages not drawn" in svg


def synthetic_map(pid: int, pages: int, first_pfn: int, *, at_exit=False, moment=0):
    """One region of ``pages`` read-write pages at 0x10000, frames from ``first_pfn``."""
    ps = tuple(Page(0x10000 + i * PAGE_SIZE, first_pfn + i, True, False, True, True, False)
               for i in range(pages))
    region = Region(0x10000, 0x10000 + pages * PAGE_SIZE, "PAGE_READWRITE",
                    RegionState.COMMITTED, ps)
    return ProcessMap(pid, f"p{pid}", ps, (region,), at_exit, moment)


def test_a_large_region_is_drawn_by_its_ends():
    pm = synthetic_map(4, SMALL_REGION + 36, 0x100)
    svg = render_svg([pm])
    tables = {4: {p.va: p.pfn for p in pm.pages}}
    assert check_arrows(svg, tables) == 2 * EDGE_PAGES
    hidden = SMALL_REGION + 36 - 2 * EDGE_PAGES
    assert f"... {hidden} pages not drawn" in svg
    assert f"... {hidden} frames" in svg             # the gap in the frame column shows
    assert parse_text(render_text([pm])) == {4: sorted(tables[4].items())}


def test_frames_in_two_maps_are_shared_unless_the_first_had_exited():
    live = [synthetic_map(4, 2, 0x50, moment=1), synthetic_map(8, 2, 0x51, moment=1)]
    (shared,) = frames_in_several_maps(live)
    assert shared.pfn == 0x51 and not shared.reused
    assert "frame 0x51 is mapped by more than one process" in render_text(live)
    svg = render_svg(live)
    assert check_arrows(svg, {4: {0x10000: 0x50, 0x11000: 0x51},
                              8: {0x10000: 0x51, 0x11000: 0x52}}) == 4
    later = [synthetic_map(4, 2, 0x50, at_exit=True, moment=1),
             synthetic_map(8, 2, 0x51, at_exit=True, moment=2)]
    (reused,) = frames_in_several_maps(later)
    assert reused.reused
    text = render_text(later)
    assert "no physical frame is mapped by two processes" in text
    assert "frame 0x51 was reused after its process exited" in text


def test_frame_list_writes_runs_of_three_or_more_as_ranges():
    assert frame_list([0x1A3, 0x2B7, 0x1F0]) == "0x1a3, 0x2b7, 0x1f0"
    assert frame_list([1, 2, 3, 4, 9, 10, 12]) == "0x1..0x4, 0x9, 0xa, 0xc"


def test_notepad_and_myapp_map_the_same_address_to_different_frames(machine_factory, apps):
    if not ((apps / "notepad").exists() and (apps / "myapp").exists()):
        pytest.skip("guest apps notepad and myapp are not built yet")
    maps, tables, _ = run_mapped(machine_factory, apps, ("notepad",), ("myapp",))
    seed = range(SEED_VA, SEED_VA + 3 * PAGE_SIZE, PAGE_SIZE)
    frames = []
    for pm in maps:
        mine = [p.pfn for p in pm.pages if p.va in seed]
        assert len(mine) == 3, pm.name
        assert not all(b == a + 1 for a, b in pairwise(mine))
        frames += mine
    assert len(set(frames)) == 6
    sections = render_text(maps).split("process ")[1:]
    start = f"  {addr(SEED_VA, ticks=True)}-"
    for section in sections[:2]:
        line = next(x for x in section.splitlines() if x.startswith(start))
        assert line.split()[0].endswith(f"-{addr(SEED_VA + 3 * PAGE_SIZE, ticks=True)}")
        assert " 3 pages -> frames " in line
    svg = render_svg(maps, focus=[(SEED_VA, SEED_VA + 3 * PAGE_SIZE)])
    assert check_arrows(svg, tables) == 6


def test_a_boundary_line_falls_between_the_pages_below_and_above_it():
    pm = synthetic_map(4, 4, 0x100)
    svg = ET.fromstring(render_svg([pm], boundaries=[(0x12000, "the line")]).split("?>", 1)[1])
    order = [("line" if e.get("class") == "boundary" else e.get("id"))
             for e in svg.iter(SVG + "g") if e.get("class") in ("boundary", "page")]
    assert order == ["page-4-10000", "page-4-11000", "line", "page-4-12000", "page-4-13000"]
    (line,) = [e for e in svg.iter(SVG + "g") if e.get("class") == "boundary"]
    assert line.get("data-va") == "0x12000" and "the line" in "".join(line.itertext())


def test_a_hit_frame_is_outlined_and_named():
    pm = synthetic_map(4, 2, 0x100)
    svg = ET.fromstring(render_svg([pm], hits={0x101: "DPC wrote"}).split("?>", 1)[1])
    words = {g.get("id"): "".join(t.text for t in g.iter(SVG + "text") if t.get("class") == "hit")
             for g in svg.iter(SVG + "g") if g.get("class") == "frame"}
    assert words == {"frame-100": "", "frame-101": "DPC wrote"}


def test_a_map_with_a_heading_is_not_called_a_process():
    pm = synthetic_map(0, 1, 0x100)
    named = ProcessMap(0, "x", pm.pages, pm.regions, heading="driver images (kernel half)")
    svg = render_svg([named])
    assert "driver images (kernel half)" in svg and "process 0" not in svg
