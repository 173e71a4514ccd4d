"""Ps: the process manager's exports, as PE drivers import them. The PEPROCESS and PETHREAD
they hand out are emu.nt.eprocess's objects (one per process and thread, the System
process's too)."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from emu.nt import eprocess
from emu.nt.bugcheck import BugCheck, BugCheckCode
from emu.nt.eprocess import (
    EPROCESS_UNIQUE_PROCESS_ID,
    ETHREAD_PROCESS,
    ETHREAD_UNIQUE_THREAD_ID,
    SYSTEM_THREAD_ID,
    process_id,
)
from emu.nt.exports import ExportCall, call_site, export
from emu.nt.mm.pfn import OutOfFrames
from emu.nt.ntos import rtl
from emu.nt.process import ProcessState
from emu.nt.status import NTSTATUS

if TYPE_CHECKING:
    from emu.nt.interfaces import Kernel
    from emu.nt.process import Process, Thread

NTOSKRNL = "ntoskrnl.exe"
REFERENCE_BY_POINTER = BugCheckCode.REFERENCE_BY_POINTER

# -- looking a process up (PsLookupProcessByProcessId, ObDereferenceObject) ----------------


@export("PsLookupProcessByProcessId", dll=NTOSKRNL)
def ps_lookup_process_by_process_id(ex: Kernel, call: ExportCall) -> int:
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


def _dereference(ex: Kernel, call: ExportCall) -> int:
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


@export("ObfDereferenceObject", dll=NTOSKRNL)
def obf_dereference_object(ex: Kernel, call: ExportCall) -> int:
    """LONG_PTR FASTCALL ObfDereferenceObject(PVOID Object): what wdm.h's
    ObDereferenceObject macro calls."""
    return _dereference(ex, call)


@export("ObDereferenceObject", dll=NTOSKRNL)
def ob_dereference_object(ex: Kernel, call: ExportCall) -> int:
    """LONG_PTR ObDereferenceObject(PVOID Object): the same routine, by its other name."""
    return _dereference(ex, call)


# -- the objects, as the routines below and the Io/Mm routines hand them out ----------------

def eprocess_of(ex: Kernel, proc: Process | None) -> int:
    """The EPROCESS of ``proc`` (None: the System process), or 0 (NULL) when there is no
    RAM for it (Windows made it with the process): the next call tries again."""
    try:
        return eprocess.of(ex, proc)
    except OutOfFrames:
        return 0


def ethread(ex: Kernel, thread: Thread) -> int:
    """The ETHREAD of ``thread``, or 0 (NULL) when there is no RAM for it."""
    try:
        return eprocess.thread_of(ex, thread)
    except OutOfFrames:
        return 0


def process_at(ex: Kernel, address: int) -> tuple[bool, Process | None]:
    """(whether ``address`` is an EPROCESS made here, its process: None for System)."""
    return eprocess.is_process_object(ex, address), eprocess.process_at(ex, address)


def current_eprocess(ex: Kernel) -> int:
    """IoGetCurrentProcess: the EPROCESS whose address space is current (the interrupted
    process's in a DPC; System's in DriverEntry)."""
    return eprocess_of(ex, ex.current)


@export("PsGetCurrentProcessId", dll="ntoskrnl.exe")
def ps_get_current_process_id(ex: Kernel, call: ExportCall) -> int:
    """HANDLE PsGetCurrentProcessId(void): the current process's id; 4 (System) where no
    process's thread runs: DriverEntry, DriverUnload."""
    return process_id(ex.current)


@export("PsGetCurrentThreadId", dll="ntoskrnl.exe")
def ps_get_current_thread_id(ex: Kernel, call: ExportCall) -> int:
    """HANDLE PsGetCurrentThreadId(void): the current thread's id (the interrupted thread's
    in a DPC), or the System thread's (8) in DriverEntry and DriverUnload."""
    thread = ex.current_thread
    return SYSTEM_THREAD_ID if thread is None else thread.tid


@export("PsGetProcessId", dll="ntoskrnl.exe")
def ps_get_process_id(ex: Kernel, call: ExportCall) -> int:
    """HANDLE PsGetProcessId(PEPROCESS Process): the id stored in the object, read as
    Windows reads its field (so a pointer to no process reads whatever is there, and an
    unmapped one is bug check 0x50)."""
    return ex.kernel_read_u64(call.arg(0) + EPROCESS_UNIQUE_PROCESS_ID)


@export("PsGetCurrentProcess", dll="ntoskrnl.exe")
def ps_get_current_process(ex: Kernel, call: ExportCall) -> int:
    """PEPROCESS PsGetCurrentProcess(void): ntoskrnl's export of what wdm.h defines as
    IoGetCurrentProcess."""
    return current_eprocess(ex)


@export("PsGetThreadId", dll="ntoskrnl.exe")
def ps_get_thread_id(ex: Kernel, call: ExportCall) -> int:
    """HANDLE PsGetThreadId(PETHREAD Thread): the id stored in the object (read as Windows
    reads its field)."""
    return ex.kernel_read_u64(call.arg(0) + ETHREAD_UNIQUE_THREAD_ID)


@export("PsGetThreadProcessId", dll="ntoskrnl.exe")
def ps_get_thread_process_id(ex: Kernel, call: ExportCall) -> int:
    """HANDLE PsGetThreadProcessId(PETHREAD Thread): the id of the thread's process."""
    process = ex.kernel_read_u64(call.arg(0) + ETHREAD_PROCESS)
    return ex.kernel_read_u64(process + EPROCESS_UNIQUE_PROCESS_ID)


@export("PsGetThreadProcess", dll="ntoskrnl.exe")
def ps_get_thread_process(ex: Kernel, call: ExportCall) -> int:
    """PEPROCESS PsGetThreadProcess(PETHREAD Thread) (ntifs.h): the thread's process."""
    return ex.kernel_read_u64(call.arg(0) + ETHREAD_PROCESS)


@export("PsIsSystemThread", dll="ntoskrnl.exe")
def ps_is_system_thread(ex: Kernel, call: ExportCall) -> int:
    """BOOLEAN PsIsSystemThread(PETHREAD Thread) (ntifs.h): whether the thread belongs to the
    System process (an app's thread, the requestor of an IRP, does not)."""
    process = ex.kernel_read_u64(call.arg(0) + ETHREAD_PROCESS)
    return int(process != 0 and process == eprocess_of(ex, None))
