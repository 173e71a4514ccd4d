"""Ke: the kernel's exports (IRQL, spin locks, DPCs, interrupts, events and waits,
attaching, time), as PE drivers import them."""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from emu.nt import eprocess, kintr, wdm
from emu.nt.bugcheck import BugCheck, BugCheckCode
from emu.nt.exports import ExportCall, call_site, export
from emu.nt.kedefs import DEADLOCK, MachineStop
from emu.nt.kuser import (  # noqa: F401 (SYSTEM_TIME_AT_BOOT: ke's constant as before)
    PERFORMANCE_FREQUENCY,
    SYSTEM_TIME_AT_BOOT,
    TIME_INCREMENT,
    interrupt_time,
    system_time,
)
from emu.nt.ntos import rtl
from emu.nt.process import ProcessState
from emu.nt.status import NTSTATUS

if TYPE_CHECKING:
    from emu.nt.interfaces import KeServices
    from emu.nt.process import Process

NTOSKRNL = "ntoskrnl.exe"

# -- IRQL, spin locks, DPCs, interrupts ----------------------------------------------------
# On x64 the IRQL is CR8 (emu.hw.cr8): wdm.h inlines KeGetCurrentIrql, KfRaiseIrql and
# KeLowerIrql as CR8 moves, and these exports (ntoskrnl.def has them) read and write the
# same register. KIRQL is a UCHAR, returned in AL.

SPIN_LOCK_HELD = 1               # bit 0 of the KSPIN_LOCK, as KxAcquireSpinLock sets it


def set_irql(ex: KeServices, new: int) -> None:
    """Write CR8, then deliver what a lower IRQL unmasks (interrupts above it; below
    DISPATCH_LEVEL, the DPC queue), as the software interrupts would on Windows."""
    old = ex.irql
    ex.irql = new
    if kintr.work_after_write(ex, old, new):
        kintr.dispatch(ex, ex.current_thread, here=True)


def _raise(ex: KeServices, call: ExportCall, new: int, routine: str) -> int:
    """KfRaiseIrql's rule: the old IRQL; a new one below it is bug check 0x9
    IRQL_NOT_GREATER_OR_EQUAL (the IRQL asked for, the current one)."""
    old = ex.irql
    if new < old:
        raise BugCheck(BugCheckCode.IRQL_NOT_GREATER_OR_EQUAL, (new, old, 0, 0),
                       call_site(ex, call.return_address), f"{routine} to a lower IRQL")
    ex.irql = new
    return old


@export("KeLowerIrql", dll="ntoskrnl.exe")
def ke_lower_irql(ex: KeServices, call: ExportCall) -> int:
    """VOID KeLowerIrql(KIRQL NewIrql): CR8 = NewIrql, as wdm.h's x64 inline (__writecr8)
    does: no check (a NewIrql above the current IRQL raises it, as that inline would),
    then what the lower IRQL unmasks runs (a pending DPC below DISPATCH_LEVEL)."""
    new = call.arg(0) & 0xFF
    if new > kintr.HIGH_LEVEL:
        new &= kintr.HIGH_LEVEL          # CR8 keeps the low 4 bits of a KIRQL
    set_irql(ex, new)
    return 0


@export("KeRaiseIrqlToDpcLevel", dll="ntoskrnl.exe")
def ke_raise_irql_to_dpc_level(ex: KeServices, call: ExportCall) -> int:
    """KIRQL KeRaiseIrqlToDpcLevel(VOID): KfRaiseIrql(DISPATCH_LEVEL)."""
    return _raise(ex, call, kintr.DISPATCH_LEVEL, "KeRaiseIrqlToDpcLevel")


def _acquire(ex: KeServices, call: ExportCall, lock: int) -> None:
    """Take the KSPIN_LOCK: on this one processor a held lock would spin forever; Windows'
    checked kernel stops with SPIN_LOCK_ALREADY_OWNED (0xF), and so does this one."""
    if ex.kernel_read_u64(lock) & SPIN_LOCK_HELD:
        raise BugCheck(BugCheckCode.SPIN_LOCK_ALREADY_OWNED, (lock, 0, 0, 0),
                       call_site(ex, call.return_address),
                       "a spin lock acquired by the processor that holds it")
    ex.kernel_write(lock, SPIN_LOCK_HELD.to_bytes(8, "little"))


