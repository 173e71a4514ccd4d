"""A real crash dump to damage, shared by the dump tests (test_dump, test_dump_fuzz)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from emu import Machine
from emu.nt import dump

DRIVERS = Path(__file__).resolve().parents[2] / "guest" / "build" / "drivers"


def crash_dump(apps: Path, directory: Path) -> Path:
    """Write a crash dump of a small machine (crash.sys under hello) in ``directory``."""
    m = Machine("8M")
    m.add_driver(DRIVERS / "crash.sys")
    m.spawn(apps / "hello")
    assert m.run().stopped == "bug check"
    out = directory / "crash.dmp"
    dump.write(m.executive, out)
    m.close()
    return out


def parts(path: Path) -> tuple[dict, bytes]:
    """The header and the compressed RAM of the dump at ``path``."""
    data = path.read_bytes()
    (size,) = struct.unpack_from("<Q", data, len(dump.MAGIC))
    start = len(dump.MAGIC) + 8
    return json.loads(data[start:start + size]), data[start + size:]
