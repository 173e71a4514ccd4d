"""Formatting helpers shared by messages, traces and pictures."""

from __future__ import annotations

from emu.nt.process import ExceptionInfo, Process
from emu.nt.status import status_name


def addr(value: int, *, ticks: bool = False) -> str:
    """``0xffff800000001000``, or WinDbg style ``0xffff8000'00001000`` with ``ticks``."""
    text = f"{value:x}"
    if ticks and value > 0xFFFF_FFFF:
        text = f"{value >> 32:x}'{value & 0xFFFF_FFFF:08x}"
    return "0x" + text


def status(code: int) -> str:
    """``STATUS_ACCESS_VIOLATION (0xC0000005)``."""
    return f"{status_name(code)} (0x{code & 0xFFFF_FFFF:08X})"


def exception_line(proc: Process, info: ExceptionInfo) -> str:
    """One line saying how a process died, e.g. ``process 12 "badread" terminated: ...``."""
    what = status(info.code)
    if info.access is not None and info.address is not None:
        verb = {"read": "reading", "write": "writing", "execute": "executing"}[info.access]
        what += f" {verb} {addr(info.address)}"
        if info.detail.startswith("non-canonical"):
            what += f" ({info.detail})"      # Windows reports -1; say what really happened
    return (f'process {proc.pid} "{proc.name}" terminated: {what} '
            f"at rip {addr(info.rip)}: {info.instruction}")
