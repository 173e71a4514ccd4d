"""Headless Chromium for the picture tests: render a page, measure what it draws.

``layout(page, folder)`` writes a copy of the page with tests/scenarios/layout_probe.js
appended, has ``chromium --headless --dump-dom`` lay it out and run the probe, and returns
the probe's report: {"svgs", "texts", "arrows", "strokes", "problems"}. The pages
themselves carry no script; only the test's copy does. ``Browser(folder).layout(page,
folder)`` reports the same from one Chromium kept for many pages (a tab each), which
tests/scenarios/test_tour_html.py keeps for its module.

Chromium is a requirement of the test suite, not an option: without ``chromium`` on PATH
``chromium()`` fails the test with how to install it (.ci/run installs it).
"""

from __future__ import annotations

import fcntl
import html
import json
import os
import re
import select
import shutil
import subprocess
from pathlib import Path

import pytest

PROBE = Path(__file__).with_name("layout_probe.js")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync")
_REPORT = re.compile(r'<pre id="layout-report">(.*?)</pre>', re.S)
# No name resolves and every connection is refused: a page that fetched anything would
# have a resource entry (a probe lists them) and nothing to show.
OFFLINE = ("--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9",
           "--proxy-bypass-list=<-loopback>")
# What a steppable page's probe reports (tests/viz): JSON in <pre id="steps-report">.
_STEPS_REPORT = re.compile(r'<pre id="steps-report">(.*?)</pre>', re.S)


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


class Browser:
    """One headless Chromium, driven over its DevTools pipe (``--remote-debugging-pipe``:
    it reads JSON commands, each ended by a NUL, from fd 3 and answers on fd 4), that lays
    out page after page, each in a tab of its own: one start of Chromium (about 0.5 s of
    CPU and 1.3 s of wall time) for all the pages of a module instead of one per page.
    ``layout`` reports as the module function does; ``flags`` are more of Chromium's."""

    def __init__(self, folder: Path, flags: tuple[str, ...] = ()) -> None:
        low_commands, self._to = os.pipe()
        self._from, low_answers = os.pipe()
        # Above any descriptor the child gets, so that moving them to 3 and 4 clobbers none.
        commands = fcntl.fcntl(low_commands, fcntl.F_DUPFD_CLOEXEC, 100)
        answers = fcntl.fcntl(low_answers, fcntl.F_DUPFD_CLOEXEC, 100)
        os.close(low_commands)
        os.close(low_answers)

        def as_fds_3_and_4() -> None:          # in the child, before exec (kept: pass_fds)
            os.dup2(commands, 3)
            os.dup2(answers, 4)

        self._proc = subprocess.Popen(
            [chromium(), *FLAGS, *flags, f"--user-data-dir={folder / 'chromium-profile'}",
             "--remote-debugging-pipe", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            pass_fds=(3, 4), preexec_fn=as_fds_3_and_4)
        os.close(commands)
        os.close(answers)
        self._buffer = b""
        self._next = 0

    def _send(self, method: str, params: dict | None = None, session: str | None = None) -> int:
        self._next += 1
        message = {"id": self._next, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        os.write(self._to, json.dumps(message).encode() + b"\0")
        return self._next

    def _receive(self, timeout: float = 180) -> dict:
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._from], [], [], timeout)
            assert ready, "headless Chromium did not answer"
            chunk = os.read(self._from, 1 << 20)
            assert chunk, "headless Chromium closed its DevTools pipe"
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def _call(self, method: str, params: dict | None = None,
              session: str | None = None) -> dict:
        """Send a command and wait for its answer (events meanwhile are dropped)."""
        sent = self._send(method, params, session)
        while True:
            message = self._receive()
            if message.get("id") == sent:
                assert "error" not in message, (method, message["error"])
                return message["result"]

    def dom(self, url: str, size: tuple[int, int] | None = None) -> str:
        """The page at ``url`` in a new tab (``size`` wide and high, or the window's, as
        ``--window-size`` would make it): its DOM once it has loaded, as ``--dump-dom``."""
        target = self._call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self._call("Target.attachToTarget",
                             {"targetId": target, "flatten": True})["sessionId"]
        try:
            if size is not None:
                self._call("Emulation.setDeviceMetricsOverride",
                           {"width": size[0], "height": size[1], "deviceScaleFactor": 1,
                            "mobile": False}, session)
            self._call("Page.enable", {}, session)
            self._call("Page.navigate", {"url": url}, session)
            while not (message := self._receive()).get("method") == "Page.loadEventFired" \
                    or message.get("sessionId") != session:
                pass
            value = self._call("Runtime.evaluate",
                               {"expression": "document.documentElement.outerHTML",
                                "returnByValue": True}, session)
            return value["result"]["value"]
        finally:
            self._call("Target.closeTarget", {"targetId": target})

    def layout(self, page: str, folder: Path, name: str = "page") -> dict:
        """The layout probe's report on ``page`` (HTML text) as Chromium draws it."""
        probed = page.replace("</body>", f"<script>{PROBE.read_text()}</script></body>", 1)
        path = folder / f"{name}.html"
        path.write_text(probed, encoding="utf-8")
        found = _REPORT.search(self.dom(path.as_uri(), (1400, 1000)))
        assert found is not None, f"{name}: the layout probe did not report"
        return json.loads(html.unescape(found.group(1)))

    def close(self) -> None:
        """Quit Chromium and wait for it."""
        try:
            self._send("Browser.close")
            self._proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self._proc.kill()
            self._proc.wait()
        os.close(self._to)
        os.close(self._from)


def steps_report(dom: str) -> dict:
    """The JSON a probe left in ``<pre id="steps-report">`` of the laid-out ``dom``."""
    found = _STEPS_REPORT.search(dom)
    assert found is not None, "the probe did not report"
    return json.loads(html.unescape(found.group(1)))


def probed(browser: Browser, text: str, folder: Path, name: str, probe: str,
           fragment: str = "") -> dict:
    """The report of ``probe`` (a script ending in a ``steps-report`` pre) run after the
    page ``text``'s own script, in ``browser``, the page opened at ``fragment``."""
    page = folder / f"{name}.html"
    page.write_text(text.replace("</body>", probe + "</body>", 1))
    return steps_report(browser.dom(page.as_uri() + fragment))


def without_script(folder: Path, src: str, report: str) -> dict:
    """What the page at ``src`` shows with JavaScript off: it is loaded into a frame
    sandboxed without allow-scripts (no script of its own runs), and the wrapper's script
    reports ``report``, a JavaScript expression of the frame's document ``d``, offline."""
    wrapper = folder / "nojs.html"
    wrapper.write_text(
        f'<!DOCTYPE html><html><body><iframe id="f" sandbox="allow-same-origin" '
        f'src="{src}"></iframe><script>window.addEventListener("load",'
        'function(){var d=document.getElementById("f").contentDocument;'
        'var pre=document.createElement("pre");pre.id="steps-report";'
        f'pre.textContent=JSON.stringify({report});'
        'document.body.appendChild(pre);});</script></body></html>')
    return steps_report(run([*OFFLINE, "--allow-file-access-from-files", "--dump-dom",
                             wrapper.as_uri()], folder))
