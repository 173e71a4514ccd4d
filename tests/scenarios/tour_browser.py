"""Headless Chromium for the picture tests: render a page, measure what it draws.

``layout(page, folder)`` writes a copy of the page with tests/scenarios/layout_probe.js
appended, has ``chromium --headless --dump-dom`` lay it out and run the probe, and returns
the probe's report: {"svgs", "texts", "arrows", "strokes", "problems"}. The pages
themselves carry no script; only the test's copy does.

Chromium is a requirement of the test suite, not an option: without ``chromium`` on PATH
``chromium()`` fails the test with how to install it (.ci/run installs it).
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

PROBE = Path(__file__).with_name("layout_probe.js")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync")
_REPORT = re.compile(r'<pre id="layout-report">(.*?)</pre>', re.S)


def chromium() -> str:
    """The path of the chromium binary; fails the calling test when there is none."""
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("chromium is not on PATH: the picture tests render every page in "
                    "headless Chromium (Debian: apt-get install -y chromium; .ci/run "
                    "installs it)", pytrace=False)
    return path


def run(args: list[str], folder: Path) -> str:
    """Run headless Chromium with ``args`` and a fresh profile in ``folder``; its stdout."""
    profile = folder / "chromium-profile"
    done = subprocess.run([chromium(), *FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def layout(page: str, folder: Path, name: str = "page") -> dict:
    """The layout probe's report on ``page`` (HTML text) as Chromium draws it."""
    probed = page.replace("</body>", f"<script>{PROBE.read_text()}</script></body>", 1)
    path = folder / f"{name}.html"
    path.write_text(probed, encoding="utf-8")
    dom = run(["--window-size=1400,1000", "--dump-dom", path.as_uri()], folder)
    found = _REPORT.search(dom)
    assert found is not None, f"{name}: the layout probe did not report"
    return json.loads(html.unescape(found.group(1)))
