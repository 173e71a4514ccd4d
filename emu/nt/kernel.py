"""The executive: boots the machine, creates processes, and runs them at ring 3.

Boot (KiSystemStartup, reduced): build the shared kernel half (GDT, TSS,
kernel code, a kernel stack), turn on long-mode paging with CR0.WP, NXE and
SMEP, and remember that clean ring-0 state: CS = KGDT64_R0_CODE, SS =
KGDT64_R0_DATA, RFLAGS.IF = 1 (on x64 the IRQL masks interrupts, not IF).

Entering user mode (KiReturnToUser / the tail of KiSystemCall64): start from
the clean ring-0 state, load the process's CR3, put an interrupt frame on the
kernel stack (RIP, CS=0x33, RFLAGS, RSP, SS=0x2B) and execute a real
``iretq``: the CPU itself drops to CPL 3.

Leaving user mode: a ``syscall`` (serviced by ``emu.nt.syscalls`` while the
guest waits), or an exception (``emu.nt.trap``). A ring-3 exception ends
only its process; a ring-0 one is a bug check.
"""

from __future__ import annotations

import contextlib
import dataclasses
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from capstone import x86_const as cx

from emu.hw import mmu
from emu.hw.cpu import Cpu, CpuException, RunResult, StopReason, Vector
from emu.hw.descriptors import GDT_LIMIT, TSS_SIZE, Selector, build_gdt, build_tss
from emu.hw.devices import SlowDevice
from emu.hw.faultaddr import memory_accesses
from emu.hw.memory import PhysicalMemory
from emu.hw.mmu import CR0, CR4, EFER, PFErr
from emu.nt import (  # noqa: F401 (svc_* and dispatch register their services)
    dispatch,
    drivers,
    exports,
    kintr,
    layout,
    ps,
    svc_memory,
    svc_objects,
    syscalls,
    trap,
)
from emu.nt.bugcheck import BugCheck, BugCheckCode
from emu.nt.events import Event, EventBus
from emu.nt.fs import GuestFileSystem
from emu.nt.io import IoManager
from emu.nt.loader import Image
from emu.nt.mm import softpte, virtual
from emu.nt.mm.address_space import AddressSpace, MemoryManager, Protection
from emu.nt.mm.pagefile import Pagefile
from emu.nt.mm.pfn import FrameUse
from emu.nt.mm.virtual import FaultResolution
from emu.nt.ntos import ke
from emu.nt.ob import ObjectDirectory
from emu.nt.pool import Pools
from emu.nt.process import ExceptionInfo, Process, ProcessState, Thread, ThreadState
from emu.nt.scheduler import DEFAULT_QUANTUM, Scheduler
from emu.nt.status import NTSTATUS

if TYPE_CHECKING:
    from emu.nt import seh

IRETQ = b"\x48\xcf"
INT3 = b"\xcc"
HLT = b"\xf4"
TRAMPOLINE = layout.KERNEL_TEXT                  # iretq: the way into ring 3
KERNEL_RETURN = layout.KERNEL_TEXT + 0x10        # int3: where a kernel routine returns to
KERNEL_STACK_TOP = layout.KERNEL_STACK_BASE + (layout.KERNEL_STACK_PAGES + 1) * layout.PAGE_SIZE
KERNEL_RFLAGS = 0x202                            # IF set at every IRQL (masking is by IRQL)
USER_RFLAGS = 0x202                              # IF set, reserved bit 1 set
USER_RFLAGS_MASK = 0xCD5                         # CF PF AF ZF SF TF DF OF: what user code may set
USER_GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "r8", "r9", "r10", "r11", "r12",
             "r13", "r14", "r15")
# What a system call reads, in one batch (docs/abi.md): CS for the caller's ring, the service
# number, then the arguments, as KiSystemCall64 / KiSystemService take them.
_SYSCALL_REGISTERS = ("cs", "rax", "rdi", "rsi", "rdx", "r10", "r8", "r9")
_INT2E_REGISTERS = ("eax", "ebx", "ecx", "edx", "esi", "edi", "ebp")
_USER_ENTRY_REGISTERS = (*USER_GPRS, "rsp", "rip")            # load_user_context, one call
_USER_CONTEXT_REGISTERS = (*USER_GPRS, "rsp", "rip", "rflags")  # capture_user_context

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
DEADLOCK = "deadlock"
MAX_KERNEL_STACKS = 4096
PASSIVE_LEVEL, DISPATCH_LEVEL, DEVICE_IRQL = 0, 2, 5      # IRQLs (DIRQL for the slow device)


@dataclass(frozen=True)
class KernelCallResult:
    """What a kernel routine run by ``call_kernel`` returned, and the IRQL it returned at
    (the caller's IRQL is back once it has returned)."""

    rax: int
    irql: int = PASSIVE_LEVEL