def _release(ex: KeServices, call: ExportCall, lock: int) -> None:
    """Free the KSPIN_LOCK; one not held is SPIN_LOCK_NOT_OWNED (0x10)."""
    if not ex.kernel_read_u64(lock) & SPIN_LOCK_HELD:
        raise BugCheck(BugCheckCode.SPIN_LOCK_NOT_OWNED, (lock, 0, 0, 0),
                       call_site(ex, call.return_address), "a spin lock released that is not held")
    ex.kernel_write(lock, bytes(8))


@export("KeAcquireSpinLockRaiseToDpc", dll="ntoskrnl.exe")
def ke_acquire_spin_lock_raise_to_dpc(ex: KeServices, call: ExportCall) -> int:
    """KIRQL KeAcquireSpinLockRaiseToDpc(PKSPIN_LOCK SpinLock) (wdm.h's KeAcquireSpinLock on
    x64): raise to DISPATCH_LEVEL, take the lock, return the old IRQL."""
    old = _raise(ex, call, kintr.DISPATCH_LEVEL, "KeAcquireSpinLock")
    _acquire(ex, call, call.arg(0))
    return old


@export("KeReleaseSpinLock", dll="ntoskrnl.exe")
def ke_release_spin_lock(ex: KeServices, call: ExportCall) -> int:
    """VOID KeReleaseSpinLock(PKSPIN_LOCK SpinLock, KIRQL NewIrql): free the lock, lower the
    IRQL to NewIrql (what that unmasks runs then)."""
    _release(ex, call, call.arg(0))
    set_irql(ex, call.arg(1) & kintr.HIGH_LEVEL)
    return 0


@export("KeAcquireSpinLockAtDpcLevel", dll="ntoskrnl.exe")
def ke_acquire_spin_lock_at_dpc_level(ex: KeServices, call: ExportCall) -> int:
    """VOID KeAcquireSpinLockAtDpcLevel(PKSPIN_LOCK SpinLock): take the lock, IRQL as it is
    (the caller is at DISPATCH_LEVEL or above)."""
    _acquire(ex, call, call.arg(0))
    return 0


@export("KeReleaseSpinLockFromDpcLevel", dll="ntoskrnl.exe")
def ke_release_spin_lock_from_dpc_level(ex: KeServices, call: ExportCall) -> int:
    """VOID KeReleaseSpinLockFromDpcLevel(PKSPIN_LOCK SpinLock): free it, IRQL as it is."""
    _release(ex, call, call.arg(0))
    return 0


@export("KeInitializeDpc", dll="ntoskrnl.exe")
def ke_initialize_dpc(ex: KeServices, call: ExportCall) -> int:
    """VOID KeInitializeDpc(PRKDPC Dpc, PKDEFERRED_ROUTINE DeferredRoutine, PVOID
    DeferredContext): the KDPC in the caller's memory (emu.nt.kintr.initialize_dpc)."""
    kintr.initialize_dpc(ex, call.arg(0), call.arg(1), call.arg(2))
    return 0


@export("KeInsertQueueDpc", dll="ntoskrnl.exe")
def ke_insert_queue_dpc(ex: KeServices, call: ExportCall) -> int:
    """BOOLEAN KeInsertQueueDpc(PRKDPC Dpc, PVOID SystemArgument1, PVOID SystemArgument2):
    FALSE if it is queued already (emu.nt.kintr.insert_queue_dpc)."""
    return int(kintr.insert_queue_dpc(ex, call.arg(0), call.arg(1), call.arg(2)))


@export("KeRemoveQueueDpc", dll="ntoskrnl.exe")
def ke_remove_queue_dpc(ex: KeServices, call: ExportCall) -> int:
    """BOOLEAN KeRemoveQueueDpc(PRKDPC Dpc): TRUE if it was queued (and is no more)."""
    return int(kintr.remove_queue_dpc(ex, call.arg(0)))


