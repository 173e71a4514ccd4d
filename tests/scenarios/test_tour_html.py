"""The picture pages: well-formed SVG, self-contained, and drawing the machine's facts."""

from __future__ import annotations

import re
import struct
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import pytest
import tour_browser

from emu.scenarios import html, timeline
from emu.viz import addrmap

SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """One headless Chromium for the module's layouts, a tab per page (tour_browser.Browser)."""
    b = tour_browser.Browser(tmp_path_factory.mktemp("browser"))
    yield b
    b.close()


def svgs(page: str) -> list[ET.Element]:
    """Every inline <svg> of a page, parsed (ParseError if one is not well-formed)."""
    return [ET.fromstring(block) for block in re.findall(r"<svg.*?</svg>", page, re.S)]


def by_class(root: ET.Element, tag: str, cls: str) -> list[ET.Element]:
    return [e for e in root.iter(SVG + tag) if e.get("class") == cls]


def title(root: ET.Element) -> str:
    return root.findtext(SVG + "title") or ""


def test_every_page_is_self_contained_and_its_svg_well_formed(tour):
    for name, result in tour.items():
        page = html.page(result)
        assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
        assert "<script" not in page and "http://" not in page.replace(
            "http://www.w3.org/2000/svg", "") and "https://" not in page, name
        roots = svgs(page)
        assert roots, name
        timelines = [r for r in roots if r.get("class") == "timeline"]
        assert len(timelines) == len(result.acts), name


def test_one_arrow_per_mapped_page_in_the_seeds_picture(tour):
    result = tour["private-address-spaces"]
    frames = result.facts["frames"]
    (space,) = [r for r in svgs(html.page(result)) if title(r) == "Address-space map"]
    pages = by_class(space, "g", "page")
    arrows = by_class(space, "line", "arrow")
    assert len(pages) == len(arrows) == 6
    drawn = {g.get("id") for g in by_class(space, "g", "frame")}
    assert drawn == {f"frame-{pfn:x}" for pfn in frames["notepad"] + frames["myapp"]}


def timelines(result) -> list[ET.Element]:
    return [r for r in svgs(html.page(result)) if r.get("class") == "timeline"]


def writes(timeline: ET.Element) -> list[tuple[str, str]]:
    """(class, data-process) of every store arrow, in order."""
    return [(g.get("class"), g.get("data-process")) for g in timeline.iter(SVG + "g")
            if g.get("class") in ("write", "stray-write")]


def test_the_dpc_arrow_points_at_the_process_it_really_wrote(tour):
    result = tour["arbitrary-thread-context"]
    facts = result.facts
    assert [writes(t) for t in timelines(result)] == [
        [("stray-write", str(facts["neither"]["victim"]))],
        [("write", "0")],
        [("write", str(facts["direct"]["requester"]))]]


def arrow_colour(g: ET.Element) -> str:
    return g.find(SVG + "path").get("stroke")


def test_only_the_stray_dpc_store_is_drawn_in_the_fault_colour(tour):
    neither, buffered, direct = timelines(tour["arbitrary-thread-context"])
    (stray,) = by_class(neither, "g", "stray-write")
    (pool,) = by_class(buffered, "g", "write")
    (mdl,) = by_class(direct, "g", "write")
    assert arrow_colour(stray) == timeline.RED
    assert arrow_colour(pool) == arrow_colour(mdl) == timeline.BLUE != timeline.RED
    assert "kernel pool" in "".join(pool.itertext())
    top, bottom = (float(v) for v in buffered.get("viewBox").split()[1::2])
    end_y = float(pool.find(SVG + "path").get("d").split()[-1].split(",")[1])
    assert 0 < end_y < bottom


def test_the_stray_store_of_scribble_points_at_ticket_sys(tour):
    second = timelines(tour["shared-kernel-space"])[1]
    (stray,) = by_class(second, "g", "stray-write")
    assert "ticket.sys" in "".join(stray.itertext())
    (ticket,) = [g for g in by_class(second, "g", "driver")
                 if "".join(g.itertext()).strip().endswith("ticket.sys")]
    block = ticket.find(SVG + "rect")
    x, y = (float(v) for v in stray.find(SVG + "path").get("d").split()[-1].split(","))
    left, width = float(block.get("x")), float(block.get("width"))
    assert left <= x <= left + width and abs(y - float(block.get("y"))) <= 1


def test_hard_faults_are_drawn_apart_with_the_disk(tour):
    result = tour["paging-to-disk"]
    (lanes,) = timelines(result)
    disk = [g for g in by_class(lanes, "g", "lane") if g.get("data-lane") == "disk"]
    assert len(disk) == 1 and "pagefile (disk)" in "".join(disk[0].itertext())
    hard = by_class(lanes, "g", "hard-faults")
    out = by_class(lanes, "g", "page-out")
    counted = sum(int(m.group(1)) for g in hard
                  for m in [re.match(r"clock \d+: (\d+) hard", title(g))])
    written = sum(int(re.match(r"clock \d+: (\d+) pages", title(g)).group(1)) for g in out)
    paging = result.facts["paging"]
    assert counted == paging["hard_faults"] > 0 and written == paging["pages_written"] > 0
    assert all(g.find(SVG + "rect").get("fill") == timeline.DISK_READ for g in hard)
    assert {g.find(SVG + "rect").get("fill") for g in by_class(lanes, "g", "faults")} == \
        {timeline.AMBER}
    assert len(lanes.findall(f".//{SVG}rect[@class='disk-read']")) == len(hard)


