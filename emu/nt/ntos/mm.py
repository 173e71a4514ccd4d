"""Mm: the memory manager's exports (MDLs, probes, mappings), as PE drivers import them.

The MDL work itself (locking, mapping, wdm.h's MDL in guest memory) is the I/O manager's
(emu.nt.io); these are the routines' x64 signatures around it, and their exceptions.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from emu.hw import mmu
from emu.nt.bugcheck import BugCheck, BugCheckCode
from emu.nt.exports import (
    PE_DLLS,
    ExceptionRaised,
    ExportCall,
    call_site,
    export,
    pe_address_of,
    read_unicode_string,
)
from emu.nt.mm.pfn import OutOfFrames
from emu.nt.ntos.ps import eprocess_of
from emu.nt.status import NTSTATUS

if TYPE_CHECKING:
    from emu.nt.interfaces import IoSystem

KERNEL_MODE, USER_MODE = 0, 1                  # KPROCESSOR_MODE
IO_READ_ACCESS, IO_WRITE_ACCESS, IO_MODIFY_ACCESS = 0, 1, 2      # LOCK_OPERATION
HIGH_PAGE_PRIORITY = 32                        # MM_PAGE_PRIORITY


@export("MmGetSystemRoutineAddress", dll="ntoskrnl.exe")
def mm_get_system_routine_address(ex: IoSystem, call: ExportCall) -> int:
    """PVOID MmGetSystemRoutineAddress(PUNICODE_STRING SystemRoutineName): the address of the
    routine of that name that ntoskrnl.exe or hal.dll exports to PE drivers, or NULL (how a
    driver finds a routine newer than the Windows it may run on, such as ExAllocatePool2).
    Names are case-sensitive, as export names are."""
    name = read_unicode_string(ex, call.arg(0))
    for dll in PE_DLLS:
        address = pe_address_of(dll, name)
        if address is not None:
            return address
    return 0


@export("MmBuildMdlForNonPagedPool", dll="ntoskrnl.exe")
def mm_build_mdl_for_non_paged_pool(ex: IoSystem, call: ExportCall) -> int:
    """VOID MmBuildMdlForNonPagedPool(PMDL MemoryDescriptorList): the frame numbers of a
    nonpaged buffer, MDL_SOURCE_IS_NONPAGED_POOL, MappedSystemVa = the buffer."""
    ex.io.build_for_nonpaged_pool(call.arg(0))
    return 0


@export("MmProbeAndLockPages", dll="ntoskrnl.exe")
def mm_probe_and_lock_pages(ex: IoSystem, call: ExportCall) -> int:
    """VOID MmProbeAndLockPages(MemoryDescriptorList, AccessMode, Operation): the buffer's
    pages made resident, checked for the access and locked (emu.nt.io's lock_pages). A
    range a UserMode caller may not reach, or a page it may not access so, raises
    STATUS_ACCESS_VIOLATION (a guard page: STATUS_GUARD_PAGE_VIOLATION), as Windows does:
    the caller's __try/__except gets it; with none, bug check 0x1E."""
    from emu.nt.syscalls import UserAccessViolation, UserStatus

    mode, operation = call.arg(1) & 0xFF, call.arg(2) & 0xFFFF_FFFF
    try:
        with _at_call_site(ex, call):
            ex.io.lock_pages(call.arg(0), user_mode=mode == USER_MODE,
                             write=operation != IO_READ_ACCESS, irql=ex.irql,
                             process=eprocess_of(ex, ex.current))
    except UserAccessViolation:
        raise ExceptionRaised(NTSTATUS.STATUS_ACCESS_VIOLATION) from None
    except UserStatus as err:
        raise ExceptionRaised(err.status) from None
    return 0


@export("MmUnlockPages", dll="ntoskrnl.exe")
def mm_unlock_pages(ex: IoSystem, call: ExportCall) -> int:
    """VOID MmUnlockPages(PMDL MemoryDescriptorList): unmap its system view if it has one,
    then unlock its pages (a page not locked: bug check 0x4E, 7)."""
    with _at_call_site(ex, call):
        ex.io.unlock_pages(call.arg(0))
    return 0


@contextlib.contextmanager
def _at_call_site(ex: IoSystem, call: ExportCall) -> Iterator[None]:
    """A bug check the I/O manager raises inside a routine names the driver's call."""
    try:
        yield
    except BugCheck as bc:
        if bc.rip is None:
            bc.rip = call_site(ex, call.return_address)
        raise


def _map(ex: IoSystem, call: ExportCall, mdl: int, mode: int, bugcheck_on_failure: bool,
         priority: int) -> int:
    if mode & 0xFF == USER_MODE:
        # Not done here: a user view of the frames. Windows raises when it cannot map
        # into user space ("callers that specify UserMode must wrap the call in a try/except
        # block"); this machine always cannot.
        raise ExceptionRaised(NTSTATUS.STATUS_INSUFFICIENT_RESOURCES)
    try:
        return ex.io.map_mdl(mdl, priority)
    except OutOfFrames:
        if bugcheck_on_failure:
            raise BugCheck(BugCheckCode.NO_MORE_SYSTEM_PTES, (0, ex.io.mdl_pages(mdl), 0, 0),
                           call_site(ex, call.return_address),
                           "no memory for the page tables of an MDL's view") from None
        return 0


@export("MmMapLockedPagesSpecifyCache", dll="ntoskrnl.exe")
def mm_map_locked_pages_specify_cache(ex: IoSystem, call: ExportCall) -> int:
    """PVOID MmMapLockedPagesSpecifyCache(Mdl, AccessMode, CacheType, RequestedAddress,
    BugCheckOnFailure, Priority): KernelMode maps the MDL's frames in system space (NX with
    MdlMappingNoExecute in Priority, read-only with MdlMappingNoWrite; CacheType and
    RequestedAddress do not matter here) and returns the buffer's address there; NULL if it
    cannot, or bug check 0x3F NO_MORE_SYSTEM_PTES with BugCheckOnFailure. UserMode is not
    supported: it raises STATUS_INSUFFICIENT_RESOURCES."""
    return _map(ex, call, call.arg(0), call.arg(1), bool(call.arg(4) & 0xFFFF_FFFF),
                call.arg(5) & 0xFFFF_FFFF)


@export("MmMapLockedPages", dll="ntoskrnl.exe")
def mm_map_locked_pages(ex: IoSystem, call: ExportCall) -> int:
    """PVOID MmMapLockedPages(Mdl, AccessMode): MmMapLockedPagesSpecifyCache(Mdl, AccessMode,
    MmCached, NULL, TRUE, HighPagePriority): a failure is a bug check."""
    return _map(ex, call, call.arg(0), call.arg(1), True, HIGH_PAGE_PRIORITY)


@export("MmUnmapLockedPages", dll="ntoskrnl.exe")
def mm_unmap_locked_pages(ex: IoSystem, call: ExportCall) -> int:
    """VOID MmUnmapLockedPages(BaseAddress, Mdl): the system view at BaseAddress goes."""
    with _at_call_site(ex, call):
        ex.io.unmap_locked_pages(call.arg(0), call.arg(1))
    return 0


def _translate(ex: IoSystem, va: int) -> int | None:
    """The physical address ``va`` reaches now in the current address space (as ring 0
    reads it, no page brought in), or None if a read there would fault."""
    try:
        return mmu.walk(ex.mem, va, "read", cr3=ex.cpu.cr3, cpl=0, cr0=ex.cpu.cr0,
                        cr4=ex.cpu.cr4 & ~mmu.CR4.SMAP, efer=ex.cpu.efer).pa
    except (mmu.PageFault, mmu.GeneralProtection):
        return None


@export("MmIsAddressValid", dll="ntoskrnl.exe")
def mm_is_address_valid(ex: IoSystem, call: ExportCall) -> int:
    """BOOLEAN MmIsAddressValid(VirtualAddress): TRUE if a read at it would not page-fault
    now (a page in the pagefile or on a transition list is not valid: it would fault)."""
    return int(_translate(ex, call.arg(0)) is not None)


@export("MmGetPhysicalAddress", dll="ntoskrnl.exe")
def mm_get_physical_address(ex: IoSystem, call: ExportCall) -> int:
    """PHYSICAL_ADDRESS MmGetPhysicalAddress(BaseAddress): the physical address it maps to
    now (returned in RAX, a LARGE_INTEGER), 0 if it is not valid."""
    pa = _translate(ex, call.arg(0))
    return 0 if pa is None else pa
