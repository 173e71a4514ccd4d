"""`emu` as a subprocess and its debugger's batch transcripts: shared by the history, query
and analyze tests of tests/debugger."""

from __future__ import annotations

import subprocess
from pathlib import Path

import emurun

ROOT = Path(__file__).resolve().parents[2]
DRIVERS = ROOT / "guest" / "build" / "drivers"


def emu(*args, stdin=None) -> subprocess.CompletedProcess:
    """``python -m emu ARGS`` from the checkout, output captured (in a fork of this process:
    tests/emurun.py)."""
    return emurun.emu(*args, input=stdin, cwd=ROOT, timeout=300)


def machine_argv(drivers, commands) -> list:
    """``--driver D ... APP ARGS -- APP2 ARGS2 ...`` for ``drivers`` (paths) and ``commands``
    ((app path, args) pairs)."""
    argv: list = [a for d in drivers for a in ("--driver", d)]
    for n, (app, args) in enumerate(commands):
        argv += (["--"] if n else []) + [app, *args]
    return argv


def answer(out: str, command: str) -> list[str]:
    """The lines printed by the first ``command`` of a batch transcript."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.endswith(") " + command))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("(emu")),
               len(lines))
    return lines[start + 1:end]
