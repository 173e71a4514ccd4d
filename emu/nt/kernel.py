"""The executive: boots the machine, creates processes, and runs them at ring 3.

Boot (KiSystemStartup, reduced): build the shared kernel half (GDT, TSS,
kernel code, a kernel stack), turn on long-mode paging with CR0.WP, NXE and
SMEP, and remember that clean ring-0 state.

Entering user mode (KiReturnToUser / the tail of KiSystemCall64): start from
the clean ring-0 state, load the process's CR3, put an interrupt frame on the
kernel stack (RIP, CS=0x33, RFLAGS, RSP, SS=0x2B) and execute a real
``iretq``: the CPU itself drops to CPL 3.

Leaving user mode: a ``syscall`` (serviced by ``emu.nt.syscalls`` while the
guest waits), or an exception (``emu.nt.trap``). A ring-3 exception ends
only its process; a ring-0 one is a bug check.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from capstone import x86_const as cx

from emu.hw import mmu
from emu.hw.cpu import Cpu, CpuException, RunResult, StopReason, Vector
from emu.hw.descriptors import GDT_LIMIT, TSS_SIZE, Selector, build_gdt, build_tss
from emu.hw.faultaddr import memory_accesses
from emu.hw.memory import PhysicalMemory
from emu.hw.mmu import CR0, CR4, EFER
from emu.nt import layout, svc_memory, syscalls, trap  # noqa: F401 (svc_* register services)
from emu.nt.bugcheck import BugCheck
from emu.nt.loader import PF_W, PF_X, Image
from emu.nt.mm import virtual
from emu.nt.mm.address_space import AddressSpace, MemoryManager, Protection
from emu.nt.mm.pfn import FrameUse, OutOfFrames
from emu.nt.mm.virtual import FaultResolution
from emu.nt.process import ExceptionInfo, Process, ProcessState, initial_stack

IRETQ = b"\x48\xcf"
INT3 = b"\xcc"
TRAMPOLINE = layout.KERNEL_TEXT                  # iretq: the way into ring 3
KERNEL_RETURN = layout.KERNEL_TEXT + 0x10        # int3: where a kernel routine returns to
KERNEL_STACK_TOP = layout.KERNEL_STACK_BASE + (layout.KERNEL_STACK_PAGES + 1) * layout.PAGE_SIZE
USER_RFLAGS = 0x202                              # IF set, reserved bit 1 set
MIN_STACK_LEFT = 16 * 1024                       # stack left for main() after the arguments

CR0_BOOT = CR0.PE | CR0.MP | CR0.ET | CR0.NE | CR0.WP | CR0.PG
CR4_BOOT = CR4.PAE | CR4.OSFXSR | CR4.OSXMMEXCPT | CR4.SMEP
EFER_BOOT = EFER.SCE | EFER.LME | EFER.LMA | EFER.NXE


class MachineStop(Exception):
    """The whole machine stops before its processes end: ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


INSTRUCTION_LIMIT = "instruction limit"
INTERRUPTED = "interrupted"


@dataclass(frozen=True)
class KernelCallResult:
    """What a kernel routine run by ``call_kernel`` returned."""

    rax: int