def test_the_bug_check_is_on_the_timeline(tour):
    result = tour["driver-crash-is-fatal"]
    second = timelines(result)[1]
    (mark,) = by_class(second, "g", "bugcheck")
    assert "BUG CHECK 0x50" in "".join(mark.itertext())


def test_the_kernel_half_is_one_set_of_frames(tour):
    result = tour["private-address-spaces"]
    (kernel,) = [r for r in svgs(html.page(result)) if r.get("class") == "kernel-half"]
    slots = by_class(kernel, "g", "kslot")
    assert {g.get("data-pid") for g in slots} == {"12", "20"}
    assert len({g.get("data-frame") for g in slots}) == len(slots) // 2


def test_index_links_every_page(tour):
    results = list(tour.values())
    page = html.index(results, [f"{r.scenario.name}.html" for r in results])
    assert re.findall(r'href="([^"]+)"', page) == [f"{r.scenario.name}.html" for r in results]


def png_is_not_blank(data: bytes) -> tuple[int, int, bool]:
    """(width, height, whether the image has more than a handful of byte values)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    at, idat, size = 8, b"", (0, 0)
    while at < len(data):
        length, kind = struct.unpack(">I4s", data[at:at + 8])
        body = data[at + 8:at + 8 + length]
        if kind == b"IHDR":
            size = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        at += 12 + length
    return size[0], size[1], len(set(zlib.decompress(idat))) > 16


def test_a_page_renders_in_headless_chromium(tour, tmp_path: Path):
    page = tmp_path / "arbitrary-thread-context.html"
    page.write_text(html.page(tour["arbitrary-thread-context"]), encoding="utf-8")
    shot = tmp_path / "shot.png"
    tour_browser.run([f"--screenshot={shot}", "--window-size=1200,1600", page.as_uri()],
                     tmp_path)
    width, height, drawn = png_is_not_blank(shot.read_bytes())
    assert (width, height) == (1200, 1600) and drawn


def every_page(tour) -> dict[str, str]:
    """{name: HTML} of every scenario's page and of the index."""
    results = list(tour.values())
    pages = {r.scenario.name: html.page(r) for r in results}
    pages["index"] = html.index(results, [f"{r.scenario.name}.html" for r in results])
    return pages


def test_no_text_overlaps_or_is_cut_and_every_arrow_ends_inside(tour, browser,
                                                                tmp_path: Path):
    problems = {}
    for name, page in every_page(tour).items():
        report = browser.layout(page, tmp_path, name)
        assert report["svgs"] == page.count("<svg "), name
        assert report["texts"] > 0 or report["svgs"] == 0, name
        if report["problems"]:
            problems[name] = report["problems"]
    assert problems == {}


PROBED = """<!DOCTYPE html><html><body>
<svg xmlns="http://www.w3.org/2000/svg" width="200" height="100" viewBox="0 0 200 100"
     font-family="monospace" font-size="11"><title>probe</title>
<defs><marker id="m" viewBox="0 0 8 8" refX="8" refY="4" markerWidth="7" markerHeight="7">
<path d="M0,0 L8,4 L0,8 z"/></marker></defs>
<text x="10" y="20">first label</text><text x="40" y="22">second label</text>
<text x="150" y="60">cut at the edge</text>
<g><line x1="10" y1="80" x2="250" y2="80" stroke="#000" marker-end="url(#m)"/></g>
<text x="100" y="45">crossed</text><line x1="120" y1="30" x2="120" y2="50" stroke="#000"/>
</svg></body></html>"""


def test_the_layout_probe_reports_what_it_should(browser, tmp_path: Path):
    report = browser.layout(PROBED, tmp_path, "probe")
    kinds = sorted((p["kind"], p["text"]) for p in report["problems"])
    assert kinds == [("arrow", ""), ("crossed", "crossed"), ("cut", "cut at the edge"),
                     ("overlap", "first label")]


def test_the_driver_image_map_names_each_pages_driver(tour):
    result = tour["shared-kernel-space"]
    maps = [r for r in svgs(html.page(result))
            if "driver images" in "".join(r.find(SVG + "text").itertext())]
    assert len(maps) == 2
    counter_page = result.facts["both"]["counter_va"] & ~0xFFF
    owner, owners = "", {}
    for e in maps[1].iter():
        if e.tag == SVG + "text" and e.get("class") == "region":
            owner = e.text.split(":")[0]
        elif e.tag == SVG + "g" and e.get("class") == "page":
            owners[int(e.get("id").rsplit("-", 1)[1], 16)] = owner
    assert owners[counter_page] == "ticket.sys"
    assert set(owners.values()) == {"ticket.sys", "scribble.sys"}
    assert not any("process 0" in "".join(r.itertext()) for r in maps)