@export("IoDisconnectInterrupt", dll="ntoskrnl.exe")
def io_disconnect_interrupt(ex: KeServices, call: ExportCall) -> int:
    """VOID IoDisconnectInterrupt(PKINTERRUPT InterruptObject): the ISR is called no more
    (a pending interrupt of its line is dropped) and the KINTERRUPT is freed; an object
    IoConnectInterrupt did not return is left alone."""
    for vector, interrupt in list(ex.interrupts.items()):
        if interrupt.address == call.arg(0):
            del ex.interrupts[vector]
            ex.pending_interrupts.discard(vector)
            ex.pools.free(interrupt.address, kintr.KINTERRUPT_TAG)
    return 0


# -- events, waits, attaching, time ---------------------------------------------------------
#
# The routines touch the caller's structures (a KEVENT, a timeout, a KAPC_STATE) as their
# code in nt would: a bad pointer is the page fault inside nt!KeSetEvent etc. (emu.nt.ntos.rtl).
#
# Time: the machine's clock counts instructions (emu.nt.scheduler), and one instruction is
# 100 ns here, the unit of every kernel time (a 10 MHz machine): a relative timeout of
# -10000 (1 ms) is 10,000 instructions of the clock, exactly.
#
# Waiting: Windows puts the waiting thread to sleep and runs others. A driver's routine
# runs here inside the executive's call of it (call_kernel, on the caller's kernel stack),
# and the executive cannot switch to another thread until it returns, so a wait that is
# not satisfied at once lets only the hardware go on: the clock runs forward to the next
# device interrupt, whose ISR (and the DPCs it queues) run on the waiting thread's kernel
# stack below the waiter's frames, in its address space, as an interrupt taken there would;
# a KeSetEvent from that DPC satisfies the wait. With no interrupt to come before the
# timeout, the clock runs to the timeout (STATUS_TIMEOUT); with no timeout either, nothing
# can ever satisfy the wait: the machine stops as it does for a deadlock (exit 123).

DISPATCH_LEVEL = 2
ATTEMPTED_SWITCH_FROM_DPC = BugCheckCode.ATTEMPTED_SWITCH_FROM_DPC
MAXIMUM_WAIT_OBJECTS_EXCEEDED = BugCheckCode.MAXIMUM_WAIT_OBJECTS_EXCEEDED
THREAD_WAIT_OBJECTS = 3         # waits on more objects need the caller's WaitBlockArray
MAXIMUM_WAIT_OBJECTS = 64
WAIT_ALL, WAIT_ANY = 0, 1       # WAIT_TYPE
_TYPE, _SIZE, _SIGNAL_STATE = (wdm.DISPATCHER_HEADER[f] for f in ("Type", "Size", "SignalState"))
_WAIT_LIST = wdm.DISPATCHER_HEADER["WaitListHead"]


def _signal_state(ex: KeServices, obj: int) -> int:
    """Header.SignalState of a dispatcher object (a LONG)."""
    return struct.unpack("<i", rtl.read(ex, obj + _SIGNAL_STATE, 4))[0]


def _set_signal_state(ex: KeServices, obj: int, state: int) -> None:
    rtl.write(ex, obj + _SIGNAL_STATE, struct.pack("<i", state))


def _signalled(ex: KeServices, obj: int) -> bool:
    """Whether a wait on ``obj`` is satisfied now: SignalState > 0 (KiWaitSatisfy's rule for
    events and for any object whose header says it is signalled)."""
    return _signal_state(ex, obj) > 0


def _satisfy(ex: KeServices, obj: int) -> None:
    """Satisfying a wait has the object's side effect: a synchronization event resets
    ("an auto-reset event": KeInitializeEvent); a notification event stays signalled. Other
    dispatcher objects are only read (no mutex or semaphore is acquired here)."""
    if rtl.read(ex, obj + _TYPE, 1)[0] == wdm.SYNCHRONIZATION_EVENT:
        _set_signal_state(ex, obj, 0)