class Executive:
    """The NT-like kernel: memory manager, processes, system services, trap handling."""

    def __init__(self, mem: PhysicalMemory,
                 console: Callable[[Process, bytes], None] | None = None) -> None:
        self.mem = mem
        self.cpu = Cpu(mem)
        self.cpu.syscall_handler = self._on_syscall
        self.mm = MemoryManager(mem, self._page_changed, self.cpu.flush_translated_code)
        self.processes: list[Process] = []
        self.current: Process | None = None
        self.bugcheck: BugCheck | None = None
        self._console = console
        self._next_pid = 4
        self.interrupted = False
        self._boot()

    # -- boot ------------------------------------------------------------------------------

    def _boot(self) -> None:
        """Build the kernel half and enter long mode with paging at ring 0."""
        system = self.mm.system
        tables = build_gdt(layout.KERNEL_TSS).ljust(0x800, b"\0") + \
            build_tss(KERNEL_STACK_TOP)
        self.mm.map_new(system, layout.KERNEL_GDT, Protection.PAGE_READWRITE,
                        use=FrameUse.KERNEL, data=tables)
        text = IRETQ.ljust(0x10, INT3) + INT3
        self.mm.map_new(system, layout.KERNEL_TEXT, Protection.PAGE_EXECUTE_READ,
                        use=FrameUse.KERNEL, data=text)
        for i in range(layout.KERNEL_STACK_PAGES):     # the page at KERNEL_STACK_BASE is a guard
            self.mm.map_new(system, layout.KERNEL_STACK_BASE + (i + 1) * layout.PAGE_SIZE,
                            Protection.PAGE_READWRITE, use=FrameUse.KERNEL)
        cpu = self.cpu
        cpu.set_control(efer=int(EFER_BOOT), cr4=int(CR4_BOOT), cr0=int(CR0_BOOT),
                        cr3=system.cr3)
        cpu.load_gdt(layout.KERNEL_GDT, GDT_LIMIT)
        cpu.load_tr(Selector.TSS, layout.KERNEL_TSS, TSS_SIZE - 1)
        cpu.set_reg("rsp", KERNEL_STACK_TOP)
        cpu.set_reg("rflags", 0x2)
        cpu.save_clean_context()

    def _page_changed(self, cr3: int, va: int) -> None:
        if cr3 == self.cpu.cr3 or va >= layout.KERNEL_SPACE_START:
            self.cpu.invalidate_page(va)

    # -- processes -------------------------------------------------------------------------

    def create_process(self, image: Image, args: list[str],
                       parent: Process | None = None) -> Process:
        """PspCreateProcess, reduced: a new address space with the image and a stack mapped."""
        pid = self._next_pid
        space = self.mm.create_address_space(owner=pid)
        proc = Process(pid, image.name, image, args, space,
                       parent_pid=parent.pid if parent else None)
        try:
            self._map_image(space, image)
            self._map_stack(proc)
            virtual.init_process_memory(self, proc)
        except OutOfFrames:
            space.release_user_half()
            raise
        self._next_pid += 4
        self.processes.append(proc)
        return proc

    def _map_image(self, space: AddressSpace, image: Image) -> None:
        for va, contents in sorted(image.pages.items()):
            flags = image.page_flags[va]
            protect = {
                (False, False): Protection.PAGE_READONLY,
                (True, False): Protection.PAGE_READWRITE,
                (False, True): Protection.PAGE_EXECUTE_READ,
                (True, True): Protection.PAGE_EXECUTE_READWRITE,
            }[(bool(flags & PF_W), bool(flags & PF_X))]
            self.mm.map_new(space, va, protect, data=bytes(contents))

    def _map_stack(self, proc: Process) -> None:
        """Commit the user stack and write argc/argv/envp/auxv (System V ABI §3.4.1)."""
        top, size = layout.USER_STACK_TOP, layout.USER_STACK_SIZE
        proc.stack_low, proc.stack_high = top - size, top
        frames = {}
        for va in range(top - size, top, layout.PAGE_SIZE):
            frames[va] = self.mm.map_new(proc.space, va, Protection.PAGE_READWRITE)
        argv = [proc.image.path.encode(), *(a.encode() for a in proc.args)]
        rsp, image = initial_stack(top, argv, proc.image.entry)
        if rsp < top - size + MIN_STACK_LEFT:
            raise ValueError(f"arguments too long: {len(image)} bytes, the initial stack "
                             f"takes at most {size - MIN_STACK_LEFT}")
        for va in range(rsp & ~0xFFF, top, layout.PAGE_SIZE):
            start = max(va, rsp)
            self.mem.write(frames[va] * layout.PAGE_SIZE + (start & 0xFFF),
                           image[start - rsp:va + layout.PAGE_SIZE - rsp])
        proc.entry_rsp = rsp

    def terminate(self, proc: Process, status: int,
                  exception: ExceptionInfo | None = None) -> None:
        """PspTerminateProcess: record the status, free the user half, stop running it."""
        proc.exit_status = status
        proc.exception = exception
        proc.state = ProcessState.TERMINATED
        if self.current is proc:
            self.cpu.stop()       # the run loop frees the tables once the CPU has left them
        else:
            proc.space.release_user_half()

    # -- running ---------------------------------------------------------------------------

    def run_process(self, proc: Process) -> None:
        """Run ``proc`` at ring 3 until it exits or dies; raises BugCheck or MachineStop."""
        self.current = proc
        proc.state = ProcessState.RUNNING
        try:
            result = self._enter_user(proc.image.entry, proc.entry_rsp)
            while True:
                if proc.state is ProcessState.TERMINATED:
                    # Leave the dying address space before its tables are freed.
                    self.cpu.set_control(cr3=self.mm.system.cr3)
                    proc.space.release_user_half()
                    return
                if result.reason is StopReason.BUDGET:
                    raise MachineStop(INSTRUCTION_LIMIT)
                if self.interrupted:
                    raise MachineStop(INTERRUPTED)
                if result.reason is StopReason.EXCEPTION:
                    self._handle_exception(proc, result.exception)
                    if proc.state is ProcessState.TERMINATED:
                        continue
                result = self.cpu.run()      # resolved (e.g. a demand-zero fault): retry
        finally:
            self.current = None

    def _enter_user(self, rip: int, rsp: int) -> RunResult:
        """KiReturnToUser: iretq from the clean ring-0 state into ``rip`` at CPL 3."""
        cpu = self.cpu
        cpu.restore_clean_context()
        cpu.set_control(cr3=self.current.space.cr3)
        frame = struct.pack("<5Q", rip, Selector.USER_CODE, USER_RFLAGS, rsp, Selector.USER_DATA)
        frame_va = KERNEL_STACK_TOP - len(frame)
        pa = self.mm.system.lookup(frame_va).pfn * layout.PAGE_SIZE + (frame_va & 0xFFF)
        self.mem.write(pa, frame)
        for name in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "r8", "r9", "r10",
                     "r11", "r12", "r13", "r14", "r15"):
            cpu.set_reg(name, 0)
        cpu.set_reg("rsp", frame_va)
        return cpu.run(TRAMPOLINE)

    def _handle_exception(self, proc: Process, exc: CpuException) -> None:
        insn = self.describe_instruction(exc.rip)
        if exc.cpl != 3:
            raise self._bugcheck(exc, insn)
        if exc.vector == Vector.PF and \
                virtual.access_fault(self, proc, exc) is FaultResolution.RESOLVED:
            return                       # MmAccessFault made the page valid: the access retries
        guard = range(proc.stack_low - layout.PAGE_SIZE, proc.stack_low)
        info = trap.user_exception(exc, insn, stack_guard=guard,
                                   divisor_is_zero=self._divisor_is_zero(exc))
        self.terminate(proc, info.code, info)

    def _divisor_is_zero(self, exc: CpuException) -> bool:
        """#DE is both divide-by-zero and quotient overflow; Windows tells them apart
        (STATUS_INTEGER_DIVIDE_BY_ZERO vs STATUS_INTEGER_OVERFLOW) by the divisor."""
        insn = self.cpu.decode_at(exc.rip)
        if exc.vector != Vector.DE or insn is None or not insn.operands:
            return True
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

    def _bugcheck(self, exc: CpuException, insn: str) -> BugCheck:
        leaf = 0
        if exc.walk:
            leaf = exc.walk[-1].value
        bc = trap.kernel_bugcheck(exc, insn, leaf,
                                  divisor_is_zero=self._divisor_is_zero(exc))
        bc.registers = {name: self.cpu.reg(name) for name in
                        ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9",
                         "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags", "cr2",
                         "cr3")}
        self.bugcheck = bc
        return bc

    def describe_instruction(self, rip: int) -> str:
        """``mnemonic operands`` of the instruction at ``rip`` in the current address space."""
        insn = self.cpu.decode_at(rip)
        if insn is None:
            return "(bad)"
        return f"{insn.mnemonic} {insn.op_str}".strip()

    def call_kernel(self, routine: int, *args: int, space: AddressSpace | None = None
                    ) -> KernelCallResult:
        """Run a ring-0 routine (Microsoft x64 calling convention) in ``space``; it returns to
        an int3 trap in kernel text. A fault inside it is a bug check."""
        cpu = self.cpu
        cpu.restore_clean_context()
        cpu.set_control(cr3=(space or self.mm.system).cr3)
        for name, value in zip(("rcx", "rdx", "r8", "r9"), args, strict=False):
            cpu.set_reg(name, value)
        rsp = KERNEL_STACK_TOP - 0x100
        ret = struct.pack("<Q", KERNEL_RETURN)
        pa = self.mm.system.lookup(rsp).pfn * layout.PAGE_SIZE + (rsp & 0xFFF)
        self.mem.write(pa, ret)
        cpu.set_reg("rsp", rsp)
        result = cpu.run(routine)
        exc = result.exception
        if result.reason is StopReason.BUDGET:
            raise MachineStop(INSTRUCTION_LIMIT)
        if self.interrupted:
            raise MachineStop(INTERRUPTED)
        if exc is not None and exc.vector == Vector.BP and exc.rip == KERNEL_RETURN:
            return KernelCallResult(cpu.reg("rax"))
        if exc is None:
            raise RuntimeError("kernel routine stopped without returning")
        raise self._bugcheck(exc, self.describe_instruction(exc.rip))

    def interrupt(self) -> None:
        """Stop the machine at the next instruction boundary (Ctrl-C); safe from any thread."""
        self.interrupted = True
        self.cpu.uc.emu_stop()

    # -- system services -------------------------------------------------------------------

    def _on_syscall(self, cpu: Cpu) -> None:
        """The syscall hook: KiSystemCall64 with the guest parked at the next instruction."""
        proc = self.current
        if proc is None or cpu.cpl != 3:
            return
        number = cpu.reg("rax")
        args = tuple(cpu.reg(r) for r in ("rdi", "rsi", "rdx", "r10", "r8", "r9"))
        result = syscalls.dispatch(self, proc, number, args)
        if proc.state is not ProcessState.TERMINATED:
            cpu.set_reg("rax", result & 0xFFFF_FFFF_FFFF_FFFF)

    def console_write(self, proc: Process, data: bytes) -> None:
        """The console device: bytes a process wrote, in order."""
        proc.output += data
        if self._console is not None:
            self._console(proc, data)

    def close(self) -> None:
        self.cpu.close()