def test_the_address_limits_are_drawn_where_they_fall(tour):
    result = tour["address-limits"]
    maps = [r for r in svgs(html.page(result)) if title(r) == "Address-space map"]
    assert len(maps) == 2
    for space, limit, columns in ((maps[0], 0x8000_0000, 3), (maps[1], 0x8000_0000_0000, 2)):
        lines = by_class(space, "g", "boundary")
        assert [int(g.get("data-va"), 16) for g in lines] == [limit] * columns
        for g in lines:
            line = g.find(SVG + "line")
            x, y = float(line.get("x1")), float(line.get("y1"))
            pages = [(int(p.get("id").rsplit("-", 1)[1], 16), float(r.get("y")))
                     for p in by_class(space, "g", "page") for r in [p.find(SVG + "rect")]
                     if p.get("id").split("-")[1] == g.get("data-pid")]
            assert all(va < limit and py < y for va, py in pages)
            assert x in (addrmap.LEFT_X, addrmap.RIGHT_X)
    text = result.acts[0].text.splitlines()
    at = next(i for i, line in enumerate(text) if "2 GB: 0x80000000" in line)
    assert text[at - 1].lstrip().startswith("0x7ffe0000 ") and \
        text[at + 1].lstrip().startswith("0x80000000 ")
    assert "128 TB: 0x8000'00000000" in result.acts[1].text


def test_a_region_of_one_page_is_not_called_pages(tour):
    result = tour["address-limits"]
    assert "1 pages" not in html.page(result) and "1 page<" in html.page(result)


def test_the_map_marks_the_frame_each_dpc_wrote(tour):
    result = tour["arbitrary-thread-context"]
    maps = [r for r in svgs(html.page(result)) if title(r) == "Address-space map"]
    for space, act, owner in ((maps[0], "neither", "victim"), (maps[2], "direct", "requester")):
        facts = result.facts[act]
        (frame,) = {r.pfn for r in facts["runs"] if r.owner == facts[owner]}
        marked = [g.get("id") for g in by_class(space, "g", "frame")
                  if any(t.get("class") == "hit" for t in g.iter(SVG + "text"))]
        assert marked == [f"frame-{frame:x}"]
        (box,) = [g for g in by_class(space, "g", "frame") if g.get("id") == marked[0]]
        assert "DPC wrote" in "".join(box.itertext())
        assert box.find(SVG + "rect").get("stroke") == addrmap.HIT_COLOUR
    assert not any(t.get("class") == "hit" for t in maps[1].iter(SVG + "text"))


def test_the_index_introduces_the_tour(tour):
    results = list(tour.values())
    page = html.index(results, [f"{r.scenario.name}.html" for r in results])
    intro = re.findall(r'<p class="intro">(.*?)</p>', page, re.S)
    assert intro and page.index('class="intro"') < page.index("<ul>")
    text = " ".join(intro)
    assert "seed" in text and "timeline" in text and "checked" in text
    assert f"{len(results)} of {len(results)} claims hold" in page


def crowded_timeline(n: int) -> str:
    """A timeline of ``n`` steps with a label at every step, in few lanes."""
    from emu.scenarios.timeline import Mark, MarkKind, lanes_for, render_timeline

    kinds = [(MarkKind.DRIVER, 0, "scribble.sys"), (MarkKind.FAULTS, 4, "159 #PF"),
             (MarkKind.EXCEPTION, 12, "ACCESS_VIOLATION"), (MarkKind.EXIT, 12, "killed"),
             (MarkKind.HARD_FAULTS, 4, "48 from disk"), (MarkKind.PAGE_OUT, -1, "9 to disk"),
             (MarkKind.DPC, 4, "DPC"), (MarkKind.INTERRUPT, 12, "IRQ")]
    marks = [Mark(i, i, kind, lane, label) for i, (kind, lane, label)
             in enumerate(kinds[i % len(kinds)] for i in range(n))]
    marks.append(Mark(n, n, MarkKind.BUGCHECK, 4, "BUG CHECK 0x50"))
    marks.append(Mark(n + 1, n + 1, MarkKind.WRITE, 0, "4 bytes -> ticket.sys", target=0,
                      stray=True, target_seq=0))
    lanes = lanes_for([(4, "pattern"), (12, "crasher")], disk=True)
    return render_timeline(marks, lanes, "crowded")


@pytest.mark.parametrize("n", [3, 12, 40, 400])
def test_a_crowded_timeline_keeps_its_labels_apart_and_inside(browser, tmp_path: Path, n: int):
    page = html._document("crowded", [crowded_timeline(n)])
    report = browser.layout(page, tmp_path, f"crowded-{n}")
    assert report["svgs"] == 1 and report["texts"] > 10 and report["problems"] == []
