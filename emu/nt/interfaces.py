"""What the executive's parts see of each other: narrow ``typing.Protocol`` views of the
kernel, and the few values they share.

The executive (emu.nt.kernel.Executive) is one object made of Windows' parts: the Ke
dispatcher (emu.nt.ke_dispatcher), Ke's trap entry (emu.nt.ke_trap), kernel calls
(emu.nt.ke_call) and Mm's kernel-mode access (emu.nt.mm_kernel). A module that works
with it names the view it needs here, not the class: the import graph of emu/nt then
has no circle through kernel.py (tests/nt/test_import_graph.py checks it).

This module sits at the bottom: it imports nothing of emu/nt at run time, and for type
annotations only the plain data modules (processes, address spaces, the event bus...),
which never import it back. Its users import it only for type checking (``if
TYPE_CHECKING:``), so it costs no start-up time; the values the parts share at run time
(MachineStop, KernelCallResult, the IRQLs) are in emu.nt.kedefs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Callable

    from emu.hw.cpu import Cpu
    from emu.hw.exceptions import CpuException
    from emu.hw.memory import PhysicalMemory
    from emu.nt.bugcheck import BugCheck
    from emu.nt.events import EventBus
    from emu.nt.fs import GuestFileSystem
    from emu.nt.kedefs import KernelCallResult
    from emu.nt.mm.address_space import AddressSpace, MemoryManager
    from emu.nt.ob import ObjectDirectory
    from emu.nt.pool import Pools
    from emu.nt.process import ExceptionInfo, Process, Thread
    from emu.nt.scheduler import Scheduler

class KernelMemory(Protocol):
    """Mm's kernel-mode access: memory as ring-0 code sees it (emu.nt.mm_kernel)."""

    cpu: Cpu
    mem: PhysicalMemory

    def kernel_walk(self, va: int, access: str) -> int: ...
    def kernel_read(self, va: int, n: int) -> bytes: ...
    def kernel_write(self, va: int, data: bytes) -> None: ...
    def kernel_read_u64(self, va: int) -> int: ...
    def kernel_read_string(self, va: int, limit: int = 4096) -> bytes: ...
    def write_user(self, space: AddressSpace, va: int, data: bytes) -> None: ...
    def page_in_for_kernel(self, va: int | None, access: str) -> bool: ...
    def load_cr3(self, cr3: int) -> None: ...   # Ke's: the space's PCID (ke_dispatcher)


class EventSource(Protocol):
    """The machine's event bus and the clock its events are stamped with."""

    events: EventBus

    @property
    def clock(self) -> int: ...


class Budget(Protocol):
    """The Ke dispatcher's budget: how many instructions the CPU runs before the executive
    looks again (emu.nt.ke_dispatcher)."""

    count_always: bool
    max_insns: int | None

    @property
    def clock(self) -> int: ...
    def set_budget(self, n: int | None) -> None: ...
    def rearm_budget(self) -> None: ...


class TrapPath(Protocol):
    """Ke's way into ring-0 code and out of it: the IRQL, the kernel routine runner, and
    the bug check records (emu.nt.ke_call, emu.nt.ke_trap)."""

    current_thread: Thread | None
    bugcheck: BugCheck | None

    @property
    def irql(self) -> int: ...
    @irql.setter
    def irql(self, level: int) -> None: ...
    def call_kernel(self, routine: int, *args: int, space: AddressSpace | None = None,
                    stack_top: int = ...) -> KernelCallResult: ...
    def run_at_irql(self, irql: int, routine: int, args: tuple[int, ...],
                    thread: Thread | None, stack_top: int | None = None) -> KernelCallResult: ...
    def describe_instruction(self, rip: int, cpl: int = 0) -> str: ...
    def returned_at_bad_irql(self, routine: int, irql: int, code: int,
                             params: tuple[int, int, int, int], what: str,
                             expected: int) -> BugCheck: ...
    def bugcheck_for(self, exc: CpuException, insn: str) -> BugCheck: ...


class InterruptController(KernelMemory, TrapPath, EventSource, Protocol):
    """What Ke's interrupt and DPC delivery uses (emu.nt.kintr): memory, the IRQL, the
    connected interrupts, the lines up and the DPC queue."""

    interrupts: dict[int, Any]        # vector -> emu.nt.kintr.Interrupt
    pending_interrupts: set[int]
    dpc_queue: list[int | tuple[int, tuple[int, ...]]]

    def device_deadline(self) -> int | None: ...
    def deliver_interrupts(self, thread: Thread | None, *, here: bool = False) -> None: ...


class LoadedModules(Protocol):
    """The loaded-module list (Windows' PsLoadedModuleList): the drivers, in load order."""

    drivers: list[Any]                # emu.nt.drivers.Driver


class VirtualMemory(KernelMemory, Protocol):
    """Mm as a whole: kernel-mode access and the memory manager's own state (VADs,
    commit, the PFN database; emu.nt.mm.virtual)."""

    mm: MemoryManager


class SystemService(VirtualMemory, Protocol):
    """What a system service needs to reach its caller (emu.nt.syscalls' probes,
    svc_memory): Mm and the calling process."""

    @property
    def current(self) -> Process | None: ...


class ConsoleService(SystemService, Protocol):
    """A service that writes to its caller's console (NtWriteConsole, NtWriteFile on the
    console)."""

    def console_write(self, proc: Process, data: bytes) -> None: ...


class SharedData(VirtualMemory, EventSource, Protocol):
    """KUSER_SHARED_DATA's writer (emu.nt.kuser): Mm for its frame, the clock for its
    times."""


