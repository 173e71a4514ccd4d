"""System services for virtual memory (docs/abi.md, services 0x15 and 0x20-0x23).

Each handler does what the Windows service does around MmXxx: check the flag
arguments, capture the caller's in/out variables (ProbeForWrite, then read),
call emu.nt.mm.virtual, and write the results back only on success. A bad
pointer comes back as STATUS_ACCESS_VIOLATION (raised by probe_and_read /
probe_and_write, caught by the dispatcher); the caller keeps running. A
pointer into a committed page that has not been touched yet works: the page
is faulted in first, as the copy would fault it in on Windows.
"""

from __future__ import annotations

import functools
import struct
from typing import TYPE_CHECKING

from emu.nt.mm import virtual
from emu.nt.mm.vad import RegionInfo
from emu.nt.status import NTSTATUS, nt_success
from emu.nt.syscalls import Service, probe_and_read, probe_and_write, probe_for_write, service

if TYPE_CHECKING:
    from emu.nt.interfaces import SystemService
    from emu.nt.process import Process

_U32 = 0xFFFF_FFFF


class _Refused(Exception):
    """A user buffer the service may not use; ``status`` is what the service returns."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def _valid_for(ex: SystemService, proc: Process, address: int, length: int, access: str) -> None:
    """Fault in the buffer's pages as a copy would (demand-zero, stack growth)."""
    status = virtual.fault_in_user_range(ex, proc, address, length, access)
    if status != NTSTATUS.STATUS_SUCCESS:
        raise _Refused(status)


def _capture(ex: SystemService, proc: Process, address: int, fmt: str) -> int:
    """Read an in/out variable after checking that it can be written back."""
    size = struct.calcsize(fmt)
    _valid_for(ex, proc, address, size, "write")
    probe_for_write(ex, address, size)             # ProbeForWrite: fail now, not afterwards
    return struct.unpack(fmt, probe_and_read(ex, address, size))[0]


def _store(ex: SystemService, proc: Process, address: int, fmt: str, value: int) -> None:
    """Write an out variable."""
    _store_bytes(ex, proc, address, struct.pack(fmt, value))


def _store_bytes(ex: SystemService, proc: Process, address: int, data: bytes) -> None:
    """Write an out buffer (faulting its pages in first)."""
    _valid_for(ex, proc, address, len(data), "write")
    probe_and_write(ex, address, data)


def _on_region(ex: SystemService, proc: Process, base_ptr: int, size_ptr: int, operation,
               old_ptr: int | None = None) -> int:
    """The shape every region service shares: read *BaseAddress and *RegionSize (and check
    *OldProtect) in the caller's memory, run ``operation(base, size)``, and only on success
    write back the region it settled on (and the old protection)."""
    base = _capture(ex, proc, base_ptr, "<Q")
    size = _capture(ex, proc, size_ptr, "<Q")
    if old_ptr is not None:
        _capture(ex, proc, old_ptr, "<I")
    result = operation(base, size)
    if nt_success(result.status):
        _store(ex, proc, base_ptr, "<Q", result.base)
        _store(ex, proc, size_ptr, "<Q", result.size)
        if old_ptr is not None:
            _store(ex, proc, old_ptr, "<I", result.old_protect)
    return result.status


def _refusals(handler):
    """Turn a _Refused buffer into the service's return value."""
    @functools.wraps(handler)
    def run(ex: SystemService, proc: Process, args: tuple[int, ...]) -> int:
        try:
            return handler(ex, proc, args)
        except _Refused as refused:
            return refused.status
    return run


@service(Service.NtAllocateVirtualMemory)
@_refusals
def nt_allocate_virtual_memory(ex: SystemService, proc: Process, args: tuple[int, ...]) -> int:
    """NtAllocateVirtualMemory(*BaseAddress, *RegionSize, AllocationType, Protect)."""
    base_ptr, size_ptr = args[0], args[1]
    allocation_type, protect = args[2] & _U32, args[3] & _U32
    status = virtual.check_allocation(allocation_type, protect)
    if status != NTSTATUS.STATUS_SUCCESS:
        return status
    return _on_region(ex, proc, base_ptr, size_ptr, lambda base, size: virtual.allocate(
        ex, proc, base, size, allocation_type, protect))