def _timeout(ex: KeServices, pointer: int) -> int | None:
    """A PLARGE_INTEGER timeout as instructions of the clock from now: None for NULL
    (forever); a negative value is relative, in 100 ns units; a positive one an absolute
    system time (100 ns units since 1601, KeQuerySystemTime's), 0 if it has passed."""
    if not pointer:
        return None
    value = struct.unpack("<q", rtl.read(ex, pointer, 8))[0]
    if value <= 0:
        return -value
    return max(0, value - system_time(ex))


def _no_switch_at_dispatch(ex: KeServices, call: ExportCall, what: str) -> None:
    """A wait that must block at DISPATCH_LEVEL or above: the dispatcher cannot switch threads
    there. Windows stops with ATTEMPTED_SWITCH_FROM_DPC (0xB8: original thread, new thread,
    the original thread's stack, 0); there is no thread object here (0), and the stack is
    the caller's RSP. (KeWaitForSingleObject: "if Timeout = NULL or *Timeout != 0, the caller
    must be running at IRQL <= APC_LEVEL".)"""
    if ex.irql >= DISPATCH_LEVEL:
        raise BugCheck(ATTEMPTED_SWITCH_FROM_DPC, (0, 0, call.rsp, 0),
                       call_site(ex, call.return_address),
                       f"{what} at IRQL {ex.irql}: no thread switch is possible at "
                       "DISPATCH_LEVEL or above")


def _advance_clock(ex: KeServices, to: int) -> None:
    """The machine idles until ``to``: its clock jumps there, as when every thread waits."""
    ex.scheduler.idle_skipped += max(0, to - ex.clock)


def _wait(ex: KeServices, call: ExportCall, done: Callable[[], bool],
          ticks: int | None) -> bool:
    """Wait until ``done()`` or ``ticks`` instructions of the clock have passed (None:
    forever), the hardware going on meanwhile (see the heading above). True when satisfied,
    False on the timeout; a wait nothing can satisfy stops the machine (deadlock)."""
    deadline = None if ticks is None else ex.clock + ticks
    while not done():
        device = ex.device_deadline()
        if device is not None and (deadline is None or device <= deadline):
            _advance_clock(ex, device)
            irql = ex.irql
            # Taken on the waiter's kernel stack, below its frames (x64 has no red zone).
            ex.deliver_interrupts(ex.current_thread, here=True)
            ex.irql = irql
            continue
        if deadline is None:
            raise MachineStop(DEADLOCK)
        _advance_clock(ex, deadline)
        return False
    return True


@dataclass(eq=False)
class _Waiter:
    """A driver waiting right now: its objects, WaitAny (or WaitAll), and the index of a
    synchronization event KeSetEvent handed to it."""

    objects: list[int]
    wait_any: bool
    handed: int | None = None


def _waiters(ex: KeServices) -> list[_Waiter]:
    return ex.__dict__.setdefault("waiters", [])


def _ready(ex: KeServices, waiter: _Waiter) -> int | None:
    """The status the wait ends with if it can end now (WaitAny: the index of the first
    signalled object, STATUS_WAIT_0 + i; WaitAll: STATUS_SUCCESS), else None."""
    if waiter.handed is not None:
        return waiter.handed
    states = [_signalled(ex, o) for o in waiter.objects]
    if waiter.wait_any:
        return next((i for i, signalled in enumerate(states) if signalled), None)
    return NTSTATUS.STATUS_SUCCESS if all(states) else None


def _wait_for(ex: KeServices, call: ExportCall, objects: list[int], wait_any: bool,
              ticks: int | None, what: str) -> int:
    """KeWaitForSingleObject/KeWaitForMultipleObjects: the status; the objects that satisfy
    the wait acquired (WaitAny: the one; WaitAll: all, once all are signalled together)."""
    waiter = _Waiter(objects, wait_any)
    status = _ready(ex, waiter)
    if status is None:
        if ticks == 0:
            return NTSTATUS.STATUS_TIMEOUT
        _no_switch_at_dispatch(ex, call, what)
        _waiters(ex).append(waiter)
        try:
            if not _wait(ex, call, lambda: _ready(ex, waiter) is not None, ticks):
                return NTSTATUS.STATUS_TIMEOUT
        finally:
            _waiters(ex).remove(waiter)
        status = _ready(ex, waiter)
    if waiter.handed is None:            # a handed event was never signalled: nothing to take
        for obj in [objects[status]] if wait_any else objects:
            _satisfy(ex, obj)
    return status


