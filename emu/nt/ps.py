"""Process and thread creation and termination (the Ps* routines, reduced).

A process is an address space (its own PML4 sharing the kernel half), an image,
a handle table, and threads. A thread is a user stack, a kernel stack, and a
saved CPU context; it starts at ring 3 through the kernel's iretq trampoline.
Every process also gets one read-only executable page of system code, the
role ntdll plays on Windows: a thread whose start routine returns lands in
``RtlUserThreadExit`` there, which calls NtTerminateThread with the return value.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from emu.nt import layout
from emu.nt.events import Event
from emu.nt.loader import PF_W, PF_X, Image, highest_user_address
from emu.nt.mm import virtual
from emu.nt.mm.address_space import AddressSpace, Protection
from emu.nt.mm.pfn import OutOfFrames
from emu.nt.ob import ObjectType
from emu.nt.process import ExceptionInfo, Process, ProcessState, Thread, ThreadState, initial_stack
from emu.nt.status import NTSTATUS

if TYPE_CHECKING:
    from emu.nt.interfaces import ProcessManager

# RtlUserThreadExit: mov rsi, rax; mov rdi, -2 (NtCurrentThread); mov eax, NtTerminateThread;
# syscall; ud2 (never reached).
RTL_USER_THREAD_EXIT = bytes.fromhex("4889c6" "48c7c7feffffff" "b80a000000" "0f05" "0f0b")
# The same for 32-bit threads: mov ecx, eax; mov ebx, -2; mov eax, NtTerminateThread;
# int 0x2e; ud2.
RTL_USER_THREAD_EXIT_32 = bytes.fromhex("89c1" "bbfeffffff" "b80a000000" "cd2e" "0f0b")
STUB_32_OFFSET = 0x40
USER_STUB_PAGE = 0x7FFE_0000                       # system code mapped in each process
THREAD_STACK_COMMIT = 64 * 1024                    # committed (demand-zero) per new thread
MAX_THREADS_PER_PROCESS = 64
MAX_PROCESSES = 256
MIN_STACK_LEFT = 16 * 1024                          # stack left for main() after the arguments
_PROTECT = {(False, False): Protection.PAGE_READONLY, (True, False): Protection.PAGE_READWRITE,
            (False, True): Protection.PAGE_EXECUTE_READ,
            (True, True): Protection.PAGE_EXECUTE_READWRITE}


class LimitError(Exception):
    """A documented limit (processes, threads) was reached."""


def create_process(ex: ProcessManager, image: Image, args: list[str],
                   parent: Process | None = None) -> Process:
    """PspCreateProcess: a new address space with the image, a stack and a first thread."""
    if sum(p.state is not ProcessState.TERMINATED for p in ex.processes) >= MAX_PROCESSES:
        raise LimitError(f"too many processes (at most {MAX_PROCESSES} at once)")
    pid = ex.new_client_id()
    space = ex.mm.create_address_space(owner=pid)
    proc = Process(pid, image.name, image, args, space,
                   parent_pid=parent.pid if parent else None, bits=image.bits,
                   highest_address=highest_user_address(image.bits))
    try:
        _map_image(ex, space, image)
        _map_main_stack(ex, proc)
        ex.mm.map_new(space, USER_STUB_PAGE, Protection.PAGE_EXECUTE_READ,
                      data=RTL_USER_THREAD_EXIT.ljust(STUB_32_OFFSET, b"\xcc")
                      + RTL_USER_THREAD_EXIT_32)
        virtual.init_process_memory(ex, proc)
        create_thread(ex, proc, image.entry, proc.entry_rsp, stack=(proc.stack_low,
                                                                      proc.stack_high))
    except (OutOfFrames, ValueError):
        space.release_user_half()
        virtual.release_process_memory(ex, proc)
        raise
    ex.processes.append(proc)
    ex.objects.created(proc)                # an object from birth: it keeps itself alive
    ex.events.emit(Event.PROCESS_CREATE, process=proc)
    return proc


def _map_image(ex: ProcessManager, space: AddressSpace, image: Image) -> None:
    for va, contents in sorted(image.pages.items()):
        flags = image.page_flags[va]
        protect = _PROTECT[(bool(flags & PF_W), bool(flags & PF_X))]
        ex.mm.map_new(space, va, protect, data=bytes(contents))


def _map_main_stack(ex: ProcessManager, proc: Process) -> None:
    """Commit the main thread's stack and write argc/argv/envp/auxv (x86-64 psABI §3.4.1)."""
    top = layout.USER_STACK_TOP if proc.bits == 64 else layout.USER_STACK_TOP_32
    size = layout.USER_STACK_SIZE
    proc.stack_low, proc.stack_high = top - size, top
    frames = {va: ex.mm.map_new(proc.space, va, Protection.PAGE_READWRITE)
              for va in range(top - size, top, layout.PAGE_SIZE)}
    argv = [proc.image.path.encode(), *(a.encode() for a in proc.args)]
    rsp, image = initial_stack(top, argv, proc.image.entry, word=proc.bits // 8)
    if rsp < top - size + MIN_STACK_LEFT:
        raise ValueError(f"arguments too long: {len(image)} bytes, the initial stack "
                         f"takes at most {size - MIN_STACK_LEFT}")
    for va in range(rsp & ~0xFFF, top, layout.PAGE_SIZE):
        start = max(va, rsp)
        ex.mem.write(frames[va] * layout.PAGE_SIZE + (start & 0xFFF),
                     image[start - rsp:va + layout.PAGE_SIZE - rsp])
    proc.entry_rsp = rsp


def create_thread(ex: ProcessManager, proc: Process, start: int, rsp: int | None = None,
                  arg: int = 0, stack: tuple[int, int] | None = None) -> Thread:
    """PspCreateThread: a thread of ``proc`` that will enter ring 3 at ``start``.

    Without ``rsp``, a new user stack is committed and ``start(arg)`` is called as a
    function whose return address is RtlUserThreadExit."""
    if len(proc.live_threads) >= MAX_THREADS_PER_PROCESS:
        raise LimitError(f"too many threads (at most {MAX_THREADS_PER_PROCESS} per process)")
    if rsp is None:
        stack = _new_thread_stack(ex, proc)
        if proc.bits == 64:                  # as if called: the return address on top
            rsp = stack[1] - 8
            ex.write_user(proc.space, rsp, USER_STUB_PAGE.to_bytes(8, "little"))
        else:                                # cdecl: return address, then the argument
            rsp = stack[1] - 16
            ex.write_user(proc.space, rsp, struct.pack("<II", USER_STUB_PAGE + STUB_32_OFFSET,
                                                       arg & 0xFFFF_FFFF))
    slot, kstack_top = ex.allocate_kernel_stack()
    thread = Thread(ex.new_client_id(), proc, start, rsp, arg, kernel_stack_top=kstack_top,
                    kernel_stack_slot=slot, stack_low=stack[0], stack_high=stack[1])
    proc.threads.append(thread)
    proc.threads_created += 1
    ex.objects.created(thread)              # alive while it runs, then while a handle names it
    ex.scheduler.make_ready(thread)
    return thread


def _new_thread_stack(ex: ProcessManager, proc: Process) -> tuple[int, int]:
    """A thread's stack from the process's VADs (reserved top-down, committed demand-zero
    with a guard page, as RtlCreateUserStack does); its top page made valid for the start."""
    made = virtual.create_thread_stack(ex, proc, THREAD_STACK_COMMIT)
    if made.status == NTSTATUS.STATUS_COMMITMENT_LIMIT:
        raise virtual.CommitLimitExceeded("no commit left for a thread stack")
    if made.status != NTSTATUS.STATUS_SUCCESS:
        raise LimitError("no room for another thread stack")
    top = made.base + made.size
    virtual.fault_in_user_range(ex, proc, top - 16, 16, "write")
    return made.base, top


def terminate_thread(ex: ProcessManager, thread: Thread, status: int) -> None:
    """PspTerminateThread: the thread ends; the process ends with its last thread."""
    if thread.state is ThreadState.TERMINATED:
        return
    proc = thread.process
    last = len(proc.live_threads) == 1
    # The last thread's kernel stack stays for the process's handle rundown to run on.
    _end_thread(ex, thread, status, free_stack=not last)
    if last:
        terminate_process(ex, proc, status, last_thread=thread)
    elif thread.stack_high != proc.stack_high:
        top = thread.stack_high
        ex.defer(lambda: virtual.release_thread_stack(ex, proc, top))


def _end_thread(ex: ProcessManager, thread: Thread, status: int, *,
                free_stack: bool = True) -> None:
    """The thread leaves every queue for good; its kernel stack goes (unless the caller
    frees it later), its waiters wake."""
    ex.scheduler.remove(thread)
    thread.state = ThreadState.TERMINATED
    thread.exit_status = status
    if free_stack:
        ex.free_kernel_stack(thread.kernel_stack_slot)
    ex.scheduler.signal(thread)
    ex.object_closed(thread)


def terminate_process(ex: ProcessManager, proc: Process, status: int,
                      exception: ExceptionInfo | None = None,
                      last_thread: Thread | None = None) -> None:
    """PspTerminateProcess: every thread ends, every handle closes (an open device's last
    handle runs its driver's CLEANUP and CLOSE, in this process, on its exiting thread's
    kernel stack), then the kernel stacks and the user half are freed (once the CPU has
    left them), and waiters on the process wake."""
    if proc.state is ProcessState.TERMINATED:
        return
    proc.exit_status = status
    proc.exception = exception
    for observe in ex.exit_observers:       # e.g. the address-space map: last look at it
        observe(proc)
    ex.events.emit(Event.PROCESS_EXIT, process=proc)
    proc.state = ProcessState.TERMINATED
    # The thread that runs the handle rundown (ObKillProcess runs in PspExitThread of the
    # process's last thread, on that thread's kernel stack, in its process): the caller if
    # it ends its own process, else the process's first thread (the one NtTerminateProcess
    # from outside would have made exit last here: deterministic either way).
    ending = list(proc.live_threads)
    if last_thread is not None:                 # it ended just now (terminate_thread)
        ending.append(last_thread)
    current = ex.current_thread
    runner = current if current in ending else (ending[0] if ending else None)
    for thread in ending:
        if thread is not last_thread:
            _end_thread(ex, thread, status, free_stack=False)
    # ObKillProcess: every handle closes, in handle order; the last handle to an open
    # device sends its driver IRP_MJ_CLEANUP then IRP_MJ_CLOSE, and the FILE_OBJECT goes.
    rundown = []
    for obj in proc.handles.close_all():
        ex.object_closed(obj)
        if obj.object_type is ObjectType.DEVICE and obj.handle_count == 0:
            rundown.append(obj)

    def finish() -> None:
        """Driver code runs (if any open's last handle went) before the stacks and the
        user half go: the dying thread's kernel stack, the process's address space."""
        if runner is not None:
            for file in rundown:
                with ex.io.attached(runner):
                    ex.io.close(runner, file)
        for thread in ending:
            ex.free_kernel_stack(thread.kernel_stack_slot)
        ex.release_address_space(proc)
    ex.scheduler.signal(proc)
    ex.object_closed(proc)
    ex.defer(finish)
