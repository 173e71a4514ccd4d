"""Each process's and thread's kernel object as drivers hold them (the PEPROCESS / PETHREAD of
wdm.h): the address of a NonPagedPoolNx block, opaque to drivers (ntddk.h declares only
``struct _EPROCESS *``) but for the DISPATCHER_HEADER it begins with (Type ProcessObject or
ThreadObject; a process's SignalState becomes 1 once it has ended, so a driver may wait on
it) and the ids this machine keeps at its own offsets (not Windows'). The System process
(id 4) and its thread (id 8) have objects too: they are current wherever no process's thread
is on the CPU (DriverEntry and DriverUnload, which Windows runs in the System process).
An object is made the first time a routine hands it to a driver (PsLookupProcessByProcessId,
IoGetCurrentProcess, an IRP's Tail.Overlay.Thread), then keeps its address for the life of
its process; looked up both ways here.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from emu.nt import wdm
from emu.nt.pool import PoolType

if TYPE_CHECKING:
    from emu.nt.interfaces import PsObjects
    from emu.nt.process import Process, Thread

# Windows' CID table hands out 4 to the System process and 8 to its first thread at boot;
# the apps' ids come after them (Executive.new_client_id), so no id names two things.
SYSTEM_PROCESS_ID = 4            # the System process, as on Windows
SYSTEM_THREAD_ID = 8             # the System thread DriverEntry and DriverUnload run in
PROCESS_OBJECT = 3               # KOBJECTS: ProcessObject, the Type of a KPROCESS's header
THREAD_OBJECT = 6                # KOBJECTS: ThreadObject
EPROCESS_SIZE = 0x80             # the header, the id, and room to spare: the rest is opaque
EPROCESS_UNIQUE_PROCESS_ID = 0x40
ETHREAD_SIZE = 0x80
ETHREAD_UNIQUE_THREAD_ID = 0x40
ETHREAD_PROCESS = 0x48
TAG_PROCESS = int.from_bytes(b"Proc", "little")     # Windows' pool tags for the objects
TAG_THREAD = int.from_bytes(b"Thre", "little")


@dataclass
class ProcessObjects:
    """The objects made so far, both ways (None: the System process), and the references
    drivers took with PsLookupProcessByProcessId that ObDereferenceObject has not released."""

    by_process: dict[Process | None, int] = field(default_factory=dict)
    by_address: dict[int, Process | None] = field(default_factory=dict)
    threads: dict[Thread | None, int] = field(default_factory=dict)   # None: the System thread
    references: dict[int, int] = field(default_factory=dict)


def objects(ex: PsObjects) -> ProcessObjects:
    """This machine's process objects (made with the first one)."""
    table = ex.__dict__.get("process_objects")
    if table is None:
        table = ex.__dict__["process_objects"] = ProcessObjects()
        ex.exit_observers.append(lambda proc: _signal(ex, table, proc))
    return table


def process_id(proc: Process | None) -> int:
    """The id PsGetProcessId gives: the process's, or 4 for the System process."""
    return SYSTEM_PROCESS_ID if proc is None else proc.pid


def _header(kind: int, size: int, address: int) -> bytearray:
    """A DISPATCHER_HEADER of ``kind`` for an object of ``size`` bytes at ``address``: not
    signalled, its wait list empty (pointing at itself)."""
    raw = bytearray(size)
    raw[wdm.DISPATCHER_HEADER["Type"]] = kind
    raw[wdm.DISPATCHER_HEADER["Size"]] = size // 4
    head = address + wdm.DISPATCHER_HEADER["WaitListHead"]
    struct.pack_into("<QQ", raw, wdm.DISPATCHER_HEADER["WaitListHead"], head, head)
    return raw


def of(ex: PsObjects, proc: Process | None) -> int:
    """The address of ``proc``'s object (None: the System process's), made now if it has
    none (OutOfFrames if no pool page can be had)."""
    table = objects(ex)
    address = table.by_process.get(proc)
    if address is None:
        address = ex.pools.carve(PoolType.NonPagedPoolNx, EPROCESS_SIZE, TAG_PROCESS)
        raw = _header(PROCESS_OBJECT, EPROCESS_SIZE, address)
        struct.pack_into("<Q", raw, EPROCESS_UNIQUE_PROCESS_ID, process_id(proc))
        ex.kernel_write(address, bytes(raw))
        table.by_process[proc] = address
        table.by_address[address] = proc
    return address


def thread_of(ex: PsObjects, thread: Thread | None) -> int:
    """The address of ``thread``'s object (None: the System thread's, id 8, which the KPCR
    names while DriverEntry or DriverUnload runs), made now if it has none (OutOfFrames if
    no pool page can be had): its id and its process's object."""
    table = objects(ex)
    address = table.threads.get(thread)
    if address is None:
        process = of(ex, None if thread is None else thread.process)
        address = ex.pools.carve(PoolType.NonPagedPoolNx, ETHREAD_SIZE, TAG_THREAD)
        raw = _header(THREAD_OBJECT, ETHREAD_SIZE, address)
        tid = SYSTEM_THREAD_ID if thread is None else thread.tid
        struct.pack_into("<QQ", raw, ETHREAD_UNIQUE_THREAD_ID, tid, process)
        ex.kernel_write(address, bytes(raw))
        table.threads[thread] = address
    return address


def is_process_object(ex: PsObjects, address: int) -> bool:
    """Whether ``address`` is a process object made here (the System process's too)."""
    return address in objects(ex).by_address


def process_at(ex: PsObjects, address: int) -> Process | None:
    """The process whose object is at ``address``, or None (the System process's object,
    or no process object: ``is_process_object`` tells them apart)."""
    return objects(ex).by_address.get(address)


def _signal(ex: PsObjects, table: ProcessObjects, proc: Process) -> None:
    """A process that ends signals its object (a process is signalled once it has ended)."""
    address = table.by_process.get(proc)
    if address is not None:
        ex.kernel_write(address + wdm.DISPATCHER_HEADER["SignalState"], struct.pack("<i", 1))
