"""Processes: a private address space, an image, and what became of it."""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field

from emu.nt.loader import Image
from emu.nt.mm.address_space import AddressSpace
from emu.nt.ob import DispatcherObject, HandleTable, ObjectType


class ProcessState(enum.Enum):
    READY = "ready"              # created, no thread has run yet
    RUNNING = "running"          # has live threads
    TERMINATED = "terminated"


class ThreadState(enum.Enum):
    READY = "ready"              # waiting for the CPU
    RUNNING = "running"          # on the CPU
    WAITING = "waiting"          # blocked on an object or a timer
    TERMINATED = "terminated"


@dataclass(frozen=True)
class ExceptionInfo:
    """The EXCEPTION_RECORD of the exception that killed a process (winnt.h)."""

    code: int                    # NTSTATUS, e.g. 0xC0000005
    rip: int                     # ExceptionAddress: the faulting instruction
    instruction: str             # its disassembly
    access: str | None = None    # "read", "write" or "execute" for access violations
    address: int | None = None   # the inaccessible address, for access violations
    params: tuple[int, ...] = ()  # ExceptionInformation[]
    detail: str = ""             # what the hardware found (the page walk's reason)

    @property
    def name(self) -> str:
        from emu.nt.status import status_name
        return status_name(self.code)


@dataclass(eq=False)
class Process(DispatcherObject):
    """An executive process object (EPROCESS), reduced to what this machine uses.
    Signalled (for waiters) once it has terminated."""

    pid: int
    name: str
    image: Image
    args: list[str]
    space: AddressSpace
    parent_pid: int | None = None
    state: ProcessState = ProcessState.READY
    exit_status: int | None = None
    exception: ExceptionInfo | None = None
    output: bytearray = field(default_factory=bytearray)
    stack_low: int = 0           # lowest committed stack address; the guard page is below it
    stack_high: int = 0
    entry_rsp: int = 0
    instructions: int = 0        # instructions run by this process's threads (when counting)
    highest_address: int = 0x0000_7FFF_FFFE_FFFF   # MmHighestUserAddress (0x7FFFFFFF: 32-bit)
    vads: object = None          # the process's VAD tree (emu.nt.mm.vad)
    threads: list[Thread] = field(default_factory=list)
    handles: HandleTable = field(default_factory=HandleTable)
    threads_created: int = 0
    bits: int = 64               # 32: a compatibility-mode (i386) process
    exception_dispatcher: int = 0  # user-mode KiUserExceptionDispatcher, 0 if none
    working_set: object = None   # its pages in RAM and paging counters (emu.nt.mm.paging)
    in_page_error: int = 0       # the cause of its last STATUS_IN_PAGE_ERROR

    object_type = ObjectType.PROCESS

    def __post_init__(self) -> None:
        DispatcherObject.__init__(self)

    @property
    def signalled(self) -> bool:
        return self.state is ProcessState.TERMINATED

    @property
    def live_threads(self) -> list[Thread]:
        return [t for t in self.threads if t.state is not ThreadState.TERMINATED]


@dataclass(eq=False)
class Wait:
    """Why a thread is blocked: an object (or none, for a sleep) and a deadline."""

    obj: DispatcherObject | None
    deadline: int | None         # on the machine's instruction clock; None = forever


@dataclass(eq=False)
class Thread(DispatcherObject):
    """An executive thread object (ETHREAD): the unit the scheduler runs.
    Signalled once it has terminated."""

    tid: int
    process: Process
    start_rip: int
    start_rsp: int
    start_arg: int = 0
    state: ThreadState = ThreadState.READY
    context: object = None       # Unicorn context saved when it left the CPU; None: not started
    resume_rax: int | None = None  # the result of the system call it blocked in
    kernel_stack_top: int = 0
    kernel_stack_slot: int = 0
    stack_low: int = 0
    stack_high: int = 0
    exit_status: int | None = None
    wait: Wait | None = None
    instructions: int = 0
    continue_context: dict | None = None   # registers NtContinue asked to resume with
    kernel_work: object = None   # a service's ring-0 part, run once the CPU has stopped
    apc: object = None           # I/O completion to run in this thread's context when it runs
    dispatching: int = 0         # exceptions delivered to user mode and not yet continued

    object_type = ObjectType.THREAD

    def __post_init__(self) -> None:
        DispatcherObject.__init__(self)

    @property
    def signalled(self) -> bool:
        return self.state is ThreadState.TERMINATED


AT_NULL, AT_PAGESZ, AT_ENTRY = 0, 6, 9       # auxiliary vector types (System V ABI)


def initial_stack(top: int, argv: list[bytes], entry: int, word: int = 8) -> tuple[int, bytes]:
    """The System V initial process stack (x86-64 psABI §3.4.1; i386 ABI with ``word`` 4)
    ending at ``top``: returns (rsp, the bytes from rsp up to top). At rsp: argc, argv[],
    NULL, an empty envp (NULL), the auxiliary vector; the argument strings above it; rsp
    16-byte aligned."""
    strings = b"".join(s + b"\0" for s in argv)
    str_base = (top - len(strings)) & ~0xF
    pointers, at = [], str_base
    for s in argv:
        pointers.append(at)
        at += len(s) + 1
    vector = [len(argv), *pointers, 0, 0,
              AT_PAGESZ, 4096, AT_ENTRY, entry, AT_NULL, 0]
    block = struct.pack(f"<{len(vector)}{'Q' if word == 8 else 'I'}", *vector)
    rsp = (str_base - len(block)) & ~0xF
    image = bytearray(top - rsp)
    image[0:len(block)] = block
    image[str_base - rsp:str_base - rsp + len(strings)] = strings
    return rsp, bytes(image)
