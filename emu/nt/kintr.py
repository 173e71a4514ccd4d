"""Ke's interrupts and DPCs, masked by the IRQL (CR8).

Microsoft, "Managing Hardware Priorities": code at a given IRQL is interrupted only by a
source whose IRQL is higher. A device's interrupt is delivered when its DIRQL (the ``Irql``
given to IoConnectInterrupt) is above the current IRQL; until then its line stays up
(pending). Its ISR runs at the interrupt object's SynchronizeIrql; when it returns, the
IRQL goes back to what it was.

"Introduction to DPC Objects": KeInsertQueueDpc queues a KDPC (the object is the
driver's, in guest memory: DeferredRoutine, DeferredContext, SystemArgument1/2 are read
from it when it runs, so wdm.h's inline IoInitializeDpcRequest/IoRequestDpc work as they
are); the queue is drained at DISPATCH_LEVEL as soon as the IRQL is below DISPATCH_LEVEL:
right away when queued below it, after the ISR that queued it, or when a driver lowers the
IRQL (``mov cr8``, KeLowerIrql, KeReleaseSpinLock) below DISPATCH_LEVEL. A KDPC is in the
queue while its DpcData is not NULL (Windows points it at the processor's KDPC_DATA); it is
cleared just before the routine runs, so the routine may queue it again.

Each routine must return at the IRQL it was called at; the kernel checks it when the
routine returns and stops otherwise (``returned_at_bad_irql``): an ISR with bug check
0xC8 IRQL_UNEXPECTED_VALUE (Microsoft's "Bug Check 0xC8", UniqueValue 3: the interrupt's
ServiceRoutine and KINTERRUPT), a DPC with 0x9 IRQL_NOT_GREATER_OR_EQUAL (the routine, the
IRQL, DISPATCH_LEVEL, 0), as KiRetireDpcList checks it (0xC8's table has no DPC case).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from emu.nt import layout, wdm
from emu.nt.bugcheck import BugCheckCode
from emu.nt.events import Event

if TYPE_CHECKING:
    from emu.nt.interfaces import InterruptController
    from emu.nt.process import Thread

PASSIVE_LEVEL, APC_LEVEL, DISPATCH_LEVEL = 0, 1, 2
HIGH_LEVEL = 15                    # x64: CR8 holds 0-15 (wdm.h HIGH_LEVEL for AMD64)
LOW_IMPORTANCE, MEDIUM_IMPORTANCE, HIGH_IMPORTANCE = 0, 1, 2     # KDPC_IMPORTANCE
# Where a queued KDPC's DpcData points: the one processor's KDPC_DATA (a spare part of the
# GDT page; nothing reads it but the "is it queued" test).
KDPC_DATA = layout.KERNEL_GDT + 0xF00
ISR_UNIQUE_VALUE = 3               # bug check 0xC8's UniqueValue for an ISR
NESTED_FRAME = 0x100               # a routine run on the current stack starts this far below


KINTERRUPT_TAG = 0x746E49         # 'Int': IoConnectInterrupt's pool tag


@dataclass(frozen=True)
class Interrupt:
    """A connected interrupt (KINTERRUPT): its vector, ISR, ServiceContext, the object's
    address, its DIRQL (Irql) and the IRQL its ISR runs at (SynchronizeIrql)."""

    vector: int
    routine: int
    context: int
    address: int
    irql: int
    synchronize_irql: int


def initialize_dpc(ex: InterruptController, dpc: int, routine: int, context: int) -> None:
    """KeInitializeDpc: Type DpcObject, Importance medium, Number 0, the routine and its
    context, DpcData NULL (not queued)."""
    raw = bytearray(ex.kernel_read(dpc, wdm.KDPC.size))
    struct.pack_into("<BBH", raw, 0, wdm.DPC_OBJECT, MEDIUM_IMPORTANCE, 0)
    struct.pack_into("<QQ", raw, wdm.KDPC["DeferredRoutine"], routine, context)
    struct.pack_into("<Q", raw, wdm.KDPC["DpcData"], 0)
    ex.kernel_write(dpc, bytes(raw))


def is_queued(ex: InterruptController, dpc: int) -> bool:
    """Whether the KDPC is in the DPC queue (its DpcData is set)."""
    return ex.kernel_read_u64(dpc + wdm.KDPC["DpcData"]) != 0


def insert_queue_dpc(ex: InterruptController, dpc: int, argument1: int, argument2: int) -> bool:
    """KeInsertQueueDpc: FALSE if the KDPC is queued already; else SystemArgument1/2 are
    stored, it joins the queue (a high-importance one at the head) and TRUE. Below
    DISPATCH_LEVEL it runs at once (the DISPATCH_LEVEL software interrupt is not masked)."""
    if is_queued(ex, dpc):
        return False
    ex.kernel_write(dpc + wdm.KDPC["SystemArgument1"], struct.pack("<QQ", argument1, argument2))
    ex.kernel_write(dpc + wdm.KDPC["DpcData"], struct.pack("<Q", KDPC_DATA))
    importance = ex.kernel_read(dpc + wdm.KDPC["Importance"], 1)[0]
    if importance == HIGH_IMPORTANCE:
        ex.dpc_queue.insert(0, dpc)
    else:
        ex.dpc_queue.append(dpc)
    if ex.irql < DISPATCH_LEVEL:
        drain_dpcs(ex, here=True)
    return True


def remove_queue_dpc(ex: InterruptController, dpc: int) -> bool:
    """KeRemoveQueueDpc: TRUE if the KDPC was queued (it is not any more), else FALSE."""
    if dpc not in ex.dpc_queue:
        return False
    ex.dpc_queue.remove(dpc)
    ex.kernel_write(dpc + wdm.KDPC["DpcData"], struct.pack("<Q", 0))
    return True


def _current_stack(ex: InterruptController) -> int:
    """A stack top below the running routine's frames (for a routine run in the middle of
    it: an interrupt or a DPC taken while kernel code runs)."""
    return (ex.cpu.reg("rsp") - NESTED_FRAME) & ~0xF


def drain_dpcs(ex: InterruptController, thread: Thread | None = None, *,
               here: bool = False) -> None:
    """Run every queued DPC at DISPATCH_LEVEL (the IRQL is below it), oldest first, in the
    current address space: on the thread's kernel stack, or ``here`` on the current one."""
    while ex.dpc_queue and ex.irql < DISPATCH_LEVEL:
        entry = ex.dpc_queue.pop(0)
        ex.kernel_write(entry + wdm.KDPC["DpcData"], struct.pack("<Q", 0))
        routine, context, arg1, arg2 = struct.unpack(
            "<4Q", ex.kernel_read(entry + wdm.KDPC["DeferredRoutine"], 32))
        args = (entry, context, arg1, arg2)
        previous, ex.irql = ex.irql, DISPATCH_LEVEL      # observers see the DPC's IRQL
        ex.events.emit(Event.DPC, routine=routine, thread=thread)
        result = ex.run_at_irql(DISPATCH_LEVEL, routine, args, thread,
                                _current_stack(ex) if here else None)
        if result.irql != DISPATCH_LEVEL:
            raise ex.returned_at_bad_irql(
                routine, result.irql, BugCheckCode.IRQL_NOT_GREATER_OR_EQUAL,
                (routine, result.irql, DISPATCH_LEVEL, 0), "DPC routine", DISPATCH_LEVEL)
        ex.irql = previous


