"""Ps: the process manager's exports, as PE drivers import them.

A PEPROCESS is opaque to drivers (ntddk.h declares only ``struct _EPROCESS *``): here it is
a small object in NonPagedPoolNx, made the first time a driver asks for a process, with a
DISPATCHER_HEADER whose Type is ProcessObject (3) and the process id at
EPROCESS_UNIQUE_PROCESS_ID (this machine's offset, not Windows'). The System process (id 4)
has one too: it is the current process wherever no process's thread is on the CPU
(DriverEntry and DriverUnload, which Windows runs in the System process). A PETHREAD (what
an IRP's Tail.Overlay.Thread holds) is made the same way: Type ThreadObject (6), the thread
id at ETHREAD_UNIQUE_THREAD_ID and its process's PEPROCESS at ETHREAD_PROCESS.
"""

from __future__ import annotations

import struct
import weakref
from typing import TYPE_CHECKING

from emu.nt.exports import ExportCall, export
from emu.nt.mm.pfn import OutOfFrames
from emu.nt.pool import PoolType

if TYPE_CHECKING:
    from emu.nt.kernel import Executive
    from emu.nt.process import Process, Thread

SYSTEM_PROCESS_ID = 4            # the System process, as on Windows
SYSTEM_THREAD_ID = 8             # the System thread DriverEntry and DriverUnload run in
PROCESS_OBJECT = 3               # KOBJECTS' ProcessObject: DISPATCHER_HEADER.Type
EPROCESS_SIZE = 0x80
EPROCESS_UNIQUE_PROCESS_ID = 0x40
TAG_PROCESS = 0x636F7250         # 'Proc'
THREAD_OBJECT = 6                # KOBJECTS' ThreadObject
ETHREAD_SIZE = 0x80
ETHREAD_UNIQUE_THREAD_ID = 0x40
ETHREAD_PROCESS = 0x48
TAG_THREAD = 0x65726854          # 'Thre'

_objects: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class _Objects:
    """One machine's EPROCESS objects, both ways."""

    def __init__(self) -> None:
        self.of: dict[Process | None, int] = {}      # process (None: System) -> EPROCESS
        self.at: dict[int, Process | None] = {}      # EPROCESS -> process
        self.threads: dict[Thread, int] = {}         # thread -> ETHREAD


def _table(ex: Executive) -> _Objects:
    return _objects.setdefault(ex, _Objects())


