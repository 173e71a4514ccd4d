"""The kernel exports are imported with the first driver, not at every start-up.

``emu run APP`` with no driver needs none of ntoskrnl's export routines (emu.nt.ntos,
emu.nt.exports), Ke's interrupt and DPC delivery (emu.nt.kintr), the PE loader or SEH:
importing them cost every run about 6 ms (docs/performance.md, the start-up row). They
are imported when the first driver is loaded, and every export keeps its trap address:
the table is registered in the same order as before (a driver's import slots, the
debugger's ``nt!Name`` and every transcript show those addresses).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DRIVERS = ROOT / "guest" / "build" / "drivers"

LAZY = ("emu.nt.exports", "emu.nt.ntos", "emu.nt.ntos.ke", "emu.nt.kintr", "emu.nt.pe",
        "emu.nt.seh", "emu.nt.unwind")

# The export table as it was registered at start-up before the exports became lazy: 101
# entries from KERNEL_EXPORTS (0xFFFF8000'00004000), 16 bytes apart, DbgPrint first and
# the I/O manager's IopInvalidDeviceRequest last. The digest is of "name dll address" lines.
# The KPCR routines (emu.nt.ntos.current) come after it, so that none of those moved.
TABLE_SIZE = 101
LATER = ["KeGetCurrentThread", "KeGetCurrentProcessorNumberEx", "PsGetCurrentThread"]
TABLE_DIGEST = "9dbea84e07ec526619f9be132492e5b70ef9cfe6bf0a03d5ac5bfdb6ce35a310"
PINNED = {"DbgPrint": 0xFFFF_8000_0000_4000, "memcpy": 0xFFFF_8000_0000_41B0,
          "KeSetEvent": 0xFFFF_8000_0000_4500, "IopInvalidDeviceRequest": 0xFFFF_8000_0000_4640}

_PROGRAM = """
import json, sys
from emu import Machine
m = Machine("64M")
p = m.spawn(sys.argv[1], [])
m.run()
m.close()
before = sorted(name for name in {lazy!r} if name in sys.modules)
m = Machine("64M")
m.add_driver(sys.argv[2])
m.spawn(sys.argv[1], [])
m.run()
m.close()
from emu.nt import exports
table = [(e.name, e.dll, e.address) for e in exports._TABLE]
print(json.dumps({{"output": p.output.decode(), "before": before, "table": table}}))
"""


def _run(apps: Path) -> dict:
    """A fresh interpreter (nothing imported yet): an app alone, then the app with a driver."""
    out = subprocess.run([sys.executable, "-c", _PROGRAM.format(lazy=LAZY),
                          str(apps / "hello"), str(DRIVERS / "hello.sys")],
                         capture_output=True, text=True, check=True, timeout=120, cwd=ROOT)
    return json.loads(out.stdout.splitlines()[-1])


def test_a_run_without_drivers_imports_no_export_module(apps):
    result = _run(apps)
    assert result["output"] == "Hello, world!\n"
    assert result["before"] == []


def test_the_first_driver_registers_every_export_at_its_old_address(apps):
    table = _run(apps)["table"]
    assert [name for name, _, _ in table[TABLE_SIZE:]] == LATER
    assert [address for _, _, address in table[TABLE_SIZE:]] == \
        [0xFFFF_8000_0000_4000 + 16 * i for i in range(TABLE_SIZE, TABLE_SIZE + len(LATER))]
    table = table[:TABLE_SIZE]
    lines = "\n".join(f"{name} {dll} {address:#x}" for name, dll, address in table)
    by_name = {name: address for name, _, address in table}
    assert {name: by_name[name] for name in PINNED} == PINNED
    assert [address for _, _, address in table] == \
        [0xFFFF_8000_0000_4000 + 16 * i for i in range(TABLE_SIZE)]
    assert hashlib.sha256(lines.encode()).hexdigest() == TABLE_DIGEST