def deliverable(ex: InterruptController) -> list[Interrupt]:
    """The pending interrupts the current IRQL lets through, highest DIRQL first."""
    ready = [ex.interrupts[v] for v in ex.pending_interrupts if v in ex.interrupts and
             ex.interrupts[v].irql > ex.irql]
    return sorted(ready, key=lambda i: -i.irql)


def dispatch(ex: InterruptController, thread: Thread | None, *, here: bool = False) -> None:
    """Deliver what the IRQL allows now: each pending interrupt above it (its ISR at its
    SynchronizeIrql), then, once below DISPATCH_LEVEL, the DPCs."""
    while True:
        ready = deliverable(ex)
        if not ready:
            break
        interrupt = ready[0]
        ex.pending_interrupts.discard(interrupt.vector)
        previous, ex.irql = ex.irql, interrupt.synchronize_irql
        ex.events.emit(Event.INTERRUPT, vector=interrupt.vector, isr=interrupt.routine,
                       thread=thread)
        result = ex.run_at_irql(interrupt.synchronize_irql, interrupt.routine,
                                (interrupt.address, interrupt.context), thread,
                                _current_stack(ex) if here else None)
        expected = interrupt.synchronize_irql
        if result.irql != expected:
            # Bug check 0xC8, UniqueValue 3: (current << 16) | (expected << 8) | 3, the
            # interrupt's ServiceRoutine, its KINTERRUPT, 0.
            raise ex.returned_at_bad_irql(
                interrupt.routine, result.irql, BugCheckCode.IRQL_UNEXPECTED_VALUE,
                (result.irql << 16 | expected << 8 | ISR_UNIQUE_VALUE, interrupt.routine,
                 interrupt.address, 0), "ISR", expected)
        ex.irql = previous
    if ex.irql < DISPATCH_LEVEL:
        drain_dpcs(ex, thread, here=here)


def work_after_write(ex: InterruptController, old: int, new: int) -> bool:
    """After the IRQL went from ``old`` to ``new``: whether something is deliverable now."""
    return new < old and (bool(deliverable(ex)) or
                          (new < DISPATCH_LEVEL and bool(ex.dpc_queue)))
