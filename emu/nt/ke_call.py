"""Kernel calls: running ring-0 code (drivers' routines, ISRs, DPCs) from the executive,
serving the kernel exports it calls, dispatching its exceptions, and recording bug checks.

``call_kernel`` runs a routine by the Microsoft x64 calling convention on a kernel stack;
it returns to an ``int3`` in kernel text (KERNEL_RETURN). On the way, a fetch from an
export's trap address runs that export (emu.nt.exports) and returns to its caller; a
not-present fault below DISPATCH_LEVEL is paged in (emu.nt.mm_kernel); a fault a PE
driver guards with ``__try/__except`` goes to its handler (RtlDispatchException,
emu.nt.seh); anything else is a bug check, whose record (KeBugCheckEx's: registers, the
instruction, the driver to blame, the frames up the stack) is filled here.

A part of emu.nt.kernel.Executive (a mixin): it reaches the other parts through ``self``
(emu.nt.interfaces.Kernel says what they offer).
"""

from __future__ import annotations

import contextlib
import struct
from typing import TYPE_CHECKING

from emu.hw.cpu import StopReason
from emu.hw.exceptions import CpuException, Vector
from emu.hw.mmu import PFErr
from emu.nt import kpcr, kuser, layout, trap
from emu.nt.bugcheck import BugCheck
from emu.nt.events import Event
from emu.nt.kedefs import INSTRUCTION_LIMIT, INTERRUPTED, KernelCallResult, MachineStop
from emu.nt.layout import KERNEL_RETURN, KERNEL_STACK_TOP
from emu.nt.loaded_modules import driver_at, symbolize

if TYPE_CHECKING:
    from emu.nt import exports, seh
    from emu.nt.interfaces import Kernel as _Executive  # the other parts, via self
    from emu.nt.mm.address_space import AddressSpace
    from emu.nt.process import Thread
else:
    _Executive = object


HLT = b"\xf4"


