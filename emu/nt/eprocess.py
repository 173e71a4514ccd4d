"""Each process's kernel object as drivers hold it (the PEPROCESS / PKPROCESS of wdm.h):
the address of a NonPagedPoolNx block, opaque to drivers but for the DISPATCHER_HEADER an
EPROCESS begins with (Type ProcessObject, SignalState 1 once the process has ended, so a
driver may wait on it). Made the first time a routine hands the process to a driver
(PsLookupProcessByProcessId, IoGetCurrentProcess), then the same address for the
process's life; looked up both ways here.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from emu.nt import wdm

if TYPE_CHECKING:
    from emu.nt.kernel import Executive
    from emu.nt.process import Process

PROCESS_OBJECT = 3              # KOBJECTS: ProcessObject, the Type of a KPROCESS's header
EPROCESS_SIZE = 0x40            # the header and room to spare: the rest is opaque
NON_PAGED_POOL_NX = 512
TAG_PROCESS = int.from_bytes(b"Proc", "little")     # Windows' pool tag for process objects


@dataclass
class ProcessObjects:
    """The objects made so far: by process id and by address, and the references drivers
    took with PsLookupProcessByProcessId that ObDereferenceObject has not released."""

    by_pid: dict[int, int] = field(default_factory=dict)
    by_address: dict[int, Process] = field(default_factory=dict)
    references: dict[int, int] = field(default_factory=dict)


def objects(ex: Executive) -> ProcessObjects:
    """This machine's process objects (made with the first one)."""
    table = ex.__dict__.get("process_objects")
    if table is None:
        table = ex.__dict__["process_objects"] = ProcessObjects()
        ex.exit_observers.append(lambda proc: _signal(ex, table, proc))
    return table


def of(ex: Executive, proc: Process) -> int:
    """The address of ``proc``'s object, made now if it has none (OutOfFrames if no pool
    page can be had)."""
    table = objects(ex)
    address = table.by_pid.get(proc.pid)
    if address is None:
        address = ex.pools.allocate(NON_PAGED_POOL_NX, EPROCESS_SIZE, TAG_PROCESS)
        header = bytearray(EPROCESS_SIZE)
        header[wdm.DISPATCHER_HEADER["Type"]] = PROCESS_OBJECT
        header[wdm.DISPATCHER_HEADER["Size"]] = EPROCESS_SIZE // 4
        head = address + wdm.DISPATCHER_HEADER["WaitListHead"]
        struct.pack_into("<QQ", header, wdm.DISPATCHER_HEADER["WaitListHead"], head, head)
        ex.kernel_write(address, bytes(header))
        table.by_pid[proc.pid] = address
        table.by_address[address] = proc
    return address


def process_at(ex: Executive, address: int) -> Process | None:
    """The process whose object is at ``address``, or None."""
    return objects(ex).by_address.get(address)


def _signal(ex: Executive, table: ProcessObjects, proc: Process) -> None:
    """A process that ends signals its object (a process is signalled once it has ended)."""
    address = table.by_pid.get(proc.pid)
    if address is not None:
        ex.kernel_write(address + wdm.DISPATCHER_HEADER["SignalState"], struct.pack("<i", 1))