class Executive:
    """The NT-like kernel: memory manager, processes and threads, the dispatcher, system
    services, trap handling."""

    def __init__(self, mem: PhysicalMemory,
                 console: Callable[[Process, bytes], None] | None = None, *,
                 quantum: int = DEFAULT_QUANTUM, fs_root: str | Path | None = None,
                 smap: bool = False, pagefile: Pagefile | None = None) -> None:
        self.mem = mem
        self.cpu = Cpu(mem)
        self.cpu.syscall_handler = self._on_syscall
        self.cpu.int2e_handler = self._on_int2e
        self.mm = MemoryManager(mem, self._page_changed, self.cpu.flush_translated_code,
                                on_tlb_flush=self.cpu.flush_tlb, pagefile=pagefile)
        self.scheduler = Scheduler(quantum)
        self.events = EventBus(lambda: self.clock)
        self.cpu.on_cr3_load = self._cr3_loaded
        self.fs = GuestFileSystem(fs_root)
        self.processes: list[Process] = []
        self.exit_observers: list[Callable[[Process], None]] = []   # called before teardown
        self.objects = ObjectDirectory()
        self.pools = Pools(self.mm)
        self.drivers: list[drivers.Driver] = []
        self.pending_drivers: list[drivers.DriverImage] = []   # DriverEntry runs at boot
        self.cpu.cr8.on_write = self._irql_written
        self.cpu.on_device_started = self._device_started
        self.in_system_service = False   # ring-0 work done for a system call right now
        self.io = IoManager(self)
        self.interrupts: dict[int, kintr.Interrupt] = {}  # vector -> its connected ISR
        self.pending_interrupts: set[int] = set()       # vectors whose line is up, not served
        self.dpc_queue: list[int | tuple[int, tuple[int, ...]]] = []   # KDPCs: emu.nt.kintr
        self.cpu.devices.append(SlowDevice())
        self.cpu.clock = lambda: self.clock
        self.debug_output = bytearray()
        self.current_thread: Thread | None = None
        self.bugcheck: BugCheck | None = None
        self.interrupted = False
        self.count_always = False        # a budget or a trace: count every instruction
        self.max_insns: int | None = None
        self.counted_everything = True   # False once any turn ran at full speed
        self.console = console           # (process or None for DbgPrint, bytes) -> None
        self._next_client_id = 4
        self._kernel_stack_slots: list[int] = []
        self._next_kernel_stack_slot = 1  # slot 0 is the boot stack
        self.running = False             # inside cpu.run(): defer page-table teardown
        self.debugger = None             # emu.debugger.session.Session while one is attached
        self._budget_end: int | None = None   # instruction count at which this budget ends
        self._deferred: list[Callable[[], None]] = []
        self._reschedule = False
        self._full_speed = False
        # SMAP: ring 0 may not touch user pages except through the probe/copy routines
        # (which play STAC/CLAC). Windows leaves it off; --smap turns it on.
        self._cr4 = int(CR4_BOOT | CR4.SMAP) if smap else int(CR4_BOOT)
        self._boot()

    # -- boot ------------------------------------------------------------------------------

    def _boot(self) -> None:
        """Build the kernel half and enter long mode with paging at ring 0."""
        system = self.mm.system
        tables = build_gdt(layout.KERNEL_TSS).ljust(0x800, b"\0") + \
            build_tss(KERNEL_STACK_TOP)
        self._gdt_frame = self.mm.map_new(system, layout.KERNEL_GDT, Protection.PAGE_READWRITE,
                                          use=FrameUse.KERNEL, data=tables)
        text = IRETQ.ljust(0x10, INT3) + INT3
        self.mm.map_new(system, layout.KERNEL_TEXT, Protection.PAGE_EXECUTE_READ,
                        use=FrameUse.KERNEL, data=text)
        self._map_kernel_stack(0)
        self.shared_data_frame = ke.map_shared_data(self)     # KUSER_SHARED_DATA
        cpu = self.cpu
        cpu.set_control(efer=int(EFER_BOOT), cr4=self._cr4, cr0=int(CR0_BOOT),
                        cr3=system.cr3)
        cpu.load_gdt(layout.KERNEL_GDT, GDT_LIMIT)
        cpu.load_tr(Selector.TSS, layout.KERNEL_TSS, TSS_SIZE - 1)
        cpu.set_reg("rsp", KERNEL_STACK_TOP)
        # Writing CS/SS changes only the selectors (platform-facts.md): the CPU is still at
        # CPL 0 with 64-bit code, as after a syscall or an interrupt from ring 3 (SDM 6.14).
        cpu.set_reg("cs", Selector.KERNEL_CODE)
        cpu.set_reg("ss", Selector.KERNEL_DATA)
        cpu.set_reg("rflags", KERNEL_RFLAGS)
        cpu.save_clean_context()

    @property
    def irql(self) -> int:
        """The processor's IRQL: CR8 itself, as on x64 Windows (wdm.h's KeGetCurrentIrql is
        ``__readcr8``), whether the executive or a driver's ``mov cr8`` set it."""
        return self.cpu.cr8.value

    @irql.setter
    def irql(self, level: int) -> None:
        self.cpu.cr8.value = level

    def _cr3_loaded(self, old: int, new: int) -> None:
        self.events.emit(Event.CR3_LOAD, old=old, new=new)

    def _page_changed(self, cr3: int, va: int) -> None:
        if cr3 == self.cpu.cr3 or va >= layout.KERNEL_SPACE_START:
            self.cpu.invalidate_page(va)

    # -- kernel stacks ---------------------------------------------------------------------

    @staticmethod
    def _kernel_stack_base(slot: int) -> int:
        return layout.KERNEL_STACK_BASE + slot * (layout.KERNEL_STACK_PAGES + 1) * \
            layout.PAGE_SIZE

    def _map_kernel_stack(self, slot: int) -> int:
        """Map the pages of kernel stack ``slot`` (its lowest page stays unmapped: a guard)."""
        base = self._kernel_stack_base(slot)
        for i in range(1, layout.KERNEL_STACK_PAGES + 1):
            self.mm.map_new(self.mm.system, base + i * layout.PAGE_SIZE,
                            Protection.PAGE_READWRITE, use=FrameUse.KERNEL)
        return base + (layout.KERNEL_STACK_PAGES + 1) * layout.PAGE_SIZE

    def allocate_kernel_stack(self) -> tuple[int, int]:
        """A kernel stack for a new thread: (slot, top)."""
        if self._kernel_stack_slots:
            slot = self._kernel_stack_slots.pop(0)
        elif self._next_kernel_stack_slot < MAX_KERNEL_STACKS:
            slot = self._next_kernel_stack_slot
            self._next_kernel_stack_slot += 1
        else:
            raise ps.LimitError(f"too many threads (at most {MAX_KERNEL_STACKS - 1})")
        return slot, self._map_kernel_stack(slot)

    def free_kernel_stack(self, slot: int) -> None:
        """Unmap a dead thread's kernel stack (once the CPU is out of the run)."""
        def free() -> None:
            base = self._kernel_stack_base(slot)
            for i in range(1, layout.KERNEL_STACK_PAGES + 1):
                pfn = self.mm.system.unmap_page(base + i * layout.PAGE_SIZE)
                if pfn is not None:
                    self.mm.pfn.release(pfn)
            self._kernel_stack_slots.append(slot)
            self._kernel_stack_slots.sort()
        self.defer(free)

    # -- processes -------------------------------------------------------------------------

    @property
    def current(self) -> Process | None:
        """The process whose thread is on the CPU."""
        return self.current_thread.process if self.current_thread else None

    def new_client_id(self) -> int:
        """Process and thread ids share one space of multiples of 4 (CLIENT_ID on Windows)."""
        cid = self._next_client_id
        self._next_client_id += 4
        return cid

    def create_process(self, image: Image, args: list[str],
                       parent: Process | None = None) -> Process:
        """A new process with its first thread ready to run (see emu.nt.ps)."""
        self.cpu.forget_code()          # its image may sit where older code was counted
        return ps.create_process(self, image, args, parent)

    def terminate(self, proc: Process, status: int,
                  exception: ExceptionInfo | None = None) -> None:
        """End ``proc`` and all its threads."""
        ps.terminate_process(self, proc, status, exception)

    def release_address_space(self, proc: Process) -> None:
        """Free a dead process's user half, after the CPU has left its tables."""
        def release() -> None:
            if self.cpu.cr3 == proc.space.cr3:
                self.cpu.set_control(cr3=self.mm.system.cr3)
            proc.space.release_user_half()
            virtual.release_process_memory(self, proc)
        self.defer(release)

    def defer(self, work: Callable[[], None]) -> None:
        """Run ``work`` now, or right after the CPU stops if guest code is running."""
        if self.running:
            self._deferred.append(work)
        else:
            work()

    def write_user(self, space: AddressSpace, va: int, data: bytes) -> None:
        """Store bytes into present pages of ``space`` from the kernel (no probing: the
        kernel's own mappings, or pages it just made)."""
        done = 0
        while done < len(data):
            at = va + done
            n = min(len(data) - done, layout.PAGE_SIZE - (at & 0xFFF))
            mapping = space.lookup(at)
            if mapping is None or mapping.pfn >= len(self.mm.pfn.entries):
                # A page the kernel made is gone or names no frame of RAM: a driver has
                # garbled the page tables (PAGE_FAULT_IN_NONPAGED_AREA, a write).
                raise BugCheck(BugCheckCode.PAGE_FAULT_IN_NONPAGED_AREA,
                               (at, 2, self.cpu.rip, 0), self.cpu.rip,
                               "the kernel wrote one of its own pages, and its PTE is not "
                               "valid any more (a corrupted page table)")
            pfn = mapping.pfn
            self.mem.write(pfn * layout.PAGE_SIZE + (at & 0xFFF), data[done:done + n])
            self.mm.pfn.entries[pfn].modified = True      # no PTE.D: the CPU did not write
            done += n

    def object_closed(self, obj: object) -> None:
        """A handle closed: the object is deleted with its last handle."""
        self.objects.closed(obj)

    # -- the dispatcher --------------------------------------------------------------------

    @property
    def clock(self) -> int:
        """The machine's time in instructions (see emu.nt.scheduler)."""
        return self.scheduler.clock(self.cpu.instructions)

    def run(self) -> None:
        """Start the drivers, then run threads until every process has ended; raises
        MachineStop or BugCheck."""
        while self.pending_drivers:
            with self._bug_checks_recorded():
                drivers.start(self, self.pending_drivers.pop(0))
        while True:
            if self.interrupted:
                raise MachineStop(INTERRUPTED)
            if not self.scheduler.ready and self._idle_until_interrupt():
                continue
            thread = self.scheduler.next_thread(self.clock)
            if thread is None:
                if any(p.live_threads for p in self.processes):
                    raise MachineStop(DEADLOCK)
                with self._bug_checks_recorded():
                    drivers.shutdown(self)      # every process ended: DriverUnload runs
                return
            self._run_thread(thread)

    def _budget(self) -> int | None:
        """Instructions for the next turn, or None to run at full speed (nothing to count)."""
        device = self._device_deadline()
        counting = self.count_always or self.scheduler.needs_counting() or device is not None
        if not counting:
            return None
        budget = self.scheduler.quantum
        for deadline in (self.scheduler.next_deadline(), device):
            if deadline is not None:
                budget = min(budget, max(1, deadline - self.clock))
        if self.max_insns is not None:
            budget = min(budget, self.max_insns - self.cpu.instructions)
        return budget

    def _run_thread(self, thread: Thread) -> None:
        """One turn of ``thread`` on the CPU: until it blocks, yields, ends, or is preempted."""
        proc = thread.process
        proc.state = ProcessState.RUNNING
        self.current_thread = thread
        budget = self._budget()
        if budget is not None and budget <= 0:
            raise MachineStop(INSTRUCTION_LIMIT)
        self.counted_everything &= budget is not None
        self._full_speed = budget is None
        self.set_budget(budget)
        before = self.cpu.instructions
        self._reschedule = False
        try:
            with self._bug_checks_recorded():
                result = self._switch_to(thread)
                while not self._turn_over(thread, result):
                    result = self._run_cpu()
        finally:
            spent = self.cpu.instructions - before
            thread.instructions += spent
            proc.instructions += spent
            self.current_thread = None

    @contextlib.contextmanager
    def _bug_checks_recorded(self) -> Iterator[None]:
        """A BugCheck the executive raised itself (the memory manager finding its books
        broken, emu.nt.mm.corruption) gets KeBugCheckEx's record too, while the thread that
        ran into it is still current."""
        try:
            yield
        except BugCheck as bc:
            if bc is not self.bugcheck:
                self._fill_bugcheck(bc)
            raise

    def set_budget(self, n: int | None) -> None:
        """Give the CPU ``n`` more instructions (None: full speed, nothing counted). An
        attached debugger may stop it sooner (a step); the rest is given back after its pause,
        so the schedule is the same with or without the debugger."""
        self._budget_end = None if n is None else self.cpu.instructions + n
        if n is not None and self.debugger is not None:
            n = self.debugger.clip_budget(n)
        self.cpu.set_budget(n)

    def rearm_budget(self) -> None:
        """Give the CPU the rest of the budget it was given (a debugger clips it anew)."""
        if self._budget_end is not None:
            self.set_budget(max(0, self._budget_end - self.cpu.instructions))

    def _run_cpu(self, begin: int | None = None) -> RunResult:
        """Run the CPU from ``begin`` (default RIP) until it stops for the executive: an
        exception, the budget's end, or a stop it asked for. Stops a debugger made (a step, a
        breakpoint, Ctrl-C in ``emu debug``) pause here and the run goes on after them."""
        while True:
            if self.debugger is not None:
                if begin is not None:                       # the pause shows where it starts
                    self.cpu.set_reg("rip", begin)
                    begin = None
                self.debugger.before_run()                  # may pause: the shell runs here
            self.running = True
            try:
                result = self.cpu.run(begin)
            finally:
                self.running = False
                while self._deferred:
                    self._deferred.pop(0)()
            if result.exception is not None and (self.events.observers or self.debugger):
                self.cpu.settle(result.exception)     # someone may keep it: exact CR2 now
            if self.debugger is None or not self._stopped_for_debugger(result):
                return result
            begin = None
            self.rearm_budget()

    def _stopped_for_debugger(self, result: RunResult) -> bool:
        """Whether the CPU stopped only because the debugger wanted it to."""
        if result.reason is StopReason.BUDGET:
            return self._budget_end is not None and self.cpu.instructions < self._budget_end
        return result.reason is StopReason.REQUESTED and not self.cpu.stop_requested and \
            not self.interrupted and self.debugger.stop_pending

    def _switch_to(self, thread: Thread) -> RunResult:
        """Load ``thread``'s context (or start it at ring 3) and run it."""
        self._set_rsp0(thread.kernel_stack_top)
        ke.update_shared_data(self, self.shared_data_frame)   # each dispatch: a new quantum
        self.events.emit(Event.THREAD_DISPATCH, thread=thread)
        if thread.context is None:
            return self._enter_user(thread)
        cpu = self.cpu
        cpu.uc.context_restore(thread.context)
        if cpu.cr3 != thread.process.space.cr3:
            # Windows' SwapContext loads CR3 only when the new thread's process differs:
            # a thread resumed in its own address space keeps its TLB entries (and the
            # counted turns of one process pay no refills).
            cpu.set_control(cr3=thread.process.space.cr3)
        if thread.resume_rax is not None:
            cpu.set_reg("rax", thread.resume_rax)
            thread.resume_rax = None
        if thread.apc is not None:
            # The completion of its I/O, in its own context (Windows' special kernel APC):
            # now the caller's buffer is the caller's buffer.
            apc, thread.apc = thread.apc, None
            cpu.set_reg("rax", apc() & 0xFFFF_FFFF)
        return self._run_cpu()

    def _turn_over(self, thread: Thread, result: RunResult) -> bool:
        """Handle why the CPU stopped; True when this thread's turn is over."""
        if result.reason is StopReason.EXCEPTION:
            self._handle_exception(thread, result.exception)
            return thread.state is not ThreadState.RUNNING
        alive = thread.state is not ThreadState.TERMINATED
        if alive:
            if thread.context is None:
                thread.context = self.cpu.uc.context_save()
            else:                        # into the thread's own buffer: no allocation
                self.cpu.uc.context_update(thread.context)
        if result.reason is StopReason.BUDGET:
            if self.max_insns is not None and self.cpu.instructions >= self.max_insns:
                raise MachineStop(INSTRUCTION_LIMIT)
            # A device's interrupt line may be up: it interrupts THIS thread, whatever
            # process it belongs to (the seed's "arbitrary thread context").
            self._deliver_interrupts(thread)
            if thread.state is ThreadState.RUNNING:
                self.scheduler.make_ready(thread)      # quantum over: to the back
            return True
        if self.interrupted:
            raise MachineStop(INTERRUPTED)
        if thread.state is ThreadState.RUNNING and thread.kernel_work is not None:
            # A service that must run driver code (an I/O request): in this thread's
            # context, on its kernel stack, then back to user mode with the result.
            work, thread.kernel_work = thread.kernel_work, None
            self.in_system_service = True
            try:
                status = work()
            finally:
                self.in_system_service = False
            if status is None:
                return True                  # pended: the thread waits for the completion
            self.cpu.uc.context_restore(thread.context)
            self.cpu.set_control(cr3=thread.process.space.cr3)
            self.cpu.set_reg("rax", status & 0xFFFF_FFFF_FFFF_FFFF)
            return False
        if thread.state is ThreadState.RUNNING and thread.continue_context is not None:
            self.load_user_context(thread, thread.continue_context)   # NtContinue
            thread.continue_context = None
            return False
        if thread.state is ThreadState.RUNNING:
            if not self._reschedule:
                return False                           # a stop nobody asked for: go on
            self.scheduler.make_ready(thread)
        return True

    # -- interrupts and DPCs ----------------------------------------------------------------

    def _device_deadline(self) -> int | None:
        times = [d.fire_at for d in self.cpu.devices if d.fire_at is not None]
        return min(times) if times else None

    def _idle_until_interrupt(self) -> bool:
        """Nothing ready: if a device will interrupt before any timer, let the clock run to
        it (the idle loop) and take the interrupt in the system context."""
        device = self._device_deadline()
        timer = self.scheduler.next_deadline()
        if device is None or (timer is not None and timer < device):
            return False
        self.scheduler.idle_skipped += max(0, device - self.clock)
        self._deliver_interrupts(None)
        return True

    def _deliver_interrupts(self, thread: Thread | None, *, here: bool = False) -> None:
        """Every device whose line is up interrupts ``thread`` (None: the idle system) if its
        DIRQL is above the IRQL: its ISR, then the DPCs queued, at DISPATCH_LEVEL, in that
        thread's address space and on its kernel stack (``here``: below the frames of the
        ring-0 code running now, such as a driver waiting in KeWaitForSingleObject), before
        the thread goes on. A masked interrupt stays pending until the IRQL drops below its
        DIRQL (emu.nt.kintr)."""
        self._raise_interrupt_lines()
        kintr.dispatch(self, thread, here=here)

    def _raise_interrupt_lines(self) -> None:
        """Devices whose time has come raise their line (an unconnected one is lost)."""
        for device in self.cpu.devices:
            if device.due(self.clock) and device.vector in self.interrupts:
                self.pending_interrupts.add(device.vector)

    def _device_started(self) -> None:
        """A driver's OUT started a device while nothing is counted: stop after it, so that
        call_kernel counts the time it waits for (the clock runs on counted instructions)."""
        if self.running and self.cpu.native.budget is None:
            self.cpu.stop()

    def _irql_written(self, old: int, new: int) -> bool:
        """A driver's ``mov cr8`` moved the IRQL: stop the CPU after it if that unmasked an
        interrupt or, below DISPATCH_LEVEL, the DPC queue (call_kernel delivers them)."""
        return kintr.work_after_write(self, old, new)

    def run_at_irql(self, irql: int, routine: int, args: tuple[int, ...],
                    thread: Thread | None, stack_top: int | None = None) -> None:
        """Run an ISR or a DPC at ``irql`` in ``thread``'s address space (None: the system's),
        on its kernel stack (or at ``stack_top``: below a routine it interrupts), then put
        the IRQL back. A bug check raised inside leaves the IRQL as it was: the stopped
        machine (its dump, the debugger) shows the level the fault happened at."""
        old = self.irql
        self.irql = irql
        if stack_top is None:
            stack_top = thread.kernel_stack_top if thread else KERNEL_STACK_TOP
        self.call_kernel(routine, *args,
                         space=thread.process.space if thread else self.mm.system,
                         stack_top=stack_top)
        self.irql = old
        self.events.emit(Event.KERNEL_CALL_DONE, routine=routine, thread=thread)

    def _set_rsp0(self, top: int) -> None:
        """TSS.RSP0: the stack the CPU would switch to on entering ring 0 (SDM §7.7)."""
        tss = self._gdt_frame * layout.PAGE_SIZE + (layout.KERNEL_TSS & 0xFFF)
        self.mem.write(tss + 4, struct.pack("<Q", top))

    def _enter_user(self, thread: Thread) -> RunResult:
        """KiStartUserThread: iretq from the clean ring-0 state to the thread's start, CPL 3."""
        self.load_user_context(thread, {"rip": thread.start_rip, "rsp": thread.start_rsp,
                                        "rdi": thread.start_arg, "rflags": USER_RFLAGS})
        return self._run_cpu()

    def load_user_context(self, thread: Thread, regs: dict[str, int]) -> None:
        """Make the CPU ready to iretq into ring 3 with ``regs`` (registers not named are 0):
        the clean ring-0 state (no stale exception), the thread's CR3, the interrupt frame
        on its kernel stack, RIP at the trampoline. The next run starts there."""
        cpu = self.cpu
        cpu.restore_clean_context()
        cpu.set_control(cr3=thread.process.space.cr3)
        code = Selector.USER_CODE if thread.process.bits == 64 else Selector.USER_CODE32
        rflags = (regs.get("rflags", USER_RFLAGS) & USER_RFLAGS_MASK) | USER_RFLAGS
        frame = struct.pack("<5Q", regs["rip"], code, rflags, regs["rsp"], Selector.USER_DATA)
        frame_va = thread.kernel_stack_top - len(frame)
        self.write_user(self.mm.system, frame_va, frame)
        for name, value in regs.items():
            if name.startswith("xmm") or name == "mxcsr":
                cpu.set_reg_named(name, value)
        cpu.set_regs(_USER_ENTRY_REGISTERS,
                     [*(regs.get(name, 0) for name in USER_GPRS), frame_va, TRAMPOLINE])

    def capture_user_context(self) -> dict[str, int]:
        """The registers of the thread on the CPU (GPRs, RIP, RFLAGS, SSE state)."""
        cpu = self.cpu
        regs = dict(zip(_USER_CONTEXT_REGISTERS, cpu.regs(_USER_CONTEXT_REGISTERS), strict=True))
        for i in range(16):
            regs[f"xmm{i}"] = cpu.reg_named(f"xmm{i}")
        regs["mxcsr"] = cpu.reg_named("mxcsr")
        return regs

    # -- traps -----------------------------------------------------------------------------

    def _handle_exception(self, thread: Thread, exc: CpuException) -> None:
        proc = thread.process
        self.events.emit(Event.EXCEPTION, exc=exc, thread=thread)
        # The instruction as it reads now: before MmAccessFault changes a page (a guard page
        # it executes from), unless only a data page can change (a not-present data access).
        insn = None if exc.vector == Vector.PF and exc.access != "fetch" and exc.cpl == 3 \
            else self.describe_instruction(exc.rip, exc.cpl)
        if exc.cpl != 3:
            raise self._bugcheck(self.cpu.settle(exc), insn)
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
        if exc.vector == Vector.PF and self.irql >= DISPATCH_LEVEL:
            # No page fault may be taken at DISPATCH_LEVEL or above, whatever the address:
            # DRIVER_IRQL_NOT_LESS_OR_EQUAL (address, IRQL, 0 read / 1 write / 8 execute, RIP).
            kind = {"read": 0, "write": 1, "fetch": 8}[exc.access or "read"]
            code = BugCheckCode.DRIVER_IRQL_NOT_LESS_OR_EQUAL \
                if drivers.driver_at(self, exc.rip) is not None \
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
            bc.backtrace = [drivers.symbolize(self, a) for a in frames]
            # The driver to blame: the one whose code faulted, or, when the fault is the
            # fetch of a bad call target, the caller.
            culprit = next((a for a in frames if drivers.driver_at(self, a) is not None), None)
            if culprit is not None:
                bc.driver = drivers.driver_at(self, culprit).image.name
                bc.location = drivers.symbolize(self, culprit)
        proc = self.current
        bc.process = f'{proc.pid} "{proc.name}"' if proc is not None else ""
        bc.irql = self.irql
        self.bugcheck = bc
        self.events.emit(Event.BUGCHECK, bugcheck=bc)

    def _frames(self, rip: int, limit: int = 8) -> list[int]:
        """Return addresses up the ring-0 stack: through PE drivers (and the kernel exports
        they call) by their .pdata/.xdata, as WinDbg unwinds (emu.nt.unwind); through ELF
        drivers by frame pointers (they keep them)."""
        from emu.nt import seh, unwind  # only when a PE driver's code runs (start-up)

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
        if drivers.driver_at(self, rip) is None:      # a bad call target: [rsp] is the caller
            try:
                caller = self.kernel_read_u64(self.cpu.reg("rsp"))
            except BugCheck:
                caller = 0
            if drivers.driver_at(self, caller) is not None:
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
        cpu = self.cpu
        # What the routine returns to: the interrupted or calling thread's state (an ISR's
        # iretq, a dispatch routine's return into the I/O manager). After the return the CPU
        # shows that state again, never the int3 trap the routine returned through.
        caller, caller_cr3 = cpu.uc.context_save(), cpu.cr3
        cpu.restore_clean_context()
        cpu.set_control(cr3=(space or self.mm.system).cr3)
        for name, value in zip(("rcx", "rdx", "r8", "r9"), args, strict=False):
            cpu.set_reg(name, value)
        rsp = stack_top - 0x100
        self.write_user(self.mm.system, rsp, struct.pack("<Q", KERNEL_RETURN))
        cpu.set_reg("rsp", rsp)
        ke.update_shared_data(self, self.shared_data_frame)   # the times the routine reads
        full_speed = cpu.native.budget is None
        result = self._run_cpu(routine)
        while True:
            exc = result.exception
            if result.reason is StopReason.BUDGET:
                if self.max_insns is not None and self.cpu.instructions >= self.max_insns:
                    raise MachineStop(INSTRUCTION_LIMIT)
                # Kernel code is not preempted here: the quantum ends when it returns. A
                # device may interrupt it, if the IRQL lets it (emu.nt.kintr).
                self._raise_interrupt_lines()
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
                if cpu.native.budget is None and self._device_deadline() is not None:
                    self.set_budget(self._kernel_budget())
                kintr.dispatch(self, self.current_thread, here=True)
                result = self._run_cpu()
                continue
            if exc is not None and exc.vector == Vector.BP and exc.rip == KERNEL_RETURN:
                rax, irql = cpu.reg("rax"), self.irql
                self._return_to(caller, caller_cr3)
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
            raise self._bugcheck(exc, self.describe_instruction(exc.rip))

    def _kernel_budget(self) -> int:
        """Instructions kernel code runs before the executive looks again: a quantum, or
        less if a device interrupts sooner or the --max-insns limit comes first."""
        budget = self.scheduler.quantum
        device = self._device_deadline()
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
        self.cpu.set_control(cr3=cr3)

    def page_in_for_kernel(self, va: int | None, access: str) -> bool:
        """MmAccessFault for a not-present fault taken at ring 0: below DISPATCH_LEVEL a
        pageable page (the current process's user pages, PagedPool) is brought back and
        the access retried; at DISPATCH_LEVEL or above nothing may be paged in (the caller
        bug-checks: 0xD1 / 0x0A), even though the data is safe in the pagefile."""
        if va is None or self.irql >= DISPATCH_LEVEL:
            return False
        if va < layout.KERNEL_SPACE_START:
            # The process whose address space is current: a driver attached to another
            # (KeStackAttachProcess) touches that one's pages.
            proc = next((p for p in self.processes if p.space.cr3 == self.cpu.cr3
                         and p.state is not ProcessState.TERMINATED), self.current)
            return proc is not None and \
                virtual.resolve_fault(self, proc, va, access) is FaultResolution.RESOLVED
        return virtual.page_in_system(self, va, access)

    def _call_export(self, handler: exports.Handler) -> None:
        """A driver called a kernel export: run its routine, then return to the caller."""
        from emu.nt import seh  # only when a PE driver's code runs (start-up)

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
        ke.update_shared_data(self, self.shared_data_frame)   # a wait may have moved the clock
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

    def _kernel_walk(self, va: int, access: str) -> int:
        """The physical address ring-0 ``access`` to ``va`` reaches, paging it in first
        when that is allowed (see page_in_for_kernel)."""
        try:
            return self.cpu.walk(va, access, cpl=0, set_accessed_dirty=True).pa
        except mmu.PageFault as fault:
            if fault.error_code & (PFErr.P | PFErr.RSVD) or \
                    not self.page_in_for_kernel(va, access):
                raise
        return self.cpu.walk(va, access, cpl=0, set_accessed_dirty=True).pa

    def kernel_read(self, va: int, n: int) -> bytes:
        """Read kernel-visible memory as ring-0 code would (a fault here: BugCheck)."""
        out = bytearray()
        while len(out) < n:
            at = (va + len(out)) & 0xFFFF_FFFF_FFFF_FFFF    # wraps at 2^64, as on the CPU
            try:
                pa = self._kernel_walk(at, "read")
            except (mmu.PageFault, mmu.GeneralProtection):
                raise BugCheck(BugCheckCode.PAGE_FAULT_IN_NONPAGED_AREA,
                               (at, 0, self.cpu.rip, 0), self.cpu.rip,
                               "a kernel routine read an invalid address") from None
            chunk = min(n - len(out), layout.PAGE_SIZE - (at & 0xFFF))
            out += self.mem.read(pa, chunk)
        return bytes(out)

    def kernel_write(self, va: int, data: bytes) -> None:
        """Write kernel-visible memory as ring-0 code would (CR0.WP honoured)."""
        done = 0
        while done < len(data):
            at = (va + done) & 0xFFFF_FFFF_FFFF_FFFF
            try:
                pa = self._kernel_walk(at, "write")
            except (mmu.PageFault, mmu.GeneralProtection):
                raise BugCheck(BugCheckCode.PAGE_FAULT_IN_NONPAGED_AREA,
                               (at, 2, self.cpu.rip, 0), self.cpu.rip,
                               "a kernel routine wrote an invalid address") from None
            n = min(len(data) - done, layout.PAGE_SIZE - (at & 0xFFF))
            self.mem.write(pa, data[done:done + n])
            done += n

    def kernel_read_u64(self, va: int) -> int:
        return int.from_bytes(self.kernel_read(va, 8), "little")

    def kernel_read_string(self, va: int, limit: int = 4096) -> bytes:
        """A NUL-terminated string in kernel-visible memory (at most ``limit`` bytes)."""
        out = bytearray()
        while len(out) < limit:
            chunk = self.kernel_read(va + len(out), min(64, layout.PAGE_SIZE
                                                        - ((va + len(out)) & 0xFFF)))
            end = chunk.find(b"\0")
            if end >= 0:
                return bytes(out + chunk[:end])
            out += chunk
        return bytes(out)

    def debug_print(self, data: bytes) -> None:
        """DbgPrint's output: the kernel debugger's console, here the machine's console."""
        self.debug_output += data
        if self.console is not None:
            self.console(None, data)

    def interrupt(self) -> None:
        """Stop the machine at the next instruction boundary (Ctrl-C); safe from any thread."""
        self.interrupted = True
        self.cpu.uc.emu_stop()

    # -- system services -------------------------------------------------------------------

    def _on_syscall(self, cpu: Cpu) -> None:
        """The syscall hook: KiSystemCall64 with the guest parked at the next instruction."""
        thread = self.current_thread
        if thread is None:
            return
        cs, number, *args = cpu.regs(_SYSCALL_REGISTERS)   # one call into Unicorn, not eight
        if cs & 3 != 3:
            return
        self._system_service(thread, number, tuple(args))

    def _on_int2e(self, cpu: Cpu) -> bool:
        """``int 0x2e`` from a 32-bit process: KiSystemService, arguments in ebx, ecx, edx,
        esi, edi, ebp (docs/abi.md). From a 64-bit process it is not a gate: #GP."""
        thread = self.current_thread
        if thread is None or cpu.cpl != 3 or thread.process.bits != 32:
            return False
        number, *args = cpu.regs(_INT2E_REGISTERS)
        self._system_service(thread, number, tuple(args))
        return True

    def _system_service(self, thread: Thread, number: int, args: tuple[int, ...]) -> None:
        cpu = self.cpu
        self.events.emit(Event.SYSCALL, thread=thread, number=number, args=args)
        result = syscalls.dispatch(self, thread.process, number, args)
        if thread.state in (ThreadState.RUNNING, ThreadState.READY) and result is not None:
            mask = 0xFFFF_FFFF if thread.process.bits == 32 else 0xFFFF_FFFF_FFFF_FFFF
            cpu.set_reg("rax", result & mask)
        else:
            result = None
        if thread.kernel_work is not None:      # the service goes on in a driver: report its
            self._report_when_done(thread, number)     # status when that part returns
        else:
            self.events.emit(Event.SYSCALL_RETURN, thread=thread, number=number, result=result)
        if thread.state is not ThreadState.RUNNING:
            cpu.stop()                   # blocked, yielded or ended: the dispatcher decides
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

    def console_write(self, proc: Process, data: bytes) -> None:
        """The console device: bytes a process wrote, in order."""
        proc.output += data
        if self.console is not None:
            self.console(proc, data)

    def close(self) -> None:
        self.cpu.close()
        if self.mm.pager.pagefile is not None:
            self.mm.pager.pagefile.close()

