"""The executive: boots the machine and holds its parts, as ntoskrnl holds Ke, Mm, Io, Ob, Ps.

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

The parts, each a module a reader can open alone (``Executive`` mixes them in):
    emu.nt.ke_dispatcher  Ke's dispatcher: run, turns, budgets, context switch, idle,
                          device interrupts between turns
    emu.nt.ke_trap        Ke's trap entry: exceptions and system service entry
    emu.nt.ke_call        kernel calls: call_kernel, export calls, SEH dispatch at ring 0,
                          bug check records and the frames they show
    emu.nt.mm_kernel      Mm's kernel-mode access: kernel_read, kernel_write,
                          page_in_for_kernel
Modules that work with the executive take a narrow view of it (emu.nt.interfaces).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from emu.hw.cpu import Cpu
from emu.hw.descriptors import GDT_LIMIT, TSS_SIZE, Selector, build_gdt, build_tss
from emu.hw.devices import SlowDevice
from emu.hw.memory import PhysicalMemory
from emu.hw.mmu import CR0, CR4, EFER
from emu.nt import (  # noqa: F401 (svc_* and dispatch register their services)
    dispatch,
    kpcr,
    kuser,
    layout,
    ps,
    svc_memory,
    svc_objects,
    syscalls,
)
from emu.nt.bugcheck import BugCheck
from emu.nt.eprocess import SYSTEM_THREAD_ID
from emu.nt.events import Event, EventBus
from emu.nt.fs import GuestFileSystem
from emu.nt.io import IoManager
from emu.nt.ke_call import KeKernelCalls
from emu.nt.ke_dispatcher import USER_RFLAGS, KeDispatcher  # noqa: F401 (bench/plain.py)
from emu.nt.ke_trap import KeTrapEntry
from emu.nt.kedefs import (  # noqa: F401 (the names callers import from here)
    DEADLOCK,
    DEVICE_IRQL,
    DISPATCH_LEVEL,
    INSTRUCTION_LIMIT,
    INTERRUPTED,
    PASSIVE_LEVEL,
    KernelCallResult,
    MachineStop,
)
from emu.nt.layout import KERNEL_RETURN, KERNEL_STACK_TOP, TRAMPOLINE  # noqa: F401
from emu.nt.mm import virtual
from emu.nt.mm.address_space import MemoryManager, Protection
from emu.nt.mm.pagefile import Pagefile
from emu.nt.mm.pfn import FrameUse
from emu.nt.mm_kernel import MmKernelAccess
from emu.nt.ob import ObjectDirectory
from emu.nt.pool import Pools
from emu.nt.process import ExceptionInfo, Process, Thread
from emu.nt.scheduler import DEFAULT_QUANTUM, Scheduler

if TYPE_CHECKING:
    from emu.nt import drivers, kintr
    from emu.nt.loader import Image

IRETQ = b"\x48\xcf"
INT3 = b"\xcc"
KERNEL_RFLAGS = 0x202                            # IF set at every IRQL (masking is by IRQL)
INITIAL_FPCSR = 0x27F                            # x87 control word at a program's start (x64 ABI)

CR0_BOOT = CR0.PE | CR0.MP | CR0.ET | CR0.NE | CR0.WP | CR0.PG
# PCIDE: each address space's translations are cached under its own PCID (ke_dispatcher's
# load_cr3), so a switch keeps them (SDM Vol. 3A 4.10.1); Windows x64 runs with it set on
# every CPU that has PCIDs.
CR4_BOOT = CR4.PAE | CR4.OSFXSR | CR4.OSXMMEXCPT | CR4.SMEP | CR4.PCIDE
EFER_BOOT = EFER.SCE | EFER.LME | EFER.LMA | EFER.NXE

MAX_KERNEL_STACKS = 4096


class Executive(KeDispatcher, KeTrapEntry, KeKernelCalls, MmKernelAccess):
    """The NT-like kernel: memory manager, processes and threads, the dispatcher, system
    services, trap handling (the parts: see the module's docstring)."""

    def __init__(self, mem: PhysicalMemory,
                 console: Callable[[Process, bytes], None] | None = None, *,
                 quantum: int = DEFAULT_QUANTUM, fs_root: str | Path | None = None,
                 smap: bool = False, pagefile: Pagefile | None = None) -> None:
        self.mem = mem
        self.cpu = Cpu(mem)
        self.cpu.syscall_handler = self._on_syscall
        self.cpu.int2e_handler = self._on_int2e
        self.mm = MemoryManager(mem, self._page_changed, self.cpu.flush_translated_code,
                                on_tlb_flush=self.cpu.flush_tlb,
                                on_pcid_reuse=lambda pcid: self.cpu.invpcid(1, pcid),
                                pagefile=pagefile)
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
        self.interrupt_routines = 0      # ISRs and DPCs running now (nested), emu.nt.kintr
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
        self._next_client_id = SYSTEM_THREAD_ID + 4   # 4 and 8 are System's: new_client_id
        self._kernel_stack_slots: list[int] = []
        self._next_kernel_stack_slot = 1  # slot 0 is the boot stack
        self.running = False             # inside cpu.run(): defer page-table teardown
        self.debugger = None             # emu.debugger.session.Session while one is attached
        self._budget_end: int | None = None   # instruction count at which this budget ends
        self._deferred: list[Callable[[], None]] = []
        self._reschedule = False
        self._full_speed = False
        self._turn_start = 0             # the instruction count the current turn began at
        # A yield or a wait hands the CPU to the next thread inside the SYSCALL hook when
        # nothing else must happen between the turns (ke_dispatcher._switch_at_syscall);
        # False: every switch stops the run (the reference tests compare with).
        self.switch_at_syscall = True
        self.switches_at_syscall = 0     # the switches made so
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
        self.pcr_frame = 0               # the KPCR's: mapped with the first ring-0 routine
        self.shared_data_frame = kuser.map_shared_data(self)     # KUSER_SHARED_DATA
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
        # The state before the exit's iretq, after its SWAPGS: GS base the user's (none),
        # IA32_KERNEL_GS_BASE the KPCR (emu.nt.kpcr; call_kernel plays the entry's SWAPGS).
        cpu.swap_gs_to(0, layout.KERNEL_PCR)
        # Every thread and every kernel routine starts from this state, with the x87 control
        # word and MXCSR that Microsoft's x64 calling convention gives a program at its start
        # (FpCsr 0x27F: exceptions masked, double precision, round to nearest; MxCsr
        # 0x1F80: exceptions masked, round to nearest). Unicorn starts with both 0.
        cpu.set_reg_named("fpcw", INITIAL_FPCSR)
        cpu.set_reg_named("mxcsr", kpcr.MXCSR_DEFAULT)
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
        if self.events.observers:                     # nothing built for nobody
            self.events.emit(Event.CR3_LOAD, old=old, new=new)

    def _page_changed(self, cr3: int, va: int) -> None:
        if self.cpu.pcid_enabled:
            # Each address space keeps its translations under its own PCID across
            # switches, so a PTE of a space that is not current may be cached too: the
            # page goes from every PCID (the kernel half's pages are not global here, so
            # each PCID may hold them). A stale translation of another PCID would let a
            # process reach a frame it no longer owns.
            self.cpu.invalidate_page(va, every_pcid=True)
        elif cr3 == self.cpu.cr3 or va >= layout.KERNEL_SPACE_START:
            self.cpu.invalidate_page(va)   # without PCIDs a CR3 load dropped the others'

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
        """The next process or thread id: 12, 16, 20, ... in the order they are made.

        Windows takes both kinds of id from one handle table (PspCidTable, the CLIENT_ID
        space): multiples of 4, 0 never used, so no process id is also a thread id. The
        System process holds 4 and its thread 8 (emu.nt.eprocess) from boot, so the first
        app is process 12 and its first thread 16; no id ever names two things. (Windows
        reuses a freed id; this machine does not, which it may: ids are only unique among
        live objects there.)"""
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
                self.load_cr3(self.mm.system.cr3)
            proc.space.release_user_half()
            virtual.release_process_memory(self, proc)
        self.defer(release)

    def defer(self, work: Callable[[], None]) -> None:
        """Run ``work`` now, or right after the CPU stops if guest code is running."""
        if self.running:
            self._deferred.append(work)
        else:
            work()

    def object_closed(self, obj: object) -> None:
        """A handle closed: the object is deleted with its last handle."""
        self.objects.closed(obj)

    def debug_print(self, data: bytes) -> None:
        """DbgPrint's output: the kernel debugger's console, here the machine's console."""
        self.debug_output += data
        if self.console is not None:
            self.console(None, data)

    def interrupt(self) -> None:
        """Stop the machine at the next instruction boundary (Ctrl-C); safe from any thread."""
        self.interrupted = True
        self.cpu.uc.emu_stop()

    def console_write(self, proc: Process, data: bytes) -> None:
        """The console device: bytes a process wrote, in order."""
        proc.output += data
        if self.console is not None:
            self.console(proc, data)

    def close(self) -> None:
        self.cpu.close()
        if self.mm.pager.pagefile is not None:
            self.mm.pager.pagefile.close()
