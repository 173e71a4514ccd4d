"""Ex: executive support routines (pool), and the debug print routines (DbgPrintEx), as PE
drivers import them.

ExAllocatePoolWithTag and ExFreePoolWithTag live in emu.nt.exports (registered first);
the pool itself, its placement rules and the bug check 0xC2 parameters of each
misuse are emu.nt.pool's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from emu.nt.exports import (
    DBGPRINT_LIMIT,
    ExceptionRaised,
    ExportCall,
    allocate_pool,
    export,
    format_message,
    free_pool,
)
from emu.nt.pool import POOL_RAISE_IF_ALLOCATION_FAILURE, TAG_NONE, PoolType
from emu.nt.status import NTSTATUS

if TYPE_CHECKING:
    from emu.nt.interfaces import ExSupport

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


@export("ExAllocatePool2", dll="ntoskrnl.exe")
def ex_allocate_pool2(ex: ExSupport, call: ExportCall) -> int:
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


@export("ExAllocatePool", dll="ntoskrnl.exe")
def ex_allocate_pool(ex: ExSupport, call: ExportCall) -> int:
    """PVOID ExAllocatePool(PoolType, NumberOfBytes): ExAllocatePoolWithTag with the tag
    'None', as Windows gives it."""
    pool_type = call.arg(0) & 0xFFFF_FFFF
    return allocate_pool(ex, call, pool_type & ~POOL_RAISE_IF_ALLOCATION_FAILURE, call.arg(1),
                         TAG_NONE,
                         raise_on_failure=bool(pool_type & POOL_RAISE_IF_ALLOCATION_FAILURE))


@export("ExFreePool", dll="ntoskrnl.exe")
def ex_free_pool(ex: ExSupport, call: ExportCall) -> int:
    """VOID ExFreePool(P): ExFreePoolWithTag(P, 0), which matches any tag."""
    return free_pool(ex, call, call.arg(0), 0)


# -- debug output (DbgPrintEx: kernel-mode debug print, filtered) -----------------------------

DPFLTR_ERROR_LEVEL, DPFLTR_WARNING_LEVEL, DPFLTR_TRACE_LEVEL, DPFLTR_INFO_LEVEL = 0, 1, 2, 3
DPFLTR_MASK = 0x8000_0000
# Windows' filter with no "Debug Print Filter" set (Microsoft's "Reading and Filtering
# Debugging Messages"): Kd_WIN2000_Mask is 1 (DPFLTR_ERROR_LEVEL) and every component's
# mask is 0, so only error-level messages reach the debugger. This machine has no way to
# change the masks, so that is the filter.
DEFAULT_FILTER_MASK = 1 << DPFLTR_ERROR_LEVEL


def passes_filter(level: int) -> bool:
    """Whether DbgPrintEx at ``level`` prints: a Level of 0-31 is the bit 1 << Level, a larger
    one a mask itself (DPFLTR_MASK stripped); it prints if that meets the filter's mask."""
    level &= 0xFFFF_FFFF
    mask = 1 << level if level < 32 else level & ~DPFLTR_MASK
    return bool(mask & DEFAULT_FILTER_MASK)


class _VaList:
    """A va_list as the Microsoft x64 ABI passes it: a pointer to 8-byte argument slots
    (what format_message reads through ``arg``)."""

    def __init__(self, ex: ExSupport, address: int) -> None:
        self.ex, self.address = ex, address

    def arg(self, i: int) -> int:
        """The ``i``-th argument slot."""
        return self.ex.kernel_read_u64(self.address + 8 * i)


def _print_filtered(ex: ExSupport, level: int, prefix: bytes, fmt: int, args, first: int
                    ) -> int:
    if passes_filter(level):
        text = format_message(ex, ex.kernel_read_string(fmt), args, first)
        ex.debug_print((prefix + text)[:DBGPRINT_LIMIT])
    return NTSTATUS.STATUS_SUCCESS


@export("DbgPrintEx", dll="ntoskrnl.exe")
def dbg_print_ex(ex: ExSupport, call: ExportCall) -> int:
    """ULONG DbgPrintEx(ComponentId, Level, Format, ...): as DbgPrint, if the filter lets
    Level through (only DPFLTR_ERROR_LEVEL here, Windows' default); STATUS_SUCCESS either
    way."""
    return _print_filtered(ex, call.arg(1), b"", call.arg(2), call, 3)


@export("vDbgPrintEx", dll="ntoskrnl.exe")
def v_dbg_print_ex(ex: ExSupport, call: ExportCall) -> int:
    """ULONG vDbgPrintEx(ComponentId, Level, Format, va_list arglist): DbgPrintEx with its
    arguments in a va_list."""
    return _print_filtered(ex, call.arg(1), b"", call.arg(2), _VaList(ex, call.arg(3)), 0)


@export("vDbgPrintExWithPrefix", dll="ntoskrnl.exe")
def v_dbg_print_ex_with_prefix(ex: ExSupport, call: ExportCall) -> int:
    """ULONG vDbgPrintExWithPrefix(Prefix, ComponentId, Level, Format, va_list arglist):
    vDbgPrintEx with the Prefix string printed before the message."""
    prefix = ex.kernel_read_string(call.arg(0), DBGPRINT_LIMIT) if call.arg(0) else b""
    return _print_filtered(ex, call.arg(2), prefix, call.arg(3),
                           _VaList(ex, call.arg(4)), 0)
