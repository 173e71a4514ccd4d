"""Ke: the kernel's exports (IRQL, spin locks, DPCs, interrupts, events and waits,
attaching, time), as PE drivers import them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from emu.nt import kintr
from emu.nt.bugcheck import BugCheck, BugCheckCode
from emu.nt.exports import ExportCall, call_site, export

if TYPE_CHECKING:
    from emu.nt.kernel import Executive

# -- IRQL, spin locks, DPCs, interrupts ----------------------------------------------------
# On x64 the IRQL is CR8 (emu.hw.cr8): wdm.h inlines KeGetCurrentIrql, KfRaiseIrql and
# KeLowerIrql as CR8 moves, and these exports (ntoskrnl.def has them) read and write the
# same register. KIRQL is a UCHAR, returned in AL.

SPIN_LOCK_HELD = 1               # bit 0 of the KSPIN_LOCK, as KxAcquireSpinLock sets it


def set_irql(ex: Executive, new: int) -> None:
    """Write CR8, then deliver what a lower IRQL unmasks (interrupts above it; below
    DISPATCH_LEVEL, the DPC queue), as the software interrupts would on Windows."""
    old = ex.irql
    ex.irql = new
    if kintr.work_after_write(ex, old, new):
        kintr.dispatch(ex, ex.current_thread, here=True)


def _raise(ex: Executive, call: ExportCall, new: int, routine: str) -> int:
    """KfRaiseIrql's rule: the old IRQL; a new one below it is bug check 0x9
    IRQL_NOT_GREATER_OR_EQUAL (the IRQL asked for, the current one)."""
    old = ex.irql
    if new < old:
        raise BugCheck(BugCheckCode.IRQL_NOT_GREATER_OR_EQUAL, (new, old, 0, 0),
                       call_site(ex, call.return_address), f"{routine} to a lower IRQL")
    ex.irql = new
    return old


@export("KeLowerIrql", dll="ntoskrnl.exe", elf=False)
def ke_lower_irql(ex: Executive, call: ExportCall) -> int:
    """VOID KeLowerIrql(KIRQL NewIrql): CR8 = NewIrql, as wdm.h's x64 inline (__writecr8)
    does: no check (a NewIrql above the current IRQL raises it, as that inline would),
    then what the lower IRQL unmasks runs (a pending DPC below DISPATCH_LEVEL)."""
    new = call.arg(0) & 0xFF
    if new > kintr.HIGH_LEVEL:
        new &= kintr.HIGH_LEVEL          # CR8 keeps the low 4 bits of a KIRQL
    set_irql(ex, new)
    return 0


@export("KeRaiseIrqlToDpcLevel", dll="ntoskrnl.exe")
def ke_raise_irql_to_dpc_level(ex: Executive, call: ExportCall) -> int:
    """KIRQL KeRaiseIrqlToDpcLevel(VOID): KfRaiseIrql(DISPATCH_LEVEL)."""
    return _raise(ex, call, kintr.DISPATCH_LEVEL, "KeRaiseIrqlToDpcLevel")


def _acquire(ex: Executive, call: ExportCall, lock: int) -> None:
    """Take the KSPIN_LOCK: on this one processor a held lock would spin forever; Windows'
    checked kernel stops with SPIN_LOCK_ALREADY_OWNED (0xF), and so does this one."""
    if ex.kernel_read_u64(lock) & SPIN_LOCK_HELD:
        raise BugCheck(BugCheckCode.SPIN_LOCK_ALREADY_OWNED, (lock, 0, 0, 0),
                       call_site(ex, call.return_address),
                       "a spin lock acquired by the processor that holds it")
    ex.kernel_write(lock, SPIN_LOCK_HELD.to_bytes(8, "little"))


def _release(ex: Executive, call: ExportCall, lock: int) -> None:
    """Free the KSPIN_LOCK; one not held is SPIN_LOCK_NOT_OWNED (0x10)."""
    if not ex.kernel_read_u64(lock) & SPIN_LOCK_HELD:
        raise BugCheck(BugCheckCode.SPIN_LOCK_NOT_OWNED, (lock, 0, 0, 0),
                       call_site(ex, call.return_address), "a spin lock released that is not held")
    ex.kernel_write(lock, bytes(8))


@export("KeAcquireSpinLockRaiseToDpc", dll="ntoskrnl.exe")
def ke_acquire_spin_lock_raise_to_dpc(ex: Executive, call: ExportCall) -> int:
    """KIRQL KeAcquireSpinLockRaiseToDpc(PKSPIN_LOCK SpinLock) (wdm.h's KeAcquireSpinLock on
    x64): raise to DISPATCH_LEVEL, take the lock, return the old IRQL."""
    old = _raise(ex, call, kintr.DISPATCH_LEVEL, "KeAcquireSpinLock")
    _acquire(ex, call, call.arg(0))
    return old


@export("KeReleaseSpinLock", dll="ntoskrnl.exe")
def ke_release_spin_lock(ex: Executive, call: ExportCall) -> int:
    """VOID KeReleaseSpinLock(PKSPIN_LOCK SpinLock, KIRQL NewIrql): free the lock, lower the
    IRQL to NewIrql (what that unmasks runs then)."""
    _release(ex, call, call.arg(0))
    set_irql(ex, call.arg(1) & kintr.HIGH_LEVEL)
    return 0


@export("KeAcquireSpinLockAtDpcLevel", dll="ntoskrnl.exe")
def ke_acquire_spin_lock_at_dpc_level(ex: Executive, call: ExportCall) -> int:
    """VOID KeAcquireSpinLockAtDpcLevel(PKSPIN_LOCK SpinLock): take the lock, IRQL as it is
    (the caller is at DISPATCH_LEVEL or above)."""
    _acquire(ex, call, call.arg(0))
    return 0


@export("KeReleaseSpinLockFromDpcLevel", dll="ntoskrnl.exe")
def ke_release_spin_lock_from_dpc_level(ex: Executive, call: ExportCall) -> int:
    """VOID KeReleaseSpinLockFromDpcLevel(PKSPIN_LOCK SpinLock): free it, IRQL as it is."""
    _release(ex, call, call.arg(0))
    return 0


@export("KeInitializeDpc", dll="ntoskrnl.exe")
def ke_initialize_dpc(ex: Executive, call: ExportCall) -> int:
    """VOID KeInitializeDpc(PRKDPC Dpc, PKDEFERRED_ROUTINE DeferredRoutine, PVOID
    DeferredContext): the KDPC in the caller's memory (emu.nt.kintr.initialize_dpc)."""
    kintr.initialize_dpc(ex, call.arg(0), call.arg(1), call.arg(2))
    return 0