@service(Service.NtFreeVirtualMemory)
@_refusals
def nt_free_virtual_memory(ex: SystemService, proc: Process, args: tuple[int, ...]) -> int:
    """NtFreeVirtualMemory(*BaseAddress, *RegionSize, FreeType)."""
    base_ptr, size_ptr, free_type = args[0], args[1], args[2] & _U32
    status = virtual.check_free_type(free_type)
    if status != NTSTATUS.STATUS_SUCCESS:
        return status
    return _on_region(ex, proc, base_ptr, size_ptr, lambda base, size: virtual.free(
        ex, proc, base, size, free_type))


@service(Service.NtProtectVirtualMemory)
@_refusals
def nt_protect_virtual_memory(ex: SystemService, proc: Process, args: tuple[int, ...]) -> int:
    """NtProtectVirtualMemory(*BaseAddress, *RegionSize, NewProtect, *OldProtect)."""
    base_ptr, size_ptr, new_protect, old_ptr = args[0], args[1], args[2] & _U32, args[3]
    status = virtual.check_protection(new_protect)
    if status != NTSTATUS.STATUS_SUCCESS:
        return status
    return _on_region(ex, proc, base_ptr, size_ptr, lambda base, size: virtual.protect(
        ex, proc, base, size, new_protect), old_ptr=old_ptr)


@service(Service.NtQueryVirtualMemory)
@_refusals
def nt_query_virtual_memory(ex: SystemService, proc: Process, args: tuple[int, ...]) -> int:
    """NtQueryVirtualMemory(BaseAddress, *MEMORY_BASIC_INFORMATION): the 48-byte x64 layout,
    or MEMORY_BASIC_INFORMATION32 (28 bytes) for a 32-bit process, as WOW64 returns it."""
    address, info_ptr = args[0], args[1]
    # The buffer is probed before the address is looked at, as Windows' NtQueryVirtualMemory
    # does (ProbeForWrite, then BaseAddress > MM_HIGHEST_USER_ADDRESS).
    size = (RegionInfo.LAYOUT32 if proc.bits == 32 else RegionInfo.LAYOUT).size
    _valid_for(ex, proc, info_ptr, size, "write")
    probe_for_write(ex, info_ptr, size)
    status, info = virtual.query(ex, proc, address)
    if info is None:
        return status
    _store_bytes(ex, proc, info_ptr, info.pack(proc.bits))
    return status


SYSTEM_MEMORY_LIST_INFORMATION = 80
MEMORY_EMPTY_WORKING_SETS, MEMORY_FLUSH_MODIFIED_LIST, MEMORY_PURGE_STANDBY_LIST = 2, 3, 4


@service(Service.NtSetSystemInformation)
def nt_set_system_information(ex: SystemService, proc: Process, args: tuple[int, ...]) -> int:
    """NtSetSystemInformation(Class, Buffer, Length): only SystemMemoryListInformation, whose
    4-byte buffer is a SYSTEM_MEMORY_LIST_COMMAND (what RAMMap sends): empty every working
    set, write the modified list to the pagefile, or free the standby list's frames."""
    info_class, buffer, length = args[0] & _U32, args[1], args[2] & _U32
    if info_class != SYSTEM_MEMORY_LIST_INFORMATION:
        return NTSTATUS.STATUS_INVALID_INFO_CLASS
    if length != 4:
        return NTSTATUS.STATUS_INFO_LENGTH_MISMATCH
    command = struct.unpack("<I", probe_and_read(ex, buffer, 4))[0]
    pager = ex.mm.pager
    actions = {MEMORY_EMPTY_WORKING_SETS: pager.empty_working_sets,
               MEMORY_FLUSH_MODIFIED_LIST: pager.write_modified,
               MEMORY_PURGE_STANDBY_LIST: pager.purge_standby}
    if command not in actions:
        return NTSTATUS.STATUS_INVALID_PARAMETER
    actions[command]()
    return NTSTATUS.STATUS_SUCCESS
