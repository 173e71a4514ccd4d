"""The dispatcher's scheduling half: who runs next, waits, timers, the machine's clock.

Round robin over ready threads, one quantum of guest instructions each
(Windows Internals, ch. 4 "Thread scheduling", without priorities). Time on
this machine is the number of instructions executed, so sleeps, timeouts and
preemption land at the same instruction in every run: the interleaving, the
output and the report are deterministic.

Counting instructions costs speed (about 14x), so the CPU counts only when
the schedule needs it: two or more threads ready, or a timer pending. A lone
runnable thread runs at full speed.
"""

from __future__ import annotations

from collections import deque

from unicorn.x86_const import UC_X86_REG_RAX

from emu.nt.ob import DispatcherObject
from emu.nt.process import Thread, ThreadState, Wait
from emu.nt.status import NTSTATUS

DEFAULT_QUANTUM = 100_000        # instructions per turn


class Scheduler:
    """Ready queue, waiting threads, and the instruction clock."""

    def __init__(self, quantum: int = DEFAULT_QUANTUM) -> None:
        if quantum <= 0:
            raise ValueError("the quantum must be a positive number of instructions")
        self.quantum = quantum
        self.ready: deque[Thread] = deque()
        self.waiting: list[Thread] = []
        self.idle_skipped = 0         # instructions of clock jumped over while all waited
        self.switches = 0

    # -- the clock -------------------------------------------------------------------------

    def clock(self, counted: int) -> int:
        """The machine's time: instructions counted so far plus idle time skipped."""
        return counted + self.idle_skipped

    def needs_counting(self) -> bool:
        """Must the CPU count instructions for the next turn (preemption or a timer)?"""
        return bool(self.ready) or any(t.wait.deadline is not None for t in self.waiting)

    def next_deadline(self) -> int | None:
        deadlines = [t.wait.deadline for t in self.waiting if t.wait.deadline is not None]
        return min(deadlines) if deadlines else None

    # -- queue -----------------------------------------------------------------------------

    def make_ready(self, thread: Thread) -> None:
        """KiReadyThread: the thread waits for the CPU at the back of the queue."""
        thread.state = ThreadState.READY
        self.ready.append(thread)

    def next_thread(self, now: int) -> Thread | None:
        """The thread to run next; if every thread waits on a timer, jump the clock to the
        earliest deadline. None: nothing can ever run (all done, or all blocked forever)."""
        self.expire_timers(now)
        if not self.ready:
            deadline = self.next_deadline()
            if deadline is None:
                return None
            self.idle_skipped += max(0, deadline - now)
            self.expire_timers(deadline)
        thread = self.ready.popleft()
        thread.state = ThreadState.RUNNING
        self.switches += 1
        return thread

    def remove(self, thread: Thread) -> None:
        """Take a terminating thread off every queue."""
        if thread in self.ready:
            self.ready.remove(thread)
        self._stop_waiting(thread)

    # -- waits -----------------------------------------------------------------------------

    def block(self, thread: Thread, obj: DispatcherObject | None, deadline: int | None) -> None:
        """KeWaitForSingleObject's blocking half: the thread sleeps until ``obj`` is signalled
        or the clock passes ``deadline``."""
        thread.state = ThreadState.WAITING
        thread.wait = Wait(obj, deadline)
        self.waiting.append(thread)
        if obj is not None:
            obj.waiters.append(thread)

    def signal(self, obj: DispatcherObject) -> None:
        """The object became signalled: satisfy waiters in order while it stays signalled."""
        for thread in list(obj.waiters):
            if not obj.signalled:
                break
            obj.acquire()
            self._wake(thread, NTSTATUS.STATUS_SUCCESS)

    def expire_timers(self, now: int) -> None:
        for thread in list(self.waiting):
            if thread.wait.deadline is not None and thread.wait.deadline <= now:
                status = NTSTATUS.STATUS_SUCCESS if thread.wait.obj is None \
                    else NTSTATUS.STATUS_TIMEOUT     # a sleep ends in success
                self._wake(thread, status)

    def _wake(self, thread: Thread, status: int) -> None:
        self._stop_waiting(thread)
        thread.resume_rax = status
        if thread.context is not None:
            # Its saved registers show what it resumes with, before it runs again.
            thread.context.reg_write(UC_X86_REG_RAX, status)
        self.make_ready(thread)

    def _stop_waiting(self, thread: Thread) -> None:
        if thread in self.waiting:
            self.waiting.remove(thread)
        if thread.wait is not None and thread.wait.obj is not None and \
                thread in thread.wait.obj.waiters:
            thread.wait.obj.waiters.remove(thread)
        thread.wait = None
