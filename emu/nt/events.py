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
* ``EXCEPTION``: the CPU raised an exception (``exc``: emu.hw.cpu.CpuException,
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
        self._clock = clock

    def emit(self, event: Event, **details: Any) -> None:
        """Tell every observer that ``event`` happened (nothing to do when none listens)."""
        if not self.observers:
            return
        details["clock"] = self._clock()
        for observer in list(self.observers):
            observer(event, details)

    def subscribe(self, observer: Observer) -> None:
        """Start telling ``observer``."""
        self.observers.append(observer)

    def unsubscribe(self, observer: Observer) -> None:
        """Stop telling ``observer`` (no error if it was not listening)."""
        if observer in self.observers:
            self.observers.remove(observer)
