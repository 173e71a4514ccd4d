"""A system call's arguments and results in words, read from the caller's memory.

The argument registers follow docs/abi.md; pointers are followed through the caller's own
page tables (emu.scenarios.watch.read_user), never with side effects. A service without an
entry here is named without its arguments.
"""

from __future__ import annotations

from collections.abc import Callable

from emu.fmt import addr
from emu.nt.process import Process
from emu.nt.syscalls import Service
from emu.scenarios.describe import size
from emu.scenarios.watch import read_user, text_of

_STRING_MAX = 64


def pointer(proc: Process, va: int) -> int | None:
    """The pointer-sized value at ``va`` (4 bytes in a 32-bit process), or None."""
    width = 4 if proc.bits == 32 else 8
    data = read_user(proc, va, width)
    return None if data is None else int.from_bytes(data, "little")


def _where(value: int | None) -> str:
    return "?" if value is None else addr(value, ticks=True)


def _allocate(proc: Process, args: tuple[int, ...]) -> str:
    base, length = pointer(proc, args[0]), pointer(proc, args[1])
    where = "anywhere" if base == 0 else f"at {_where(base)}"
    return f"{size(length) if length is not None else '?'} {where}"


def _open(proc: Process, args: tuple[int, ...]) -> str:
    return f'"{text_of(_string(proc, args[0]))}"'


def _string(proc: Process, va: int) -> bytes:
    out = bytearray()
    while len(out) < _STRING_MAX:
        chunk = read_user(proc, va + len(out), 1)
        if not chunk or chunk == b"\0":
            break
        out += chunk
    return bytes(out)


_ARGS: dict[int, Callable[[Process, tuple[int, ...]], str]] = {
    Service.NtAllocateVirtualMemory: _allocate,
    Service.NtOpenFile: _open,
    Service.NtReadFile: lambda p, a: f"handle {a[0]}, buffer {addr(a[1], ticks=True)}, "
                                     f"{size(a[2])}",
    Service.NtSetEvent: lambda p, a: f"handle {a[0]}",
    Service.NtClose: lambda p, a: f"handle {a[0]}",
    Service.NtCreateEvent: lambda p, a: "",
}


def service_words(proc: Process, number: int, args: tuple[int, ...]) -> str:
    """The arguments of service ``number`` as the caller passed them, in words."""
    describe = _ARGS.get(number)
    return describe(proc, args) if describe is not None else ""


def result_words(proc: Process, number: int, args: tuple[int, ...],
                 result: int | None) -> str:
    """What a successful call handed back through its pointers, e.g. ``: handle 4``."""
    if result is None or result & 0x8000_0000:
        return ""
    if number == Service.NtAllocateVirtualMemory:
        return f": {_allocate(proc, args)}"
    if number in (Service.NtOpenFile, Service.NtCreateEvent):
        handle = pointer(proc, args[1] if number == Service.NtOpenFile else args[0])
        return f": handle {handle}" if handle is not None else ""
    return ""
