"""Ex: executive support routines (pool), as PE drivers import them.

ExAllocatePoolWithTag and ExFreePoolWithTag live in emu.nt.exports (the ELF drivers import
them too); the pool itself, its placement rules and the bug check 0xC2 parameters of each
misuse are emu.nt.pool's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from emu.nt.exports import ExceptionRaised, ExportCall, allocate_pool, export, free_pool
from emu.nt.pool import TAG_NONE, PoolType
from emu.nt.status import NTSTATUS

if TYPE_CHECKING:
    from emu.nt.kernel import Executive

# POOL_FLAGS (wdm.h, Windows 10 2004; Microsoft's "POOL_FLAGS" page). The low 32 bits are
# required: "allocation fails if they cannot be satisfied"; the high 32 bits optional:
# "allocation succeeds if they cannot be satisfied or are unrecognized".
POOL_FLAG_USE_QUOTA = 0x0001
POOL_FLAG_UNINITIALIZED = 0x0002
POOL_FLAG_SESSION = 0x0004
POOL_FLAG_CACHE_ALIGNED = 0x0008
POOL_FLAG_RAISE_ON_FAILURE = 0x0020
POOL_FLAG_NON_PAGED = 0x0040
POOL_FLAG_NON_PAGED_EXECUTE = 0x0080
POOL_FLAG_PAGED = 0x0100
REQUIRED_FLAGS = 0xFFFF_FFFF
# The pool each type flag names: exactly one must be given.
_POOL_OF_FLAG = {POOL_FLAG_NON_PAGED: PoolType.NonPagedPoolNx,
                 POOL_FLAG_NON_PAGED_EXECUTE: PoolType.NonPagedPool,
                 POOL_FLAG_PAGED: PoolType.PagedPool}
# The required flags a driver may give here (the others are reserved for the system, or
# ask for session pool, which this machine has not got).
_SUPPORTED = (POOL_FLAG_USE_QUOTA | POOL_FLAG_UNINITIALIZED | POOL_FLAG_CACHE_ALIGNED
              | POOL_FLAG_RAISE_ON_FAILURE | POOL_FLAG_NON_PAGED | POOL_FLAG_NON_PAGED_EXECUTE
              | POOL_FLAG_PAGED)


@export("ExAllocatePool2", dll="ntoskrnl.exe", elf=False)
def ex_allocate_pool2(ex: Executive, call: ExportCall) -> int:
    """PVOID ExAllocatePool2(POOL_FLAGS Flags, SIZE_T NumberOfBytes, ULONG Tag): zeroed pool
    (also with POOL_FLAG_UNINITIALIZED here: pool is never reused). NULL for no memory, a
    Tag of 0 or invalid flags; with POOL_FLAG_RAISE_ON_FAILURE those raise
    STATUS_INSUFFICIENT_RESOURCES instead (the ExAllocatePool2 reference). POOL_FLAG_USE_QUOTA
    charges nothing (no quotas here). A bad IRQL is bug check 0xC2, as for
    ExAllocatePoolWithTag."""
    flags, size, tag = call.arg(0), call.arg(1), call.arg(2) & 0xFFFF_FFFF
    raise_on_failure = bool(flags & POOL_FLAG_RAISE_ON_FAILURE)
    required = flags & REQUIRED_FLAGS
    types = [kind for flag, kind in _POOL_OF_FLAG.items() if required & flag]
    if tag == 0 or len(types) != 1 or required & ~_SUPPORTED:
        if raise_on_failure:
            raise ExceptionRaised(NTSTATUS.STATUS_INSUFFICIENT_RESOURCES)
        return 0
    kind = types[0]
    aligned = bool(required & POOL_FLAG_CACHE_ALIGNED)
    pool_type = int(kind) | (4 if aligned else 0)     # the POOL_TYPE it amounts to (516:
    #                                                   NonPagedPoolNxCacheAligned)
    return allocate_pool(ex, call, pool_type, size, tag, raise_on_failure=raise_on_failure)


@export("ExAllocatePool", dll="ntoskrnl.exe", elf=False)
def ex_allocate_pool(ex: Executive, call: ExportCall) -> int:
    """PVOID ExAllocatePool(PoolType, NumberOfBytes): ExAllocatePoolWithTag with the tag
    'None', as Windows gives it."""
    return allocate_pool(ex, call, call.arg(0) & 0xFFFF_FFFF, call.arg(1), TAG_NONE)


@export("ExFreePool", dll="ntoskrnl.exe", elf=False)
def ex_free_pool(ex: Executive, call: ExportCall) -> int:
    """VOID ExFreePool(P): ExFreePoolWithTag(P, 0), which matches any tag."""
    return free_pool(ex, call, call.arg(0), 0)
