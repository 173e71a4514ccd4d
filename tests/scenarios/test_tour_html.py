"""The picture pages: well-formed SVG, self-contained, and drawing the machine's facts."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import pytest

from emu.scenarios import html

SVG = "{http://www.w3.org/2000/svg}"


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


def test_the_dpc_arrow_points_at_the_process_it_really_wrote(tour):
    result = tour["arbitrary-thread-context"]
    facts = result.facts
    timelines = [r for r in svgs(html.page(result)) if r.get("class") == "timeline"]
    targets = [[g.get("data-process") for g in by_class(t, "g", "dpc-write")]
               for t in timelines]
    assert targets == [[str(facts["neither"]["victim"])], ["0"],
                       [str(facts["direct"]["requester"])]]


def test_the_bug_check_is_on_the_timeline(tour):
    result = tour["driver-crash-is-fatal"]
    second = [r for r in svgs(html.page(result)) if r.get("class") == "timeline"][1]
    (mark,) = by_class(second, "g", "bugcheck")
    assert "BUG CHECK 0x50" in "".join(mark.itertext())


def test_the_kernel_half_is_one_set_of_frames(tour):
    result = tour["private-address-spaces"]
    (kernel,) = [r for r in svgs(html.page(result)) if r.get("class") == "kernel-half"]
    slots = by_class(kernel, "g", "kslot")
    assert {g.get("data-pid") for g in slots} == {"4", "12"}
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


@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="Chromium is not installed: the headless rendering test needs it")
def test_a_page_renders_in_headless_chromium(tour, tmp_path: Path):
    page = tmp_path / "arbitrary-thread-context.html"
    page.write_text(html.page(tour["arbitrary-thread-context"]), encoding="utf-8")
    shot = tmp_path / "shot.png"
    subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
         f"--screenshot={shot}", "--window-size=1200,1600", page.as_uri()],
        check=True, capture_output=True, timeout=120)
    width, height, drawn = png_is_not_blank(shot.read_bytes())
    assert (width, height) == (1200, 1600) and drawn