@export("KeInitializeEvent", dll=NTOSKRNL)
def ke_initialize_event(ex: KeServices, call: ExportCall) -> int:
    """VOID KeInitializeEvent(PRKEVENT Event, EVENT_TYPE Type, BOOLEAN State): the header as
    Windows writes it: Type (NotificationEvent 0, SynchronizationEvent 1), Size in LONGs
    (sizeof(KEVENT) / 4 = 6), SignalState = State, an empty WaitListHead (pointing at
    itself); the other header bytes 0."""
    event = call.arg(0)
    header = bytearray(wdm.KEVENT.size)
    header[_TYPE] = call.arg(1) & 0xFF
    header[_SIZE] = wdm.KEVENT.size // 4
    struct.pack_into("<i", header, _SIGNAL_STATE, 1 if call.arg(2) & 0xFF else 0)
    struct.pack_into("<QQ", header, _WAIT_LIST, event + _WAIT_LIST, event + _WAIT_LIST)
    rtl.write(ex, event, bytes(header))
    return 0


@export("KeSetEvent", dll=NTOSKRNL)
def ke_set_event(ex: KeServices, call: ExportCall) -> int:
    """LONG KeSetEvent(PRKEVENT Event, KPRIORITY Increment, BOOLEAN Wait): signal it; the
    previous SignalState is returned. A synchronization event that a driver is waiting on
    goes to that waiter instead and stays not signalled (KiUnwaitThread: one waiter takes
    the signal)."""
    event = call.arg(0)
    previous = _signal_state(ex, event)
    if previous <= 0 and rtl.read(ex, event + _TYPE, 1)[0] == wdm.SYNCHRONIZATION_EVENT:
        for waiter in _waiters(ex):
            if waiter.wait_any and waiter.handed is None and event in waiter.objects:
                waiter.handed = waiter.objects.index(event)
                return previous & 0xFFFF_FFFF
    _set_signal_state(ex, event, 1)
    return previous & 0xFFFF_FFFF


@export("KeResetEvent", dll=NTOSKRNL)
def ke_reset_event(ex: KeServices, call: ExportCall) -> int:
    """LONG KeResetEvent(PRKEVENT Event): not signalled; the previous SignalState is
    returned."""
    previous = _signal_state(ex, call.arg(0))
    _set_signal_state(ex, call.arg(0), 0)
    return previous & 0xFFFF_FFFF


@export("KeClearEvent", dll=NTOSKRNL)
def ke_clear_event(ex: KeServices, call: ExportCall) -> int:
    """VOID KeClearEvent(PRKEVENT Event): not signalled."""
    _set_signal_state(ex, call.arg(0), 0)
    return 0


@export("KeReadStateEvent", dll=NTOSKRNL)
def ke_read_state_event(ex: KeServices, call: ExportCall) -> int:
    """LONG KeReadStateEvent(PRKEVENT Event): its SignalState."""
    return _signal_state(ex, call.arg(0)) & 0xFFFF_FFFF


@export("KeWaitForSingleObject", dll=NTOSKRNL)
def ke_wait_for_single_object(ex: KeServices, call: ExportCall) -> int:
    """NTSTATUS KeWaitForSingleObject(Object, WaitReason, WaitMode, Alertable, Timeout):
    STATUS_SUCCESS once the object is signalled (a synchronization event resets as it
    satisfies the wait), STATUS_TIMEOUT when the timeout passes first (at once for a zero
    timeout, allowed at DISPATCH_LEVEL)."""
    return _wait_for(ex, call, [call.arg(0)], True, _timeout(ex, call.arg(4)),
                     "KeWaitForSingleObject")


