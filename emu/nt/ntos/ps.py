"""Ps: the process manager's exports, as PE drivers import them."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from emu.nt import eprocess
from emu.nt.bugcheck import BugCheck, BugCheckCode
from emu.nt.exports import ExportCall, call_site, export
from emu.nt.mm.pfn import OutOfFrames
from emu.nt.ntos import rtl
from emu.nt.process import ProcessState
from emu.nt.status import NTSTATUS

if TYPE_CHECKING:
    from emu.nt.kernel import Executive

NTOSKRNL = "ntoskrnl.exe"
REFERENCE_BY_POINTER = BugCheckCode.REFERENCE_BY_POINTER

# -- looking a process up (PsLookupProcessByProcessId, ObDereferenceObject) ----------------


@export("PsLookupProcessByProcessId", dll=NTOSKRNL, elf=False)
def ps_lookup_process_by_process_id(ex: Executive, call: ExportCall) -> int:
    """NTSTATUS PsLookupProcessByProcessId(HANDLE ProcessId, PEPROCESS *Process): the
    process's object (emu.nt.eprocess), referenced: the caller releases it with
    ObDereferenceObject. STATUS_INVALID_PARAMETER when no live process has that id (one
    that has ended is not found)."""
    pid = call.arg(0)
    proc = next((p for p in ex.processes if p.pid == pid and
                 p.state is not ProcessState.TERMINATED), None)
    if proc is None:
        return NTSTATUS.STATUS_INVALID_PARAMETER
    try:
        address = eprocess.of(ex, proc)
    except OutOfFrames:
        return NTSTATUS.STATUS_INSUFFICIENT_RESOURCES
    table = eprocess.objects(ex)
    table.references[address] = table.references.get(address, 0) + 1
    rtl.write(ex, call.arg(1), struct.pack("<Q", address))
    return NTSTATUS.STATUS_SUCCESS


def _dereference(ex: Executive, call: ExportCall) -> int:
    """Release one reference a lookup took; the references left (LONG_PTR). Releasing a
    process object the driver holds no reference to is bug check 0x18
    REFERENCE_BY_POINTER (object type, object, 0, 0; no OBJECT_TYPE here: 0): Windows stops
    so when a count would fall below zero. An address that is no process object is left
    alone (the objects other routines hand out are not counted here)."""
    obj = call.arg(0)
    table = eprocess.objects(ex)
    if eprocess.process_at(ex, obj) is None:
        return 0
    held = table.references.get(obj, 0)
    if held == 0:
        raise BugCheck(REFERENCE_BY_POINTER, (0, obj, 0, 0), call_site(ex, call.return_address),
                       "ObDereferenceObject of a process object with no reference left")
    table.references[obj] = held - 1
    return held - 1


@export("ObfDereferenceObject", dll=NTOSKRNL, elf=False)
def obf_dereference_object(ex: Executive, call: ExportCall) -> int:
    """LONG_PTR FASTCALL ObfDereferenceObject(PVOID Object): what wdm.h's
    ObDereferenceObject macro calls."""
    return _dereference(ex, call)


@export("ObDereferenceObject", dll=NTOSKRNL, elf=False)
def ob_dereference_object(ex: Executive, call: ExportCall) -> int:
    """LONG_PTR ObDereferenceObject(PVOID Object): the same routine, by its other name."""
    return _dereference(ex, call)
