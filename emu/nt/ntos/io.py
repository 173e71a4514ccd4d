"""Io: the I/O manager's exports (processes behind requests, MDLs), as PE drivers import
them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from emu.nt.exports import ExportCall, bad_pool_caller, export
from emu.nt.ntos.ps import current_eprocess, eprocess, process_id
from emu.nt.pool import BadPoolCall

if TYPE_CHECKING:
    from emu.nt.kernel import Executive
    from emu.nt.process import Process


@export("IoGetCurrentProcess", dll="ntoskrnl.exe", elf=False)
def io_get_current_process(ex: Executive, call: ExportCall) -> int:
    """PEPROCESS IoGetCurrentProcess(void) (wdm.h's PsGetCurrentProcess): the process whose
    address space is current, the System process in DriverEntry/DriverUnload."""
    return current_eprocess(ex)


def _requestor(ex: Executive, irp: int) -> tuple[bool, Process | None]:
    """(whether ``irp`` is a live IRP of the I/O manager, the process of the thread that
    asked for it: Irp->Tail.Overlay.Thread's process on Windows)."""
    record = ex.io.irps.get(irp)
    if record is None or record.thread is None:
        return False, None
    return True, record.thread.process


@export("IoIs32bitProcess", dll="ntoskrnl.exe", elf=False)
def io_is_32bit_process(ex: Executive, call: ExportCall) -> int:
    """BOOLEAN IoIs32bitProcess(PIRP Irp OPTIONAL): whether the IRP's requestor (the current
    process when Irp is NULL) is a 32-bit process (a WOW64 one on Windows). FALSE for an IRP
    the I/O manager did not make and for the System process."""
    if call.arg(0):
        _, proc = _requestor(ex, call.arg(0))
    else:
        proc = ex.current
    return int(proc is not None and proc.bits == 32)


@export("IoGetRequestorProcessId", dll="ntoskrnl.exe", elf=False)
def io_get_requestor_process_id(ex: Executive, call: ExportCall) -> int:
    """ULONG IoGetRequestorProcessId(PIRP Irp): the id of the process that sent the IRP, 0
    if there is none (an IRP the I/O manager did not make)."""
    known, proc = _requestor(ex, call.arg(0))
    return process_id(proc) if known else 0


@export("IoGetRequestorProcess", dll="ntoskrnl.exe", elf=False)
def io_get_requestor_process(ex: Executive, call: ExportCall) -> int:
    """PEPROCESS IoGetRequestorProcess(PIRP Irp): that process's EPROCESS, or NULL."""
    known, proc = _requestor(ex, call.arg(0))
    return eprocess(ex, proc) if known else 0


# -- MDLs ------------------------------------------------------------------------------------

@export("IoAllocateMdl", dll="ntoskrnl.exe", elf=False)
def io_allocate_mdl(ex: Executive, call: ExportCall) -> int:
    """PMDL IoAllocateMdl(VirtualAddress, Length, SecondaryBuffer, ChargeQuota, Irp): an MDL
    for the buffer in NonPagedPoolNx, its frame numbers not yet filled in (emu.nt.io's
    allocate_mdl); NULL if it cannot be had. ChargeQuota charges nothing here (but, as on
    Windows, such an MDL is not one of the I/O manager's fixed-size ones)."""
    return ex.io.allocate_mdl(call.arg(0), call.arg(1) & 0xFFFF_FFFF, call.arg(4),
                              bool(call.arg(2) & 0xFF), bool(call.arg(3) & 0xFF))


@export("IoFreeMdl", dll="ntoskrnl.exe", elf=False)
def io_free_mdl(ex: Executive, call: ExportCall) -> int:
    """VOID IoFreeMdl(PMDL Mdl): the MDL's memory goes back (the driver has unlocked and
    unmapped it first); an MDL freed twice is bug check 0xC2 (7, ...), as a pool block."""
    try:
        ex.io.free_mdl(call.arg(0), ex.irql)
    except BadPoolCall as err:
        raise bad_pool_caller(ex, call, err) from None
    return 0
