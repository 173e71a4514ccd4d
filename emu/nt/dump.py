"""Crash dumps: the machine as it was when it stopped, in one file (a complete memory dump).

Layout: the magic line ``EMU-CRASH-DUMP 1\\n``, a JSON header (its length as 8 bytes
little-endian first), then all of physical RAM compressed with zlib. The header holds
the bug check, the CPU's registers and control registers, every process (pid, name,
CR3, state, threads), every loaded driver (name, base, size, symbols) and the PFN
summary: what a debugger needs to walk page tables and name addresses offline
(`emu debug --dump FILE`, the debugger issue).
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emu.nt.mm.pfn import FrameUse

if TYPE_CHECKING:
    from emu.nt.kernel import Executive

MAGIC = b"EMU-CRASH-DUMP 1\n"
REGISTERS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10",
             "r11", "r12", "r13", "r14", "r15", "rip", "rflags", "cs", "ss", "cr2")


class DumpError(Exception):
    """Not a crash dump this version of emu can read (one line)."""


@dataclass
class CrashDump:
    """A crash dump read back: its header and physical RAM."""

    header: dict[str, Any]
    ram: bytes

    def read_physical(self, pa: int, n: int) -> bytes:
        """RAM bytes as the machine had them (open bus, 0xFF, beyond the end)."""
        return self.ram[pa:pa + n].ljust(n, b"\xff") if pa < len(self.ram) else b"\xff" * n


def header(ex: Executive) -> dict[str, Any]:
    """Everything about the stopped machine except RAM, as JSON-ready data."""
    cpu, bc = ex.cpu, ex.bugcheck
    return {
        "bugcheck": None if bc is None else {
            "code": bc.code, "name": bc.name, "params": list(bc.params), "rip": bc.rip,
            "instruction": bc.instruction, "detail": bc.detail, "driver": bc.driver,
            "location": bc.location, "process": bc.process, "irql": bc.irql,
            "backtrace": bc.backtrace},
        "registers": {name: cpu.reg(name) for name in REGISTERS},
        "control": {"cr0": cpu.cr0, "cr3": cpu.cr3, "cr4": cpu.cr4, "efer": cpu.efer},
        "clock": ex.clock,
        "processes": [{"pid": p.pid, "name": p.name, "cr3": p.space.cr3, "bits": p.bits,
                       "state": p.state.value,
                       "threads": [{"tid": t.tid, "state": t.state.value}
                                   for t in p.threads]} for p in ex.processes],
        "drivers": [{"name": d.image.name, "base": d.image.base,
                     "size": d.image.end - d.image.base, "unloaded": d.unloaded,
                     "symbols": d.image.symbols} for d in ex.drivers],
        "frames": {use.value: ex.mm.pfn.count(use) for use in FrameUse},
        "ram_size": ex.mem.size,
    }


def write(ex: Executive, path: str | Path) -> None:
    """Write the crash dump of ``ex`` to ``path`` (OSError if it cannot be written)."""
    meta = json.dumps(header(ex), sort_keys=True).encode()
    with open(path, "wb") as f:
        f.write(MAGIC)
        f.write(struct.pack("<Q", len(meta)))
        f.write(meta)
        f.write(zlib.compress(ex.mem.read(0, ex.mem.size), 1))


def read(path: str | Path) -> CrashDump:
    """Read a crash dump back; DumpError with a one-line reason if it is not one."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise DumpError(f"{path}: cannot read: {err.strerror}") from None
    if not data.startswith(MAGIC):
        raise DumpError(f"{path}: not an emu crash dump")
    try:
        (size,) = struct.unpack_from("<Q", data, len(MAGIC))
        start = len(MAGIC) + 8
        meta = json.loads(data[start:start + size])
        ram = zlib.decompress(data[start + size:])
    except (struct.error, ValueError, zlib.error) as err:
        raise DumpError(f"{path}: damaged crash dump ({type(err).__name__})") from None
    if len(ram) != meta.get("ram_size"):
        raise DumpError(f"{path}: damaged crash dump (RAM size)")
    return CrashDump(meta, ram)
