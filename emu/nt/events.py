"""What happens in the machine, told to whoever listens: the debugger's catchpoints, the
tour's timeline.

The executive calls ``emit(Event.X, **details)`` at each point below; every observer gets
``observer(event, details)`` with ``details["clock"]`` (the machine's time in instructions)
added. With nobody listening an emit costs one list test. An observer may read the machine
(registers, memory, processes) but must not change what the guest does: the debugger's
pause happens inside an observer, and the run goes on the same way after it.

Each event, and the details it carries:

* ``DRIVER_LOAD``: a driver is mapped, its DriverEntry is about to run (``driver``).
* ``PROCESS_CREATE``: a process exists, its first thread ready (``process``).
* ``PROCESS_EXIT``: a process ends, before its address space goes (``process``; its
  ``exit_status`` and ``exception`` are set).
* ``THREAD_DISPATCH``: a thread is put on the CPU for a turn (``thread``).
* ``SYSCALL``: a system service is entered from ring 3 (``thread``, ``number``, ``args``);
  the CPU is on the ``syscall`` (or ``int 0x2e``) instruction.
* ``SYSCALL_RETURN``: the service is done (``thread``, ``number``, ``result``: the value
  for RAX, or None when the thread blocked, yielded or ended).
* ``EXCEPTION``: the CPU raised an exception (``exc``: emu.hw.exceptions.CpuException,
  ``thread``: the thread on the CPU or None in a kernel routine run outside any thread);
  emitted before the executive handles it (a page fault may then be resolved).
* ``PAGE_FAULT``: a ring-3 page fault was handled by MmAccessFault (``exc``, ``thread``,
  ``resolution``: emu.nt.mm.virtual.FaultResolution).
* ``INTERRUPT``: a device interrupts (``vector``, ``isr``, ``thread``: the interrupted
  thread, None when the CPU was idle); its ISR runs next, at DIRQL.
* ``DPC``: a deferred procedure call runs next at DISPATCH_LEVEL (``routine``, ``thread``).
* ``KERNEL_CALL_DONE``: an ISR or DPC returned (``routine``, ``thread``).
* ``CR3_LOAD``: CR3 changed: another address space is current (``old``, ``new``).
* ``BUGCHECK``: the system stops (``bugcheck``: emu.nt.bugcheck.BugCheck).

Quantum ends made inside a run (emu.nt.ke_dispatcher ``_arm_ring``: a thread's turn ending
and the next one, or the same one, dispatched without the CPU stopping) are told after that
run, or before any hook of it runs Python code: their ``THREAD_DISPATCH`` and ``CR3_LOAD``,
in order, with the clock of the moment each was made, while the machine is already further
on; their ``details["logged"]`` (emu.hw.native.SwitchLogged) says what the CPU held then:
the instructions completed, where the thread resumes (RIP, CS), and CR8 before and after.
A switch inside the SYSCALL hook (``_switch_at_syscall``) is told at once, from the hook
(its ``CR3_LOAD`` with ``logged`` too: RIP reads the SYSCALL's there). An observer that
reads the machine at those two events otherwise subscribes without ``logged`` (the
default); while one does, every dispatch is made with the CPU stopped at it.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any


class Event(enum.Enum):
    """The kinds of event the executive reports (see the module docstring)."""

    DRIVER_LOAD = "driver-load"
    PROCESS_CREATE = "process-create"
    PROCESS_EXIT = "process-exit"
    THREAD_DISPATCH = "thread-dispatch"
    SYSCALL = "syscall"
    SYSCALL_RETURN = "syscall-return"
    EXCEPTION = "exception"
    PAGE_FAULT = "page-fault"
    INTERRUPT = "interrupt"
    DPC = "dpc"
    KERNEL_CALL_DONE = "kernel-call-done"
    CR3_LOAD = "cr3-load"
    BUGCHECK = "bugcheck"


Observer = Callable[[Event, dict[str, Any]], None]


class EventBus:
    """The executive's list of observers."""

    def __init__(self, clock: Callable[[], int]) -> None:
        self.observers: list[Observer] = []
        self._live: list[Observer] = []     # those that read the machine at a dispatch
        # The switch made in C being told (emu.hw.native.SwitchLogged), while it is.
        self.logged: Any = None
        self._clock = clock

    def emit(self, event: Event, **details: Any) -> None:
        """Tell every observer that ``event`` happened (nothing to do when none listens)."""
        if not self.observers:
            return
        details["clock"] = self._clock()
        if self.logged is not None:
            details["logged"] = self.logged
        for observer in list(self.observers):
            observer(event, details)

    def subscribe(self, observer: Observer, *, logged: bool = False) -> None:
        """Start telling ``observer``; ``logged``: it may hear of a THREAD_DISPATCH or a
        CR3_LOAD after the moment it names (see the module docstring)."""
        self.observers.append(observer)
        if not logged:
            self._live.append(observer)

    def unsubscribe(self, observer: Observer) -> None:
        """Stop telling ``observer`` (no error if it was not listening)."""
        if observer in self.observers:
            self.observers.remove(observer)
        if observer in self._live:
            self._live.remove(observer)

    @property
    def takes_logged_dispatches(self) -> bool:
        """Whether every observer may hear of dispatches after the fact."""
        return not self._live
