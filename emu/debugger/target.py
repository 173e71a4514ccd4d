"""The state the debugger's commands read: a live machine or a crash dump, behind one API.

``Target`` (emu.debugger.targetbase) holds what both share: the page walk through
emu.hw.mmu, virtual memory, registers by any name, symbols, disassembly. ``LiveTarget``
reads a machine (emu.debugger.live), ``DumpTarget`` a crash dump written at a bug check
(emu.debugger.dumptarget). Looking never changes the machine: memory is read as ring 0
sees the page tables, without setting an Accessed or Dirty bit or touching the TLB.
"""

from __future__ import annotations

from emu.debugger.dumptarget import DumpTarget
from emu.debugger.live import LiveTarget
from emu.debugger.records import (
    HandleRecord,
    ImageInfo,
    IrpRef,
    PfnRecord,
    ProcessInfo,
    RegionRecord,
    TargetError,
    ThreadInfo,
    TlbEntry,
)
from emu.debugger.targetbase import Target, unmapped_reason

__all__ = ["DumpTarget", "HandleRecord", "ImageInfo", "IrpRef", "LiveTarget", "PfnRecord",
           "ProcessInfo", "RegionRecord", "Target", "TargetError", "ThreadInfo", "TlbEntry",
           "open_dump", "unmapped_reason"]


def open_dump(path: str) -> DumpTarget:
    """A target over the crash dump at ``path``; TargetError with one line for a bad file."""
    from emu.nt import dump
    try:
        return DumpTarget(dump.read(path))
    except dump.DumpError as err:
        raise TargetError(str(err)) from None
