"""Crash dumps: the machine as it was when it stopped, in one file (a complete memory dump).

Layout: the magic line ``EMU-CRASH-DUMP 1\\n``, a JSON header (its length as 8 bytes
little-endian first), then all of physical RAM compressed with zlib. The header holds
the bug check, the CPU's registers, control registers, GDTR and TR, every process (pid,
name, CR3, state, threads with their saved registers, its image with symbols, its VADs,
handles and the exception that ended it), every loaded driver (name, base, size,
symbols), the PFN records of every frame in use, the IRPs in flight and the PFN
summary: what a debugger needs to walk page tables and name addresses offline
(`emu debug --dump FILE`, the debugger issue). Readers must accept headers without the
later keys (``descriptors``, ``current_pid``, ``irql``, ``pfn``, ``irps``, ``devices``,
and a process's ``image``, ``vads``, ``handles``, ``exception``, ``space``).
"""

from __future__ import annotations

import dataclasses
import json
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unicorn import x86_const as ux

from emu.nt.layout import PAGE_SIZE
from emu.nt.mm.pfn import FrameUse
from emu.nt.mm.vad import Vad, VadSet
from emu.nt.process import ThreadState

if TYPE_CHECKING:
    from emu.hw.cpu import Cpu
    from emu.nt.kernel import Executive
    from emu.nt.process import Process, Thread

MAGIC = b"EMU-CRASH-DUMP 1\n"
REGISTERS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10",
             "r11", "r12", "r13", "r14", "r15", "rip", "rflags", "cs", "ss", "cr2",
             "ds", "es", "fs", "gs", "fs_base", "gs_base")
THREAD_REGISTERS = tuple(name for name in REGISTERS if name != "cr2")


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
        "descriptors": descriptor_tables(cpu),
        "current_pid": _current_pid(ex),
        "irql": ex.irql if bc is None else bc.irql,
        "processes": [_process(ex, p) for p in ex.processes],
        "drivers": [{"name": d.image.name, "base": d.image.base,
                     "size": d.image.end - d.image.base, "unloaded": d.unloaded,
                     "symbols": d.image.symbols, "path": d.image.path} for d in ex.drivers],
        "frames": {use.value: ex.mm.pfn.count(use) for use in FrameUse},
        "pfn": _pfn_records(ex),
        "irps": [[irp, record.completed] for irp, record in sorted(ex.io.irps.items())],
        "devices": [[d.name, d.address, d.driver.image.name]
                    for d in sorted(ex.io.devices.values(), key=lambda d: d.name)],
        "ram_size": ex.mem.size,
    }


def descriptor_tables(cpu: Cpu) -> dict[str, list[int]]:
    """GDTR (base, limit) and TR (selector, base, limit), as LGDT and LTR loaded them."""
    _, gdt_base, gdt_limit, _ = cpu.uc.reg_read(ux.UC_X86_REG_GDTR)
    tr_selector, tr_base, tr_limit, _ = cpu.uc.reg_read(ux.UC_X86_REG_TR)
    return {"gdtr": [gdt_base, gdt_limit], "tr": [tr_selector, tr_base, tr_limit]}


def context_registers(context: Any) -> dict[str, int]:
    """The registers in a thread's saved Unicorn context (THREAD_REGISTERS)."""
    return {name: context.reg_read(getattr(ux, f"UC_X86_REG_{name.upper()}"))
            for name in THREAD_REGISTERS}


def handle_detail(obj: Any) -> str:
    """What a handle names, in a few words (the debugger's ``handles``)."""
    kind = obj.object_type.value
    if kind == "Process":
        return f'process {obj.pid} "{obj.name}" ({obj.state.value})'
    if kind == "Thread":
        return f"thread {obj.tid} of process {obj.process.pid} ({obj.state.value})"
    if kind == "Event":
        reset = "notification" if obj.manual_reset else "synchronization"
        return f"{reset} event, {'set' if obj.state else 'not set'}"
    if kind == "File":
        return f"{obj.path}, position {obj.position} of {len(obj.data)} bytes"
    if kind == "Device":
        return f"{obj.device.name} ({obj.device.driver.image.name})"
    return str(getattr(obj, "path", kind))


def _current_pid(ex: Executive) -> int | None:
    """The process whose address space CR3 holds (its thread faulted, or was interrupted)."""
    if ex.current is not None:
        return ex.current.pid
    return next((p.pid for p in ex.processes
                 if p.space.cr3 == ex.cpu.cr3 and p.space in ex.mm.spaces), None)


def _process(ex: Executive, p: Process) -> dict[str, Any]:
    image = p.image
    return {
        "pid": p.pid, "name": p.name, "cr3": p.space.cr3, "bits": p.bits,
        "state": p.state.value, "space": p.space in ex.mm.spaces,
        "exit_status": p.exit_status, "parent_pid": p.parent_pid, "path": image.path,
        "threads": [_thread(ex, t) for t in p.threads],
        "image": {"name": image.name, "low": min(image.pages), "bits": image.bits,
                  "high": max(image.pages) + PAGE_SIZE, "symbols": image.symbols},
        "vads": [_vad(v) for v in (p.vads if isinstance(p.vads, VadSet) else ())],
        "handles": [[value, obj.object_type.value, handle_detail(obj)]
                    for value, obj in p.handles.items()],
        "exception": None if p.exception is None else dataclasses.asdict(p.exception),
    }


def _thread(ex: Executive, t: Thread) -> dict[str, Any]:
    registers = None
    if t is ex.current_thread:
        registers = {name: ex.cpu.reg(name) for name in THREAD_REGISTERS}
    elif t.context is not None and t.state is not ThreadState.TERMINATED:
        registers = context_registers(t.context)
    rip = registers["rip"] if registers else \
        (t.start_rip if t.state is not ThreadState.TERMINATED else None)
    return {"tid": t.tid, "state": t.state.value, "rip": rip,
            "started": t.context is not None or t is ex.current_thread,
            "registers": registers}


def _vad(vad: Vad) -> dict[str, Any]:
    return {"base": vad.base, "end": vad.end, "type": vad.type.name,
            "protect": int(vad.allocation_protect), "stack": vad.stack,
            "runs": [[r.start, r.end, r.state.name, int(r.protect)] for r in vad.runs]}


def _pfn_records(ex: Executive) -> list[list[Any]]:
    """[pfn, use, owner, va, pte_pa, slot, modified, locks, had_code] of every frame not free."""
    out = []
    for number, e in enumerate(ex.mm.pfn.entries):
        if e.use is not FrameUse.FREE:
            out.append([number, e.use.value, e.owner, e.va, e.pte_pa, e.slot, e.modified,
                        e.locks, e.had_code])
    return out


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