class KeKernelCalls(_Executive):
    """The kernel-call part of the executive: call_kernel and what happens inside it."""

    def run_at_irql(self, irql: int, routine: int, args: tuple[int, ...],
                    thread: Thread | None, stack_top: int | None = None) -> KernelCallResult:
        """Run an ISR or a DPC at ``irql`` in ``thread``'s address space (None: the system's),
        on its kernel stack (or at ``stack_top``: below a routine it interrupts), then put
        the IRQL back; returns what it returned and the IRQL it returned at (emu.nt.kintr
        checks it). A bug check raised inside leaves the IRQL as it was: the stopped
        machine (its dump, the debugger) shows the level the fault happened at."""
        old = self.irql
        self.irql = irql
        if stack_top is None:
            stack_top = thread.kernel_stack_top if thread else KERNEL_STACK_TOP
        self.interrupt_routines += 1
        try:
            result = self.call_kernel(routine, *args,
                                      space=thread.process.space if thread else self.mm.system,
                                      stack_top=stack_top)
        finally:
            self.interrupt_routines -= 1
        self.irql = old
        self.events.emit(Event.KERNEL_CALL_DONE, routine=routine, thread=thread)
        return result

    def returned_at_bad_irql(self, routine: int, irql: int, code: int,
                             params: tuple[int, int, int, int], what: str,
                             expected: int) -> BugCheck:
        """The bug check for a driver's ``routine`` (DriverEntry, DriverUnload, an ISR, a DPC)
        that returned at ``irql``, not the ``expected`` IRQL it was called at: the machine
        stops at the IRQL the routine left, and the driver whose routine it is is blamed."""
        self.irql = irql
        bc = BugCheck(code, params, None, f"the {what} returned at IRQL {irql}, not at the "
                      f"IRQL {expected} it was called at")
        culprit = driver_at(self, routine)
        if culprit is not None:
            bc.driver, bc.location = culprit.image.name, symbolize(self, routine)
        return bc

    def _fill_bugcheck(self, bc: BugCheck) -> None:
        """KeBugCheckEx's record: registers, the instruction, the driver it happened in."""
        bc.registers = {name: self.cpu.reg(name) for name in
                        ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9",
                         "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags", "cr2",
                         "cr3")}
        if bc.rip is not None:
            if not bc.instruction:
                bc.instruction = self.describe_instruction(bc.rip)
            frames = self._frames(bc.rip)
            bc.backtrace = [symbolize(self, a) for a in frames]
            # The driver to blame: the one whose code faulted, or, when the fault is the
            # fetch of a bad call target, the caller.
            culprit = next((a for a in frames if driver_at(self, a) is not None), None)
            if culprit is not None:
                bc.driver = driver_at(self, culprit).image.name
                bc.location = symbolize(self, culprit)
        proc = self.current
        bc.process = f'{proc.pid} "{proc.name}"' if proc is not None else ""
        bc.irql = self.irql
        self.bugcheck = bc
        self.events.emit(Event.BUGCHECK, bugcheck=bc)

    def _frames(self, rip: int, limit: int = 8) -> list[int]:
        """Return addresses up the ring-0 stack: through PE drivers (and the kernel exports
        they call) by their .pdata/.xdata, as WinDbg unwinds (emu.nt.unwind); through ELF
        drivers by frame pointers (they keep them)."""
        from emu.nt import exports, seh, unwind  # only for ring-0 code (start-up)

        cpu_rip, in_pe = self.cpu.reg("rip"), False
        if exports.name_at(cpu_rip):                 # in a routine: who called it?
            with contextlib.suppress(BugCheck):
                in_pe = seh.pe_image_at(self, self.kernel_read_u64(self.cpu.reg("rsp"))) \
                    is not None
        else:
            in_pe = seh.pe_image_at(self, cpu_rip) is not None
        if in_pe:
            context = seh.capture_context(self)
            callers = unwind.walk(self.kernel_read, context, self._function_table,
                                  lambda a: exports.name_at(a) is not None, limit)
            if exports.name_at(cpu_rip) and callers and rip != cpu_rip:
                callers = callers[1:]       # ``rip`` is the call site in that caller
            # (``rip`` the export itself: a fault inside it, as in nt!memcpy: callers stay)
            if rip != cpu_rip and not exports.name_at(cpu_rip):
                callers = []
            return [rip, *[a for a in callers if a != KERNEL_RETURN]][:limit]
        frames, rbp = [rip], self.cpu.reg("rbp")
        if driver_at(self, rip) is None:      # a bad call target: [rsp] is the caller
            try:
                caller = self.kernel_read_u64(self.cpu.reg("rsp"))
            except BugCheck:
                caller = 0
            if driver_at(self, caller) is not None:
                frames.append(caller)
        while len(frames) < limit and rbp >= layout.KERNEL_SPACE_START and not rbp & 7:
            try:
                saved, ret = struct.unpack("<QQ", self.kernel_read(rbp, 16))
            except BugCheck:
                break
            if ret < layout.KERNEL_SPACE_START or ret in (KERNEL_RETURN,):
                break
            frames.append(ret)
            if saved <= rbp:
                break
            rbp = saved
        return frames

    def _function_table(self, address: int) -> tuple[int, list] | None:
        """(base, .pdata) of the PE driver image that holds ``address``, or None."""
        from emu.nt import seh  # only when a PE driver's code runs (start-up)

        image = seh.pe_image_at(self, address)
        return None if image is None else (image.base, image.functions)

    def describe_instruction(self, rip: int, cpl: int = 0) -> str:
        """``mnemonic operands`` of the instruction at ``rip`` in the current address space,
        as code at ``cpl`` may read it: a ring-3 fault never shows the kernel's bytes."""
        insn = self.cpu.decode_at(rip, cpl)
        if insn is None:
            if cpl == 3 and self.cpu.decode_at(rip) is not None:
                return "(not readable at ring 3)"
            return "(bad)"
        return f"{insn.mnemonic} {insn.op_str}".strip()

    def call_kernel(self, routine: int, *args: int, space: AddressSpace | None = None,
                    stack_top: int = KERNEL_STACK_TOP) -> KernelCallResult:
        """Run a ring-0 routine (Microsoft x64 calling convention) in ``space`` on the kernel
        stack ending at ``stack_top``; it returns to an int3 trap in kernel text. Kernel
        exports it calls are served on the way; a fault inside it is a bug check."""
        # Kernel code runs only once a driver is loaded: the export table and Ke's interrupt
        # delivery are imported then, not at every start-up (docs/performance.md).
        from emu.nt import exports, kintr

        cpu = self.cpu
        # What the routine returns to: the interrupted or calling thread's state (an ISR's
        # iretq, a dispatch routine's return into the I/O manager). After the return the CPU
        # shows that state again, never the int3 trap the routine returned through.
        caller, caller_cr3 = cpu.uc.context_save(), cpu.cr3
        # The user mode's GS base: GS's own from ring 3, the one SWAPGS put aside at ring 0.
        user_gs = cpu.reg("gs_base") if cpu.cpl == 3 else cpu.kernel_gs_base
        caller_thread = kpcr.current_thread(self)
        cpu.restore_clean_context()
        kpcr.enter(self, user_gs)              # GS: the KPCR, as after the entry's SWAPGS
        self.load_cr3((space or self.mm.system).cr3)
        for name, value in zip(("rcx", "rdx", "r8", "r9"), args, strict=False):
            cpu.set_reg(name, value)
        rsp = stack_top - 0x100
        self.write_user(self.mm.system, rsp, struct.pack("<Q", KERNEL_RETURN))
        cpu.set_reg("rsp", rsp)
        kuser.update_shared_data(self, self.shared_data_frame)   # the times the routine reads
        full_speed = cpu.native.budget is None
        result = self._run_cpu(routine)
        while True:
            exc = result.exception
            if result.reason is StopReason.BUDGET:
                if self.max_insns is not None and self.cpu.instructions >= self.max_insns:
                    raise MachineStop(INSTRUCTION_LIMIT)
                # Kernel code is not preempted here: the quantum ends when it returns. A
                # device may interrupt it, if the IRQL lets it (emu.nt.kintr).
                self.raise_interrupt_lines()
                kintr.dispatch(self, self.current_thread, here=True)
                self.set_budget(self._kernel_budget())
                result = self._run_cpu()
                continue
            if self.interrupted:
                raise MachineStop(INTERRUPTED)
            if exc is None and cpu.stop_requested:
                # A `mov cr8` lowered the IRQL under pending work (Cr8.on_write): deliver it
                # here, between that instruction and the next, as the CPU would. Or an OUT
                # started a device: its time is counted from now on, so that it interrupts
                # this routine when its time comes (if the IRQL lets it).
                if cpu.native.budget is None and self.device_deadline() is not None:
                    self.set_budget(self._kernel_budget())
                kintr.dispatch(self, self.current_thread, here=True)
                result = self._run_cpu()
                continue
            if exc is not None and exc.vector == Vector.BP and exc.rip == KERNEL_RETURN:
                rax, irql = cpu.reg("rax"), self.irql
                self._return_to(caller, caller_cr3)
                kpcr.set_current_thread(self, caller_thread)
                if full_speed and cpu.native.budget is not None:
                    self.set_budget(None)       # counted for a device: back to full speed
                return KernelCallResult(rax, irql)
            if exc is None and cpu.read_code(cpu.rip - 1, 1) == HLT:
                # HLT at CPL 0 with IF = 1 waits for the next interrupt: the clock's tick
                # comes and returns to the instruction after it (SDM Vol. 2B, HLT).
                result = self._run_cpu()
                continue
            if exc is None:
                raise RuntimeError("kernel routine stopped without returning")
            if exc.vector == Vector.PF and exc.access == "fetch" and exc.cpl == 0 and \
                    exports.handler_at(exc.address) is not None:
                if self.debugger is not None:        # a breakpoint on the export stops here
                    self.debugger.export_called(exc.address)
                self._call_export(exports.handler_at(exc.address))
                result = self._run_cpu()
                continue
            self.events.emit(Event.EXCEPTION, exc=exc, thread=self.current_thread)
            if exc.vector == Vector.PF and not exc.error_code & (PFErr.P | PFErr.RSVD) and \
                    self.page_in_for_kernel(exc.address, exc.access or "read"):
                result = self._run_cpu()               # paged in: the access runs again
                continue
            if trap.is_fast_fail(exc):
                raise self._fast_fail(exc)
            if self._dispatch_fault(exc):
                result = self._run_cpu()               # a driver's __except took it
                continue
            raise self.bugcheck_for(exc, self.describe_instruction(exc.rip))

    def _kernel_budget(self) -> int:
        """Instructions kernel code runs before the executive looks again: a quantum, or
        less if a device interrupts sooner or the --max-insns limit comes first."""
        budget = self.scheduler.quantum
        device = self.device_deadline()
        if device is not None:
            budget = min(budget, max(1, device - self.clock))
        if self.max_insns is not None:
            budget = min(budget, self.max_insns - self.cpu.instructions)
        return budget

    def _return_to(self, context, cr3: int) -> None:
        """Put back the CPU state a kernel call interrupted (its address space too, unless
        that space has been torn down meanwhile: then the system's)."""
        self.cpu.uc.context_restore(context)
        if not any(space.cr3 == cr3 for space in self.mm.spaces):
            cr3 = self.mm.system.cr3
        self.load_cr3(cr3)

    def _call_export(self, handler: exports.Handler) -> None:
        """A driver called a kernel export: run its routine, then return to the caller."""
        from emu.nt import exports, seh  # only when a PE driver's code runs (start-up)

        call = exports.ExportCall(self)
        try:
            value = handler(self, call)
        except exports.ExceptionRaised as raised:
            # Dispatched to the calling driver's frames (emu.nt.seh), as from the routine's
            # ExRaiseStatus: the context is the caller's, at the return address.
            context = seh.capture_context(self)
            context["rip"], context["rsp"] = call.return_address, call.rsp + 8
            record = seh.ExceptionRecord(raised.status, call.return_address,
                                         raised.information, raised.flags)
            self._dispatch(record, context, exports.call_site(self, call.return_address),
                           f"exception {seh.status_name(raised.status)} raised and not "
                           "handled")
            return
        except BugCheck as bc:
            if bc is not self.bugcheck:      # not filled (and announced) already, as by
                self._fill_bugcheck(bc)      # a fault in an Rtl copy: ex._bugcheck
            raise
        if value is not None:
            self.cpu.set_reg("rax", value & 0xFFFF_FFFF_FFFF_FFFF)
        kuser.update_shared_data(self, self.shared_data_frame)   # a wait may have moved the clock
        self.cpu.set_reg("rsp", call.rsp + 8)      # as `ret` does
        self.cpu.set_reg("rip", call.return_address)

    def _dispatch(self, record: seh.ExceptionRecord, context: dict[str, int], rip: int,
                  detail: str, instruction: str = "") -> None:
        """RtlDispatchException at ring 0: the CPU continues where a handler of the driver
        says, or the bug check for an exception nothing handled is raised."""
        from emu.nt import seh  # only when a PE driver's code runs (start-up)

        outcome = seh.dispatch(self, record, context)
        if isinstance(outcome, dict):
            seh.load_context(self, outcome)
            return
        bc = seh.unhandled(self, outcome, detail)
        bc.rip, bc.instruction = rip, instruction
        self._fill_bugcheck(bc)
        raise bc

    def _dispatch_fault(self, exc: CpuException) -> bool:
        """A ring-0 fault that Windows dispatches as an exception (emu.nt.seh.fault_record
        says which): to the PE driver's handlers; False when it stays a bug check."""
        from emu.nt import seh  # only when a PE driver's code runs (start-up)

        if exc.cpl != 0 or seh.pe_image_at(self, exc.rip) is None:
            return False
        insn = self.describe_instruction(exc.rip)
        record = seh.fault_record(exc, insn, self.irql, self._divisor_is_zero(exc))
        if record is None:
            return False
        context = seh.capture_context(self)
        context["rip"] = exc.rip               # KiBreakpointTrap backs RIP up to the int3 too
        self._dispatch(record, context, exc.rip,
                       f"{seh.status_name(record.code)} not handled: {record.detail}", insn)
        return True

    def _fast_fail(self, exc: CpuException) -> BugCheck:
        """``int 0x29`` at ring 0: bug check 0x139 (emu.nt.seh.fast_fail)."""
        from emu.nt import seh  # only when a PE driver's code runs (start-up)

        bc = seh.fast_fail(self, exc, self.describe_instruction(exc.rip))
        self._fill_bugcheck(bc)
        return bc