@export("KeWaitForMultipleObjects", dll=NTOSKRNL)
def ke_wait_for_multiple_objects(ex: KeServices, call: ExportCall) -> int:
    """NTSTATUS KeWaitForMultipleObjects(Count, Object[], WaitType, WaitReason, WaitMode,
    Alertable, Timeout, WaitBlockArray): WaitAny returns STATUS_WAIT_0 + the index of the
    first signalled object (only it is acquired); WaitAll STATUS_SUCCESS once all are
    signalled at once (all acquired); STATUS_TIMEOUT as KeWaitForSingleObject. More than
    MAXIMUM_WAIT_OBJECTS (64) objects, or more than THREAD_WAIT_OBJECTS (3) without a
    WaitBlockArray, is bug check 0xC MAXIMUM_WAIT_OBJECTS_EXCEEDED."""
    count, array, wait_type = call.arg(0) & 0xFFFF_FFFF, call.arg(1), call.arg(2) & 0xFFFF_FFFF
    if count > MAXIMUM_WAIT_OBJECTS or count > THREAD_WAIT_OBJECTS and not call.arg(7):
        raise BugCheck(MAXIMUM_WAIT_OBJECTS_EXCEEDED, (0, 0, 0, 0),
                       call_site(ex, call.return_address),
                       f"KeWaitForMultipleObjects with {count} objects")
    objects = list(struct.unpack(f"<{count}Q", rtl.read(ex, array, 8 * count))) \
        if count else []
    return _wait_for(ex, call, objects, wait_type == WAIT_ANY, _timeout(ex, call.arg(6)),
                     "KeWaitForMultipleObjects")


@export("KeDelayExecutionThread", dll=NTOSKRNL)
def ke_delay_execution_thread(ex: KeServices, call: ExportCall) -> int:
    """NTSTATUS KeDelayExecutionThread(WaitMode, Alertable, Interval): STATUS_SUCCESS once the
    interval (negative: relative, 100 ns units; positive: an absolute system time) has
    passed on the machine's clock, device interrupts taken meanwhile."""
    ticks = _timeout(ex, call.arg(2)) or 0
    if ticks:
        _no_switch_at_dispatch(ex, call, "KeDelayExecutionThread")
        _wait(ex, call, lambda: False, ticks)
    return NTSTATUS.STATUS_SUCCESS


# -- attaching ----------------------------------------------------------------------------
#
# KeStackAttachProcess switches the thread to another process's address space (CR3), so the
# driver reads THAT process's user memory, and KeUnstackDetachProcess switches back, as
# KiAttachProcess / KiDetachProcess do. What the thread is attached to is kept per thread
# (None: DriverEntry's system context), valid while CR3 is that process's: a kernel call
# that returned attached has had its CR3 put back by the executive, so its stale
# attachment is forgotten (Windows would stop: INVALID_PROCESS_ATTACH_ATTEMPT).

INVALID_PROCESS_ATTACH_ATTEMPT = BugCheckCode.INVALID_PROCESS_ATTACH_ATTEMPT
INVALID_PROCESS_DETACH_ATTEMPT = BugCheckCode.INVALID_PROCESS_DETACH_ATTEMPT
_APC_PROCESS = wdm.KAPC_STATE["Process"]
ATTACHED_TO_ITSELF = 1          # ApcState->Process when the thread was in the process already


def _attachments(ex: KeServices) -> dict:
    return ex.__dict__.setdefault("attachments", {})


def _attached(ex: KeServices) -> Process | None:
    """The process the current thread is attached to, or None."""
    table = _attachments(ex)
    proc = table.get(ex.current_thread)
    if proc is not None and ex.cpu.cr3 != proc.space.cr3:
        del table[ex.current_thread]          # left by a kernel call that has returned
        return None
    return proc


def _home_space(ex: KeServices):
    return ex.current_thread.process.space if ex.current_thread else ex.mm.system


