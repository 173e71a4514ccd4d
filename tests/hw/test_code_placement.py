"""Where the engines' translated code lies (emu/hw/cpu.py ``_translated_code_kept_far``):
on this host an engine whose code buffer begins within 2 GiB of libunicorn runs its
translated code about 2.8x slower (docs/performance.md, "Where an engine's translated code
lies"), and a process's first engine used to land right below the library. Each check runs
in a fresh interpreter: only there is the machine's engine the process's first."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Make a machine first in a process, run hello, and report the mappings: libunicorn's
# lowest address, and every writable and executable mapping of 64 MiB or more (QEMU's code
# buffers, 1 GiB each; ctypes' callback trampolines are a page).
PROBE = """
import json, sys
from pathlib import Path
from emu import Machine
m = Machine("64M")
proc = m.spawn(Path(sys.argv[1]), [])
m.run()
lib, code = None, []
for line in open("/proc/self/maps"):
    span, perms, *rest = line.split()
    low, high = (int(x, 16) for x in span.split("-"))
    if rest and "libunicorn.so" in rest[-1]:
        lib = low if lib is None else min(lib, low)
    if "w" in perms and "x" in perms and high - low >= 64 << 20:
        code.append([low, high])
print(json.dumps({"status": proc.exit_status, "lib": lib, "code": code}))
"""


def probe(*prefix: str) -> dict:
    out = subprocess.run([*prefix, sys.executable, "-c", PROBE,
                          str(ROOT / "guest" / "build" / "apps" / "hello")],
                         capture_output=True, text=True, timeout=120, cwd=ROOT, check=True)
    return json.loads(out.stdout)


def test_every_engine_s_translated_code_lies_beyond_2_gib_of_libunicorn() -> None:
    seen = probe()
    assert seen["status"] == 0 and seen["lib"] is not None and seen["code"]
    # The machine's engine and the scratch ones the CPU made to learn Unicorn's layouts.
    assert [hex(low) for low, _high in seen["code"] if seen["lib"] - low < 2 << 30] == []