def eprocess(ex: Executive, proc: Process | None) -> int:
    """The EPROCESS of ``proc`` (None: the System process), made on first use."""
    table = _table(ex)
    address = table.of.get(proc)
    if address is None:
        try:
            address = ex.pools.carve(PoolType.NonPagedPoolNx, EPROCESS_SIZE, TAG_PROCESS)
        except OutOfFrames:         # no RAM left for the object (Windows made it with the
            return 0                # process): NULL, and the next call tries again
        raw = bytearray(EPROCESS_SIZE)
        struct.pack_into("<BBBB", raw, 0, PROCESS_OBJECT, 0, EPROCESS_SIZE // 4, 0)
        struct.pack_into("<Q", raw, EPROCESS_UNIQUE_PROCESS_ID, process_id(proc))
        ex.kernel_write(address, bytes(raw))
        table.of[proc], table.at[address] = address, proc
    return address


def ethread(ex: Executive, thread: Thread) -> int:
    """The ETHREAD of ``thread``, made on first use (0 if there is no RAM for it)."""
    table = _table(ex)
    address = table.threads.get(thread)
    if address is None:
        process = eprocess(ex, thread.process)
        try:
            address = ex.pools.carve(PoolType.NonPagedPoolNx, ETHREAD_SIZE, TAG_THREAD)
        except OutOfFrames:
            return 0
        raw = bytearray(ETHREAD_SIZE)
        struct.pack_into("<BBBB", raw, 0, THREAD_OBJECT, 0, ETHREAD_SIZE // 4, 0)
        struct.pack_into("<QQ", raw, ETHREAD_UNIQUE_THREAD_ID, thread.tid, process)
        ex.kernel_write(address, bytes(raw))
        table.threads[thread] = address
    return address


def process_at(ex: Executive, address: int) -> tuple[bool, Process | None]:
    """(whether ``address`` is an EPROCESS made here, its process: None for System)."""
    table = _table(ex)
    return address in table.at, table.at.get(address)


def process_id(proc: Process | None) -> int:
    """The id PsGetProcessId gives: the process's, or 4 for the System process."""
    return SYSTEM_PROCESS_ID if proc is None else proc.pid


def current_eprocess(ex: Executive) -> int:
    """IoGetCurrentProcess: the EPROCESS whose address space is current (the interrupted
    process's in a DPC; System's in DriverEntry)."""
    return eprocess(ex, ex.current)


@export("PsGetCurrentProcessId", dll="ntoskrnl.exe", elf=False)
def ps_get_current_process_id(ex: Executive, call: ExportCall) -> int:
    """HANDLE PsGetCurrentProcessId(void): the current process's id; 4 (System) where no
    process's thread runs: DriverEntry, DriverUnload (the ELF drivers' variant says 0)."""
    return process_id(ex.current)


@export("PsGetCurrentThreadId", dll="ntoskrnl.exe", elf=False)
def ps_get_current_thread_id(ex: Executive, call: ExportCall) -> int:
    """HANDLE PsGetCurrentThreadId(void): the current thread's id (the interrupted thread's
    in a DPC), or the System thread's (8) in DriverEntry and DriverUnload."""
    thread = ex.current_thread
    return SYSTEM_THREAD_ID if thread is None else thread.tid


@export("PsGetProcessId", dll="ntoskrnl.exe", elf=False)
def ps_get_process_id(ex: Executive, call: ExportCall) -> int:
    """HANDLE PsGetProcessId(PEPROCESS Process): the id stored in the object, read as
    Windows reads its field (so a pointer to no process reads whatever is there, and an
    unmapped one is bug check 0x50)."""
    return ex.kernel_read_u64(call.arg(0) + EPROCESS_UNIQUE_PROCESS_ID)


@export("PsGetCurrentProcess", dll="ntoskrnl.exe", elf=False)
def ps_get_current_process(ex: Executive, call: ExportCall) -> int:
    """PEPROCESS PsGetCurrentProcess(void): ntoskrnl's export of what wdm.h defines as
    IoGetCurrentProcess."""
    return current_eprocess(ex)


@export("PsGetThreadId", dll="ntoskrnl.exe", elf=False)
def ps_get_thread_id(ex: Executive, call: ExportCall) -> int:
    """HANDLE PsGetThreadId(PETHREAD Thread): the id stored in the object (read as Windows
    reads its field)."""
    return ex.kernel_read_u64(call.arg(0) + ETHREAD_UNIQUE_THREAD_ID)


@export("PsGetThreadProcessId", dll="ntoskrnl.exe", elf=False)
def ps_get_thread_process_id(ex: Executive, call: ExportCall) -> int:
    """HANDLE PsGetThreadProcessId(PETHREAD Thread): the id of the thread's process."""
    process = ex.kernel_read_u64(call.arg(0) + ETHREAD_PROCESS)
    return ex.kernel_read_u64(process + EPROCESS_UNIQUE_PROCESS_ID)


@export("PsGetThreadProcess", dll="ntoskrnl.exe", elf=False)
def ps_get_thread_process(ex: Executive, call: ExportCall) -> int:
    """PEPROCESS PsGetThreadProcess(PETHREAD Thread) (ntifs.h): the thread's process."""
    return ex.kernel_read_u64(call.arg(0) + ETHREAD_PROCESS)


@export("PsIsSystemThread", dll="ntoskrnl.exe", elf=False)
def ps_is_system_thread(ex: Executive, call: ExportCall) -> int:
    """BOOLEAN PsIsSystemThread(PETHREAD Thread) (ntifs.h): whether the thread belongs to the
    System process (an app's thread, the requestor of an IRP, does not)."""
    process = ex.kernel_read_u64(call.arg(0) + ETHREAD_PROCESS)
    return int(process != 0 and process == eprocess(ex, None))