class ExSupport(KernelMemory, TrapPath, Protocol):
    """Ex and Rtl (emu.nt.ntos.ex, ntos.rtl, the pool and DbgPrint exports): kernel
    memory, the IRQL and bug check that guard it, the pools, the debug output."""

    pools: Pools

    def debug_print(self, data: bytes) -> None: ...


class PsObjects(KernelMemory, Protocol):
    """Ps's objects (emu.nt.eprocess): EPROCESS/ETHREAD in pool, signalled as their
    processes exit."""

    pools: Pools
    exit_observers: list[Callable[[Process], None]]


class ProcessorControl(PsObjects, VirtualMemory, Protocol):
    """The processor's control region (emu.nt.kpcr): the KPCR page, mapped with the first
    ring-0 routine, and the thread its KPRCB names (an ETHREAD Ps makes)."""

    pcr_frame: int
    current_thread: Thread | None


class PsServices(PsObjects, ExSupport, Protocol):
    """The Ps exports (emu.nt.ntos.ps: PsGetCurrentProcessId, PsLookupProcessByProcessId,
    ObDereferenceObject...): Ps's objects, the processes, the current one."""

    processes: list[Process]

    @property
    def current(self) -> Process | None: ...


class CurrentProcessor(PsServices, ProcessorControl, Protocol):
    """The exports that read the KPCR (emu.nt.ntos.current): the KPCR, and Rtl's checked
    writes for what they return through a pointer (as the other Ps exports)."""


class ObjectManager(TrapPath, Protocol):
    """Ob as its consistency check sees it (emu.nt.ob_check): the namespace, the
    processes' handle tables, and whether a service is running."""

    objects: ObjectDirectory
    processes: list[Process]
    in_system_service: bool


class IoSystem(PsServices, VirtualMemory, LoadedModules, Protocol):
    """The I/O manager and its exports (emu.nt.io, ntos.io, ntos.mm, the Io exports):
    Ps's objects for IRPs' threads, Mm for buffers and MDLs, the drivers, the I/O
    manager itself, the scheduler a synchronous request waits on, connected interrupts."""

    io: Any                           # emu.nt.io.IoManager (io takes this view: no import)
    scheduler: Scheduler
    interrupts: dict[int, Any]        # vector -> emu.nt.kintr.Interrupt


class DriverLoader(IoSystem, EventSource, Protocol):
    """Io's driver loader (emu.nt.drivers): the I/O manager, the images waiting for
    DriverEntry at boot, and the event bus that announces each load."""

    pending_drivers: list[Any]        # emu.nt.drivers.DriverImage


class CrashDumpSource(IoSystem, EventSource, Protocol):
    """What a crash dump records (emu.nt.dump): processes and threads, Mm's frames, the
    drivers, the bug check, the clock."""


class ExceptionDispatch(VirtualMemory, TrapPath, LoadedModules, Protocol):
    """Kernel-mode SEH (emu.nt.seh, RtlDispatchException/RtlUnwindEx): memory, the
    trap path, the drivers' unwind data, whether a service is running, and how many ISRs
    and DPCs are."""

    in_system_service: bool
    interrupt_routines: int


class UserExceptionDispatch(SystemService, TrapPath, Protocol):
    """KiUserExceptionDispatcher's side in the kernel (emu.nt.dispatch): the user
    context saved and restored across a ring-3 exception."""

    def load_user_context(self, thread: Thread, regs: dict[str, int]) -> None: ...
    def capture_user_context(self) -> dict[str, int]: ...


class KeServices(InterruptController, PsServices, SharedData, Protocol):
    """The Ke exports (emu.nt.ntos.ke): IRQL, spin locks, DPCs and interrupts, dispatcher
    objects and waits, attaching to a process, time; the scheduler their waits use."""

    scheduler: Scheduler


class ProcessManager(IoSystem, EventSource, Protocol):
    """Ps (emu.nt.ps): creating and ending processes and threads, their stacks, client
    ids, handle tables, and teardown deferred while the CPU runs."""

    objects: ObjectDirectory

    def new_client_id(self) -> int: ...
    def allocate_kernel_stack(self) -> tuple[int, int]: ...
    def free_kernel_stack(self, slot: int) -> None: ...
    def release_address_space(self, proc: Process) -> None: ...
    def defer(self, work: Callable[[], None]) -> None: ...
    def object_closed(self, obj: object) -> None: ...


class ObjectServices(ProcessManager, ConsoleService, Protocol):
    """The object system services (emu.nt.svc_objects: NtClose, NtCreateFile...,
    NtCreateProcess, NtSetEvent...): Ps, Ob's handles, Io's files, the guest file
    system."""

    fs: GuestFileSystem

    def create_process(self, image: Any, args: list[str],
                       parent: Process | None = None) -> Process: ...
    def terminate(self, proc: Process, status: int,
                  exception: ExceptionInfo | None = None) -> None: ...


class Kernel(KeServices, ObjectServices, DriverLoader, CrashDumpSource, ExceptionDispatch,
             UserExceptionDispatch, ObjectManager, CurrentProcessor, Budget, Protocol):
    """The whole executive as its parts see it: every view above, and what only the
    executive's own parts (the Ke/Mm mixins of emu.nt.kernel) and its outside users (the
    debugger, the tour) touch. A module of emu/nt takes the narrowest view that covers
    what it uses (tests/nt/test_kernel_views.py checks it), never this one unless it says why."""

    console: Callable[[Process | None, bytes], None] | None
    debugger: Any                     # emu.debugger.session.Session while one is attached
    debug_output: bytearray
    running: bool
    interrupted: bool
    counted_everything: bool
    shared_data_frame: int
    pcr_frame: int

    def interrupt(self) -> None: ...
