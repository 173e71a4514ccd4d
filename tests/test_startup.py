"""Start-up (make bench's start-up row, docs/performance.md): what importing emu and
starting `emu` do with Python's cyclic garbage collector."""

from __future__ import annotations

import subprocess
import sys

import pytest


def python(code: str, *args: str) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    return r


@pytest.mark.parametrize("enabled", [True, False])
def test_importing_emu_collects_nothing_and_leaves_the_collector_as_it_was(enabled):
    """About 30,000 objects made at import live as long as the process: no collection walks
    them while they are made, and the collector is left on (or off) as it was."""
    # Counted: the collections while emu's own code runs (emu/__init__.py on the stack),
    # not one that compiling a stale emu/__init__.py may cause before it starts.
    code = ("import gc, os, sys\n"
            f"{'' if enabled else 'gc.disable()'}\n"
            "runs = []\n"
            "def seen(phase, info):\n"
            "    frame = sys._getframe(0)\n"
            "    while frame is not None:\n"
            "        if frame.f_code.co_filename.endswith(os.path.join('emu', '__init__.py')):\n"
            "            runs.append(phase)\n"
            "            break\n"
            "        frame = frame.f_back\n"
            "gc.callbacks.append(seen)\n"
            "import emu\n"
            "print(len(runs), gc.isenabled(), emu.Machine.__name__)\n")
    assert python(code).stdout == f"0 {enabled} Machine\n"


def test_importing_emu_keeps_what_the_program_froze_frozen():
    """(A frozen object freed meanwhile leaves the count: a few may go.)"""
    code = ("import gc\n"
            "gc.freeze()\n"
            "frozen = gc.get_freeze_count()\n"
            "import emu\n"
            "print(frozen > 1000, frozen - 100 < gc.get_freeze_count() <= frozen)\n")
    assert python(code).stdout == "True True\n"


def test_emu_freezes_what_start_up_made(apps):
    """`emu` (its own command line) freezes the objects start-up made (gc.freeze): no
    collection walks them again, the ones at exit included; a call of main() with words,
    as from another program, leaves the collector alone."""
    code = ("import atexit, gc, runpy, sys\n"
            "atexit.register(lambda: print(gc.get_freeze_count() > 20000, file=sys.stderr))\n"
            "if sys.argv[1] == 'main':\n"
            "    sys.argv = ['emu', 'run', sys.argv[2]]\n"
            "    runpy.run_module('emu', run_name='__main__')\n"
            "from emu.cli import main\n"
            "sys.exit(main(['run', sys.argv[2]]))\n")
    for how, frozen in (("main", "True"), ("words", "False")):
        r = python(code, how, str(apps / "hello"))
        assert (r.stdout, r.stderr) == ("Hello, world!\n", frozen + "\n")
