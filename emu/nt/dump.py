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

A dump is hostile input: ``read`` checks the whole header against one schema
(check_header: every field's type and range, VADs inside the user half, frames inside
RAM...) before anything uses it, and inflates RAM a chunk at a time, never beyond the
size the header declares (at most 64 GiB). Whatever is wrong is one line,
``FILE: not a crash dump: WHY``.
"""

from __future__ import annotations

import dataclasses
import json
import mmap
import os
import stat
import struct
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unicorn import x86_const as ux

from emu.nt.layout import PAGE_SIZE, USER_SPACE_END
from emu.nt.mm.pfn import FrameUse
from emu.nt.mm.vad import MemState, MemType, Vad, VadSet
from emu.nt.process import ProcessState, ThreadState

if TYPE_CHECKING:
    from emu.hw.cpu import Cpu
    from emu.nt.interfaces import CrashDumpSource
    from emu.nt.process import Process, Thread

MAGIC = b"EMU-CRASH-DUMP 1\n"
REGISTERS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10",
             "r11", "r12", "r13", "r14", "r15", "rip", "rflags", "cs", "ss", "cr2",
             "ds", "es", "fs", "gs", "fs_base", "gs_base")
THREAD_REGISTERS = tuple(name for name in REGISTERS if name != "cr2")


MIN_RAM, MAX_RAM = 1 << 20, 64 << 30        # what a machine can have (emu.machine)
CHUNK = 1 << 20                              # bytes of the file read, and inflated, at once
_MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000 if sys.platform == "linux" else 0)


class DumpError(Exception):
    """Not a crash dump this version of emu can read (one line)."""


@dataclass
class CrashDump:
    """A crash dump read back: its header (checked against the schema) and physical RAM
    (bytes, or a map of them whose pages of zeros take no memory)."""

    header: dict[str, Any]
    ram: bytes | mmap.mmap

    def read_physical(self, pa: int, n: int) -> bytes:
        """RAM bytes as the machine had them (open bus, 0xFF, beyond the end)."""
        if not 0 <= pa < len(self.ram):
            return b"\xff" * n
        return self.ram[pa:pa + n].ljust(n, b"\xff")


def header(ex: CrashDumpSource) -> dict[str, Any]:
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
                     "symbols": d.image.symbols, "path": d.image.path,
                     "functions": [[f.begin, f.end, f.unwind_info] for f in d.image.functions],
                     "sections": [[s.name, s.va, s.size, s.flags, s.discardable]
                                  for s in d.image.sections]} for d in ex.drivers],
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


def _current_pid(ex: CrashDumpSource) -> int | None:
    """The process whose address space CR3 holds (its thread faulted, or was interrupted)."""
    if ex.current is not None:
        return ex.current.pid
    return next((p.pid for p in ex.processes
                 if p.space.cr3 == ex.cpu.cr3 and p.space in ex.mm.spaces), None)


def _process(ex: CrashDumpSource, p: Process) -> dict[str, Any]:
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


def _thread(ex: CrashDumpSource, t: Thread) -> dict[str, Any]:
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


def _pfn_records(ex: CrashDumpSource) -> list[list[Any]]:
    """[pfn, use, owner, va, pte_pa, slot, modified, locks, had_code] of every frame not free."""
    out = []
    for number, e in enumerate(ex.mm.pfn.entries):
        if e.use is not FrameUse.FREE:
            out.append([number, e.use.value, e.owner, e.va, e.pte_pa, e.slot, e.modified,
                        e.locks, e.had_code])
    return out


def write(ex: CrashDumpSource, path: str | Path) -> None:
    """Write the crash dump of ``ex`` to ``path`` (OSError if it cannot be written)."""
    meta = json.dumps(header(ex), sort_keys=True).encode()
    with open(path, "wb") as f:
        f.write(MAGIC)
        f.write(struct.pack("<Q", len(meta)))
        f.write(meta)
        deflate = zlib.compressobj(1)
        for pa in range(0, ex.mem.size, 16 * CHUNK):     # never all of RAM at once
            f.write(deflate.compress(ex.mem.read(pa, min(16 * CHUNK, ex.mem.size - pa))))
        f.write(deflate.flush())


def read(path: str | Path) -> CrashDump:
    """Read a crash dump back; DumpError ``FILE: not a crash dump: WHY`` (one line) if it
    is not one, or is damaged. The work is bounded by the file: the header is checked
    whole (check_header) before anything is used, and RAM is inflated a chunk at a time,
    never beyond the size the header declares."""
    try:
        # Checked on the open file, not the path (which could change in between); O_NONBLOCK:
        # opening a FIFO with no writer must not wait (a regular file ignores it).
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):    # a FIFO would block, a device never end
                raise DumpError("it is not a regular file")
            return _read(f)
    except DumpError as err:
        raise DumpError(f"{path}: not a crash dump: {err}") from None
    except OSError as err:
        raise DumpError(f"{path}: cannot read: {err.strerror or err}") from None


def _read(f: Any) -> CrashDump:
    if f.read(len(MAGIC)) != MAGIC:
        raise DumpError(f"its first line is not {MAGIC.decode().strip()!r} (not an emu crash "
                        "dump, or one of another version)")
    raw = f.read(8)
    if len(raw) != 8:
        raise DumpError("it ends before the header's length")
    (size,) = struct.unpack("<Q", raw)
    remaining = _file_size(f) - f.tell()
    if size > remaining:
        raise DumpError(f"its header's length ({size} bytes) runs past the end of the file")
    try:
        meta = json.loads(f.read(size))
    except (ValueError, RecursionError) as err:        # UnicodeDecodeError is a ValueError
        raise DumpError(f"its header is not JSON ({type(err).__name__})") from None
    check_header(meta)
    return CrashDump(meta, _inflate(f, meta["ram_size"]))


def _file_size(f: Any) -> int:
    here = f.tell()
    end = f.seek(0, 2)
    f.seek(here)
    return end


def _inflate(f: Any, size: int) -> mmap.mmap:
    """The zlib stream at ``f``'s position, inflated a chunk at a time into ``size`` bytes
    (pages of zeros are not written, so they take no memory); DumpError if it is damaged
    or inflates to more or less than ``size``."""
    ram = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE)
    inflate, at = zlib.decompressobj(), 0
    try:
        while not inflate.eof:
            data = f.read(CHUNK)
            if not data:
                raise DumpError(f"its RAM image ends after {at} of {size} bytes")
            while data and not inflate.eof:
                out = inflate.decompress(data, size - at + 1)     # at most one byte too many
                if at + len(out) > size:
                    raise DumpError(f"its RAM image is larger than the {size} bytes the "
                                    "header declares")
                _store(ram, at, out)
                at += len(out)
                data = inflate.unconsumed_tail
        if at != size:
            raise DumpError(f"its RAM image is {at} bytes, not the {size} the header declares")
        if inflate.unused_data or f.read(1):
            raise DumpError("there is data after its RAM image")
    except zlib.error as err:
        ram.close()
        raise DumpError(f"its RAM image is damaged ({err})") from None
    except DumpError:
        ram.close()
        raise
    return ram


_ZERO = bytes(PAGE_SIZE)


def _store(ram: mmap.mmap, at: int, data: bytes) -> None:
    """Write ``data`` at ``at``, skipping whole pages of zeros (the map reads them as 0)."""
    view = memoryview(data)
    for off in range(0, len(data), PAGE_SIZE):
        piece = view[off:off + PAGE_SIZE]
        if piece != _ZERO[:len(piece)]:
            ram[at + off:at + off + len(piece)] = piece


# -- the header's schema -------------------------------------------------------------------------
#
# Every field a reader uses is checked here, once, before any is used: its type, its range,
# and what it must agree with (VADs inside the user half, frames inside RAM, a process's pid
# unique...). A checker takes (value, where) and raises DumpError naming the field.

Check = Callable[[Any, str], None]
U64 = 1 << 64
MAX_ITEMS = 1 << 20          # entries in any one list of the header


def _bad(where: str, what: str) -> DumpError:
    return DumpError(f"{where} {what}")


def _int(lo: int = 0, hi: int = U64) -> Check:
    def check(v: Any, where: str) -> None:
        if type(v) is not int or not lo <= v < hi:
            raise _bad(where, f"is not an integer in [{lo:#x}, {hi:#x})")
    return check


def _one_of(*choices: Any) -> Check:
    def check(v: Any, where: str) -> None:
        if type(v) not in (str, int, bool) or v not in choices:
            raise _bad(where, f"is not one of {', '.join(map(str, choices))}")
    return check


def _str(v: Any, where: str) -> None:
    if type(v) is not str:
        raise _bad(where, "is not a string")


def _bool(v: Any, where: str) -> None:
    if type(v) is not bool:
        raise _bad(where, "is not true or false")


def _optional(check: Check) -> Check:
    def optional(v: Any, where: str) -> None:
        if v is not None:
            check(v, where)
    return optional


def _list(item: Check, n: int | None = None, most: int = MAX_ITEMS) -> Check:
    def check(v: Any, where: str) -> None:
        if type(v) is not list or (n is not None and len(v) != n) or len(v) > most:
            raise _bad(where, f"is not a list of {n if n is not None else f'at most {most}'}"
                              " items")
        for i, x in enumerate(v):
            item(x, f"{where}[{i}]")
    return check


def _tuple(*items: Check, least: int | None = None) -> Check:
    """A list whose i-th item passes items[i] (at least ``least`` of them)."""
    def check(v: Any, where: str) -> None:
        if type(v) is not list or not (least or len(items)) <= len(v) <= len(items):
            raise _bad(where, f"is not a list of {len(items)} items")
        for i, (x, c) in enumerate(zip(v, items, strict=False)):
            c(x, f"{where}[{i}]")
    return check


def _map(value: Check, keys: tuple[str, ...] | None = None) -> Check:
    def check(v: Any, where: str) -> None:
        if type(v) is not dict or len(v) > MAX_ITEMS:
            raise _bad(where, "is not an object")
        for k, x in v.items():
            if keys is not None and k not in keys:
                raise _bad(where, f"has an unknown key {k[:40]!r}")
            value(x, f"{where}.{k[:40]}")
    return check


def _object(required: dict[str, Check], optional: dict[str, Check] | None = None,
            closed: bool = False) -> Check:
    """A JSON object with these keys (unknown ones ignored, unless ``closed``)."""
    def check(v: Any, where: str) -> None:
        if type(v) is not dict:
            raise _bad(where, "is not an object")
        for k, c in required.items():
            if k not in v:
                raise _bad(where, f"has no {k!r}")
            c(v[k], f"{where}.{k}")
        for k, c in (optional or {}).items():
            if k in v:
                c(v[k], f"{where}.{k}")
        if closed and not set(v) <= set(required) | set(optional or {}):
            raise _bad(where, f"has an unknown key {sorted(set(v) - set(required))[0][:40]!r}")
    return check


U = _int()


def _range(lo_key: str, hi_key: str, limit: int = U64) -> Check:
    def check(v: dict, where: str) -> None:
        if not v[lo_key] <= v[hi_key] <= limit:
            raise _bad(where, f"has {lo_key} {v[lo_key]:#x} beyond {hi_key} {v[hi_key]:#x}"
                              f" (or beyond {limit:#x})")
    return check


def _check_vad(v: Any, where: str) -> None:
    _object({"base": U, "end": U, "type": _one_of(*(t.name for t in MemType)),
             "runs": _list(_tuple(U, U, _one_of(*(s.name for s in MemState)), _int(0, 1 << 32)))},
            {"protect": _int(0, 1 << 32), "stack": _bool})(v, where)
    base, end = v["base"], v["end"]
    if base % PAGE_SIZE or end % PAGE_SIZE or not base < end <= USER_SPACE_END:
        raise _bad(where, f"[{base:#x}, {end:#x}) is not whole pages of the user half")
    at = base
    for i, (start, stop, _, _) in enumerate(v["runs"]):
        if start % PAGE_SIZE or stop % PAGE_SIZE or not at <= start < stop <= end:
            raise _bad(f"{where}.runs[{i}]", f"[{start:#x}, {stop:#x}) is not whole pages "
                                             f"after the last run, inside [{base:#x}, {end:#x})")
        at = stop


def _check_image(v: Any, where: str) -> None:
    _object({"name": _str, "low": U, "high": U, "symbols": _map(U)},
            {"bits": _one_of(32, 64)})(v, where)
    _range("low", "high")(v, where)


REGISTER_MAP = _map(U, REGISTERS)
THREAD = _object({"tid": _int(0, 1 << 32), "state": _one_of(*(s.value for s in ThreadState))},
                 {"rip": _optional(U), "started": _bool,
                  "registers": _optional(_map(U, THREAD_REGISTERS))})
EXCEPTION = _object({"code": _int(0, 1 << 32), "rip": U, "instruction": _str},
                    {"access": _optional(_str), "address": _optional(U),
                     "params": _list(U, most=15), "detail": _str}, closed=True)
PROCESS = _object(
    {"pid": _int(0, 1 << 32), "name": _str, "cr3": U,
     "state": _one_of(*(s.value for s in ProcessState)), "threads": _list(THREAD, most=4096)},
    {"bits": _one_of(32, 64), "space": _bool, "exit_status": _optional(_int(-(1 << 63), U64)),
     "parent_pid": _optional(_int(0, 1 << 32)), "path": _str, "image": _optional(_check_image),
     "vads": _list(_check_vad, most=1 << 16),
     "handles": _list(_tuple(U, _str, _str), most=1 << 16),
     "exception": _optional(EXCEPTION)})
DRIVER = _object({"name": _str, "base": U, "size": U},
                 {"unloaded": _bool, "symbols": _map(U), "path": _str,
                  "functions": _list(_tuple(U, U, U), most=1 << 20),
                  "sections": _list(_tuple(_str, U, U, _int(0, 8), _bool), most=96)})
BUGCHECK = _object({"code": _int(0, 1 << 32), "params": _list(U, 4)},
                   {"name": _str, "rip": _optional(U), "instruction": _str, "detail": _str,
                    "driver": _str, "location": _str, "process": _str, "irql": _int(0, 16),
                    "backtrace": _list(_str)})
HEADER = _object(
    {"registers": REGISTER_MAP, "control": _map(U, ("cr0", "cr3", "cr4", "efer")),
     "processes": _list(PROCESS, most=1 << 16), "drivers": _list(DRIVER, most=64),
     "ram_size": _int(MIN_RAM, MAX_RAM + 1)},
    {"bugcheck": _optional(BUGCHECK), "clock": U, "current_pid": _optional(_int(0, 1 << 32)),
     "irql": _int(0, 16), "frames": _map(U),
     "descriptors": _object({"gdtr": _tuple(U, _int(0, 1 << 16)),
                             "tr": _tuple(_int(0, 1 << 16), U, _int(0, 1 << 32))}),
     "pfn": _list(_tuple(U, _one_of(*(u.value for u in FrameUse)), _optional(U), _optional(U),
                         _optional(U), _optional(U), _bool, _int(0, 1 << 32), _bool, least=2)),
     "irps": _list(_tuple(U, _bool)), "devices": _list(_tuple(_str, U, _str))})


def check_header(meta: Any) -> None:
    """DumpError naming the first field of a crash dump's header that a reader could not
    use as it is: a wrong type, a value out of range, or one that disagrees with another."""
    HEADER(meta, "header")
    ram = meta["ram_size"]
    if ram % PAGE_SIZE:
        raise _bad("header.ram_size", f"{ram:#x} is not a whole number of pages")
    pids = [p["pid"] for p in meta["processes"]]
    if len(set(pids)) != len(pids):
        raise _bad("header.processes", "name a pid twice")
    for i, d in enumerate(meta["drivers"]):
        if d["base"] + d["size"] > U64:
            raise _bad(f"header.drivers[{i}]", "runs past the end of the address space")
    for i, record in enumerate(meta.get("pfn", ())):
        if record[0] >= ram // PAGE_SIZE:
            raise _bad(f"header.pfn[{i}]", f"names frame {record[0]:#x}, beyond RAM")