@export("KeStackAttachProcess", dll=NTOSKRNL)
def ke_stack_attach_process(ex: KeServices, call: ExportCall) -> int:
    """VOID KeStackAttachProcess(PRKPROCESS Process, PRKAPC_STATE ApcState): into Process's
    address space. ApcState gets what a detach restores: Process NULL (the thread was in
    its own process), the process it was attached to (a nested attach), or 1 when it is in
    Process already (nothing switches; the detach does nothing). Not a process object, a
    process that has ended, or IRQL DISPATCH_LEVEL or above: bug check 0x5
    INVALID_PROCESS_ATTACH_ATTEMPT (the target; the process whose address space the thread
    is in, ApcState.Process: the one it is attached to, else its own, the System process's
    for DriverEntry; the APC state index; nonzero at DISPATCH_LEVEL: a DPC may be running)."""
    obj, state = call.arg(0), call.arg(1)
    target, attached = eprocess.process_at(ex, obj), _attached(ex)
    current = attached or (ex.current_thread.process if ex.current_thread else None)
    if target is None or target.state is ProcessState.TERMINATED or ex.irql >= DISPATCH_LEVEL:
        raise BugCheck(INVALID_PROCESS_ATTACH_ATTEMPT,
                       (obj, eprocess.of(ex, current), int(bool(attached)),
                        int(ex.irql >= DISPATCH_LEVEL)),
                       call_site(ex, call.return_address),
                       "KeStackAttachProcess to no live process" if ex.irql < DISPATCH_LEVEL
                       else f"KeStackAttachProcess at IRQL {ex.irql}")
    if target is current:
        rtl.write(ex, state + _APC_PROCESS, struct.pack("<Q", ATTACHED_TO_ITSELF))
        return 0
    saved = bytearray(wdm.KAPC_STATE.size)
    for head in (state, state + 0x10):                  # ApcListHead[KernelMode, UserMode]
        struct.pack_into("<QQ", saved, head - state, head, head)
    struct.pack_into("<Q", saved, _APC_PROCESS, eprocess.of(ex, attached) if attached else 0)
    rtl.write(ex, state, bytes(saved))
    _attachments(ex)[ex.current_thread] = target
    ex.load_cr3(target.space.cr3)
    return 0


@export("KeUnstackDetachProcess", dll=NTOSKRNL)
def ke_unstack_detach_process(ex: KeServices, call: ExportCall) -> int:
    """VOID KeUnstackDetachProcess(PRKAPC_STATE ApcState): back to what ApcState saved: the
    process attached to before, or the thread's own address space. Detaching a thread that
    is not attached (an ApcState used twice, or out of order) is bug check 0x6
    INVALID_PROCESS_DETACH_ATTEMPT (no parameters: 0, 0, 0, 0)."""
    saved = struct.unpack("<Q", rtl.read(ex, call.arg(0) + _APC_PROCESS, 8))[0]
    if saved == ATTACHED_TO_ITSELF:
        return 0
    previous = eprocess.process_at(ex, saved) if saved else None
    if _attached(ex) is None or saved and previous is None:
        raise BugCheck(INVALID_PROCESS_DETACH_ATTEMPT, (0, 0, 0, 0),
                       call_site(ex, call.return_address),
                       "KeUnstackDetachProcess of a thread that is not attached")
    if previous is not None:
        _attachments(ex)[ex.current_thread] = previous
        ex.load_cr3(previous.space.cr3)
    else:
        del _attachments(ex)[ex.current_thread]
        ex.load_cr3(_home_space(ex).cr3)
    return 0


# -- time --------------------------------------------------------------------------------
# The clock and KUSER_SHARED_DATA are Ke's own (emu.nt.kuser); these are its exports.


@export("KeQueryTimeIncrement", dll=NTOSKRNL)
def ke_query_time_increment(ex: KeServices, call: ExportCall) -> int:
    """ULONG KeQueryTimeIncrement(void): 100 ns units added to the interrupt time at each
    clock tick (156250: 15.625 ms, Windows' default)."""
    return TIME_INCREMENT


@export("KeQueryPerformanceCounter", dll="hal.dll")
def ke_query_performance_counter(ex: KeServices, call: ExportCall) -> int:
    """LARGE_INTEGER KeQueryPerformanceCounter(PLARGE_INTEGER PerformanceFrequency): the
    clock in counts of PERFORMANCE_FREQUENCY (10 MHz, Windows 10's usual: one count per
    instruction, 100 ns), and the frequency stored at PerformanceFrequency unless NULL.
    (wdm.h declares it NTHALAPI: drivers import it from hal.dll.)"""
    if call.arg(0):
        rtl.write(ex, call.arg(0), struct.pack("<q", PERFORMANCE_FREQUENCY))
    return interrupt_time(ex)