@export("KeInsertQueueDpc", dll="ntoskrnl.exe")
def ke_insert_queue_dpc(ex: Executive, call: ExportCall) -> int:
    """BOOLEAN KeInsertQueueDpc(PRKDPC Dpc, PVOID SystemArgument1, PVOID SystemArgument2):
    FALSE if it is queued already (emu.nt.kintr.insert_queue_dpc)."""
    return int(kintr.insert_queue_dpc(ex, call.arg(0), call.arg(1), call.arg(2)))


@export("KeRemoveQueueDpc", dll="ntoskrnl.exe")
def ke_remove_queue_dpc(ex: Executive, call: ExportCall) -> int:
    """BOOLEAN KeRemoveQueueDpc(PRKDPC Dpc): TRUE if it was queued (and is no more)."""
    return int(kintr.remove_queue_dpc(ex, call.arg(0)))


@export("IoDisconnectInterrupt", dll="ntoskrnl.exe")
def io_disconnect_interrupt(ex: Executive, call: ExportCall) -> int:
    """VOID IoDisconnectInterrupt(PKINTERRUPT InterruptObject): the ISR is called no more
    (a pending interrupt of its line is dropped) and the KINTERRUPT is freed; an object
    IoConnectInterrupt did not return is left alone."""
    for vector, interrupt in list(ex.interrupts.items()):
        if interrupt.address == call.arg(0):
            del ex.interrupts[vector]
            ex.pending_interrupts.discard(vector)
            ex.pools.free(interrupt.address, kintr.KINTERRUPT_TAG)
    return 0
