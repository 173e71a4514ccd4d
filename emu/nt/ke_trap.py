"""Ke's trap entry: what the executive does when ring-3 code leaves user mode.

An exception (KiPageFault, KiGeneralProtectionFault, ...): a ring-0 one is a bug check; a
ring-3 page fault first goes to MmAccessFault (emu.nt.mm.virtual), which may resolve it;
otherwise the exception goes to the process's own dispatcher (KiUserExceptionDispatcher,
emu.nt.dispatch), or the process ends. A system call (``syscall``: KiSystemCall64; ``int
0x2e`` from a 32-bit process: KiSystemService) is served by emu.nt.syscalls while the
guest waits at the next instruction.

A part of emu.nt.kernel.Executive (a mixin): it reaches the other parts through ``self``
(emu.nt.interfaces.Kernel says what they offer).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from emu.hw import mmu
from emu.hw.cpu import Cpu
from emu.hw.exceptions import CpuException, Vector
from emu.hw.faultaddr import memory_accesses
from emu.nt import dispatch, layout, syscalls, trap
from emu.nt.bugcheck import BugCheck, BugCheckCode
from emu.nt.events import Event
from emu.nt.kedefs import DISPATCH_LEVEL
from emu.nt.loaded_modules import driver_at
from emu.nt.mm import softpte, virtual
from emu.nt.mm.virtual import FaultResolution
from emu.nt.process import ThreadState
from emu.nt.status import NTSTATUS

if TYPE_CHECKING:
    from emu.nt.interfaces import Kernel as _Executive  # the other parts, via self
    from emu.nt.process import Thread
else:
    _Executive = object


# What a 32-bit system call reads, in one batch (docs/abi.md), as KiSystemService takes them
# (a 64-bit one's come with the SYSCALL: emu.hw.cpu reads them with RIP and RFLAGS).
_INT2E_REGISTERS = ("eax", "ebx", "ecx", "edx", "esi", "edi", "ebp")


class KeTrapEntry(_Executive):
    """The trap part of the executive: exceptions and system service entry."""

    def _handle_exception(self, thread: Thread, exc: CpuException) -> None:
        proc = thread.process
        self.events.emit(Event.EXCEPTION, exc=exc, thread=thread)
        # The instruction as it reads now: before MmAccessFault changes a page (a guard page
        # it executes from), unless only a data page can change (a not-present data access).
        insn = None if exc.vector == Vector.PF and exc.access != "fetch" and exc.cpl == 3 \
            else self.describe_instruction(exc.rip, exc.cpl)
        if exc.cpl != 3:
            raise self.bugcheck_for(self.cpu.settle(exc), insn)
        resolution = virtual.access_fault(self, proc, exc) if exc.vector == Vector.PF else None
        if resolution is not None:
            self.events.emit(Event.PAGE_FAULT, exc=exc, thread=thread, resolution=resolution)
        if resolution is FaultResolution.RESOLVED:
            # MmAccessFault made the page valid: the access retries. Nothing reports this
            # fault, so its instruction is never disassembled (the exact CR2 is worked out
            # only if an observer reads it: _run_cpu settles it then).
            return
        self.cpu.settle(exc)             # reported: the exact address, before anything moves
        if insn is None:
            insn = self.describe_instruction(exc.rip, exc.cpl)
        resume = trap.debug_service_done(exc)
        if resume is not None:          # KdpStub completed the debug service: go on
            regs = self.capture_user_context()
            regs["rip"] = resume
            self.load_user_context(thread, regs)
            return
        guard = range(thread.stack_low - layout.PAGE_SIZE, thread.stack_low)
        info = trap.user_exception(exc, insn, stack_guard=guard,
                                   divisor_is_zero=self._divisor_is_zero(exc))
        if resolution is FaultResolution.GUARD_PAGE:       # once: the guard is gone now
            info = dataclasses.replace(info, code=NTSTATUS.STATUS_GUARD_PAGE_VIOLATION)
        elif resolution is FaultResolution.STACK_OVERFLOW:
            info = dataclasses.replace(info, code=NTSTATUS.STATUS_STACK_OVERFLOW)
        elif resolution is FaultResolution.IN_PAGE_ERROR:
            # EXCEPTION_IN_PAGE_ERROR: the access, the address, and the I/O status behind it.
            info = dataclasses.replace(
                info, code=NTSTATUS.STATUS_IN_PAGE_ERROR,
                params=(*info.params[:2], proc.in_page_error),
                detail=f"the page could not be brought into RAM: the pagefile failed "
                       f"(status {proc.in_page_error:#010x})")
        # A __fastfail is never dispatched: the process ends at once (Microsoft's __fastfail).
        if not trap.is_fast_fail(exc) and \
                dispatch.deliver(self, thread, info, trap.context_rip(exc, info)):
            return                       # the process's own dispatcher gets the exception
        self.terminate(proc, info.code, info)    # no handler in the process: it ends

    def _divisor_is_zero(self, exc: CpuException) -> bool:
        """#DE is both divide-by-zero and quotient overflow; Windows tells them apart
        (STATUS_INTEGER_DIVIDE_BY_ZERO vs STATUS_INTEGER_OVERFLOW) by the divisor."""
        insn = self.cpu.decode_at(exc.rip)
        if exc.vector != Vector.DE or insn is None or not insn.operands:
            return True
        from capstone import x86_const as cx  # loaded by decode_at: imported late for start-up

        op = insn.operands[0]
        if op.type == cx.X86_OP_REG:
            value = self.cpu.reg_named(insn.reg_name(op.reg))
        else:
            (access,) = memory_accesses(insn, self.cpu.reg_named)[:1] or [None]
            if access is None:
                return True
            try:
                pa = self.cpu.walk(access.address, "read").pa
            except (mmu.PageFault, mmu.GeneralProtection):
                return True
            value = int.from_bytes(self.mem.read(pa, op.size), "little")
        return value & ((1 << (8 * op.size)) - 1) == 0

    def bugcheck_for(self, exc: CpuException, insn: str) -> BugCheck:
        """The bug check for a ring-0 exception nothing handles (KeBugCheckEx's record filled)."""
        leaf = 0
        if exc.walk:
            leaf = exc.walk[-1].value
        if exc.vector == Vector.PF and self.irql >= DISPATCH_LEVEL:
            # No page fault may be taken at DISPATCH_LEVEL or above, whatever the address:
            # DRIVER_IRQL_NOT_LESS_OR_EQUAL (address, IRQL, 0 read / 1 write / 8 execute, RIP).
            kind = {"read": 0, "write": 1, "fetch": 8}[exc.access or "read"]
            code = BugCheckCode.DRIVER_IRQL_NOT_LESS_OR_EQUAL \
                if driver_at(self, exc.rip) is not None \
                else BugCheckCode.IRQL_NOT_LESS_OR_EQUAL        # not a driver's code: 0x0A
            where = ""
            if exc.walk and exc.walk[-1].level == 1:      # what the not-present PTE records
                where = f"; the PTE says: {softpte.decode(exc.walk[-1].value).describe()}"
            bc = BugCheck(code,
                          (exc.address or 0, self.irql, kind, exc.rip), exc.rip,
                          f"page fault at IRQL {self.irql}: {exc.reason}{where}",
                          instruction=insn)
            self._fill_bugcheck(bc)
            return bc
        bc = trap.kernel_bugcheck(exc, insn, leaf,
                                  divisor_is_zero=self._divisor_is_zero(exc),
                                  in_system_service=self.in_system_service)
        self._fill_bugcheck(bc)
        return bc

    def _on_syscall(self, cpu: Cpu, cs: int, number: int, args: tuple[int, ...]) -> None:
        """The syscall hook: KiSystemCall64 with the guest parked at the next instruction
        (``cs``, the service ``number`` and its ``args`` read by the CPU in one call)."""
        thread = self.current_thread
        if thread is None or cs & 3 != 3:
            return
        self._system_service(thread, number, args, at_syscall=True)

    def _on_int2e(self, cpu: Cpu) -> bool:
        """``int 0x2e`` from a 32-bit process: KiSystemService, arguments in ebx, ecx, edx,
        esi, edi, ebp (docs/abi.md). From a 64-bit process it is not a gate: #GP."""
        thread = self.current_thread
        if thread is None or cpu.cpl != 3 or thread.process.bits != 32:
            return False
        number, *args = cpu.regs(_INT2E_REGISTERS)
        self._system_service(thread, number, tuple(args), at_syscall=False)
        return True

    def _system_service(self, thread: Thread, number: int, args: tuple[int, ...], *,
                        at_syscall: bool) -> None:
        """KiSystemService: the service ``number`` for ``thread``; its result in RAX, the
        run stopped if the thread no longer runs (``at_syscall``: entered by SYSCALL, whose
        hook may hand the CPU to the next thread without the stop; an ``int 0x2e``'s
        interrupt hook never does)."""
        cpu = self.cpu
        observed = bool(self.events.observers)      # no event built when nobody listens
        if observed:
            self.events.emit(Event.SYSCALL, thread=thread, number=number, args=args)
        result = syscalls.dispatch(self, thread.process, number, args)
        if thread.state in (ThreadState.RUNNING, ThreadState.READY) and result is not None:
            mask = 0xFFFF_FFFF if thread.process.bits == 32 else 0xFFFF_FFFF_FFFF_FFFF
            cpu.set_reg("rax", result & mask)
        else:
            result = None
        if thread.kernel_work is not None:      # the service goes on in a driver: report its
            self._report_when_done(thread, number)     # status when that part returns
        elif observed or self.events.observers:
            self.events.emit(Event.SYSCALL_RETURN, thread=thread, number=number, result=result)
        if thread.state is not ThreadState.RUNNING:
            # Blocked, yielded or ended: the next thread gets the CPU here and now if it
            # can, else the run stops and the dispatcher decides.
            if not (at_syscall and self._switch_at_syscall(thread)):
                cpu.stop()
        elif self._full_speed and self.scheduler.ready:
            # Someone became ready (a new thread, a set event) while this thread runs with
            # nothing counting: stop so that preemption starts.
            self._reschedule = True
            cpu.stop()

    def _report_when_done(self, thread: Thread, number: int) -> None:
        work = thread.kernel_work

        def then_report() -> int | None:
            status = work()
            if status is not None:     # what the thread resumes with, before anyone looks
                self.cpu.set_reg("rax", status & 0xFFFF_FFFF_FFFF_FFFF)
            self.events.emit(Event.SYSCALL_RETURN, thread=thread, number=number, result=status)
            return status
        thread.kernel_work = then_report
