"""Io: the I/O manager's exports (processes behind requests, MDLs), as PE drivers import
them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from emu.nt.exports import ExportCall, bad_pool_caller, export
from emu.nt.io import IRP_THREAD
from emu.nt.ntos.ps import ETHREAD_PROCESS, current_eprocess, eprocess_of, process_at, process_id
from emu.nt.pool import BadPoolCall

if TYPE_CHECKING:
    from emu.nt.interfaces import IoSystem
    from emu.nt.process import Process


@export("IoGetCurrentProcess", dll="ntoskrnl.exe")
def io_get_current_process(ex: IoSystem, call: ExportCall) -> int:
    """PEPROCESS IoGetCurrentProcess(void) (wdm.h's PsGetCurrentProcess): the process whose
    address space is current, the System process in DriverEntry/DriverUnload."""
    return current_eprocess(ex)


def _requestor(ex: IoSystem, irp: int) -> tuple[bool, Process | None]:
    """(whether the IRP names a requesting thread the I/O manager knows, its process): read
    from Irp->Tail.Overlay.Thread, as Windows' IoGetRequestorProcess does (so an unmapped
    IRP pointer is bug check 0x50)."""
    thread = ex.kernel_read_u64(irp + IRP_THREAD)
    if not thread:
        return False, None
    known, proc = process_at(ex, ex.kernel_read_u64(thread + ETHREAD_PROCESS))
    return known, proc


@export("IoIs32bitProcess", dll="ntoskrnl.exe")
def io_is_32bit_process(ex: IoSystem, call: ExportCall) -> int:
    """BOOLEAN IoIs32bitProcess(PIRP Irp OPTIONAL): whether the IRP's requestor (the process
    of Irp->Tail.Overlay.Thread; the current process when Irp is NULL) is a 32-bit process
    (a WOW64 one on Windows). FALSE for an IRP with no requesting thread and for the System
    process."""
    if call.arg(0):
        _, proc = _requestor(ex, call.arg(0))
    else:
        proc = ex.current
    return int(proc is not None and proc.bits == 32)


@export("IoGetRequestorProcessId", dll="ntoskrnl.exe")
def io_get_requestor_process_id(ex: IoSystem, call: ExportCall) -> int:
    """ULONG IoGetRequestorProcessId(PIRP Irp): the id of the process that sent the IRP
    (Irp->Tail.Overlay.Thread's), 0 if it names no thread."""
    known, proc = _requestor(ex, call.arg(0))
    return process_id(proc) if known else 0


@export("IoGetRequestorProcess", dll="ntoskrnl.exe")
def io_get_requestor_process(ex: IoSystem, call: ExportCall) -> int:
    """PEPROCESS IoGetRequestorProcess(PIRP Irp): that process's EPROCESS, or NULL."""
    known, proc = _requestor(ex, call.arg(0))
    return eprocess_of(ex, proc) if known else 0


# -- MDLs ------------------------------------------------------------------------------------

@export("IoAllocateMdl", dll="ntoskrnl.exe")
def io_allocate_mdl(ex: IoSystem, call: ExportCall) -> int:
    """PMDL IoAllocateMdl(VirtualAddress, Length, SecondaryBuffer, ChargeQuota, Irp): an MDL
    for the buffer in NonPagedPoolNx, its frame numbers not yet filled in (emu.nt.io's
    allocate_mdl); NULL if it cannot be had. ChargeQuota charges nothing here (but, as on
    Windows, such an MDL is not one of the I/O manager's fixed-size ones)."""
    return ex.io.allocate_mdl(call.arg(0), call.arg(1) & 0xFFFF_FFFF, call.arg(4),
                              bool(call.arg(2) & 0xFF), bool(call.arg(3) & 0xFF))


@export("IoFreeMdl", dll="ntoskrnl.exe")
def io_free_mdl(ex: IoSystem, call: ExportCall) -> int:
    """VOID IoFreeMdl(PMDL Mdl): the MDL's memory goes back (the driver has unlocked and
    unmapped it first); an MDL freed twice is bug check 0xC2 (7, ...), as a pool block."""
    try:
        ex.io.free_mdl(call.arg(0), ex.irql)
    except BadPoolCall as err:
        raise bad_pool_caller(ex, call, err) from None
    return 0
