"""Ke's dispatcher: which thread runs, for how long, and how the CPU is handed to it.

KiSwapThread / SwapContext, reduced: ``run`` starts the drivers, then gives the CPU to the
scheduler's next thread for one turn (``_run_thread``) until every process has ended. A
turn has a budget of instructions (the quantum, or less when a timer or a device comes
sooner; None: full speed, nothing counted), loads the thread's context (or enters ring 3
through KiStartUserThread's ``iretq``) and handles each reason the CPU stops: an exception
(emu.nt.ke_trap), the budget's end (interrupts delivered, the thread preempted), a service
that goes on in a driver, NtContinue. With nothing ready the idle loop lets the clock run
to the next device interrupt. An attached debugger pauses inside ``_run_cpu``.

A part of emu.nt.kernel.Executive (a mixin): it reaches the other parts through ``self``
(emu.nt.interfaces.Kernel says what they offer).
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Iterator
from typing import TYPE_CHECKING

from emu.hw.cpu import CR3_NOFLUSH, RunResult, StopReason
from emu.hw.descriptors import Selector
from emu.hw.mmu import CR4
from emu.hw.native import RING_THREADS, SwitchLogged
from emu.nt import drivers, kuser, layout
from emu.nt.bugcheck import BugCheck
from emu.nt.events import Event
from emu.nt.kedefs import DEADLOCK, INSTRUCTION_LIMIT, INTERRUPTED, MachineStop
from emu.nt.layout import TRAMPOLINE
from emu.nt.process import ProcessState, ThreadState

if TYPE_CHECKING:
    from emu.nt.interfaces import Kernel as _Executive  # the other parts, via self
    from emu.nt.process import Thread
else:
    _Executive = object


_PCIDE = int(CR4.PCIDE)
USER_RFLAGS = 0x202                              # IF set, reserved bit 1 set
USER_RFLAGS_MASK = 0xDD5                         # CF PF AF ZF SF TF DF OF: what user code may set
USER_GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "r8", "r9", "r10", "r11", "r12",
             "r13", "r14", "r15")
_USER_ENTRY_REGISTERS = (*USER_GPRS, "rsp", "rip")            # load_user_context, one call
_USER_CONTEXT_REGISTERS = (*USER_GPRS, "rsp", "rip", "rflags")  # capture_user_context
_CS_RIP_CR8 = ("cs", "rip", "cr8")


class KeDispatcher(_Executive):
    """The dispatcher's part of the executive: turns, budgets, context switches, the idle
    loop and the delivery of device interrupts between turns."""

    # A lone thread's quantum end renewed inside the run, at the block entry where its
    # budget ends (``_arm_renewal``: native.c ``renew_quantum``), instead of through a
    # stopped run and ``_quantum_renewed``; False: always through the stop (the reference
    # tests compare with). What either way gives is the same.
    quantum_end_in_c = True
    _renewals_seen = 0                   # NativeHooks.renewals when last taken into account
    _switched_at: int | None = None      # the count of a switch C made, while taken in
    _ring: tuple = ()                    # the threads of the switches armed (_arm_ring)
    _ring_next = 0                       # ... and the index of the next one to run

    @property
    def clock(self) -> int:
        """The machine's time in instructions (see emu.nt.scheduler)."""
        at = self._switched_at            # a switch C made, being taken in: its moment
        return self.scheduler.clock(self.cpu.instructions if at is None else at)

    def run(self) -> None:
        """Start the drivers, then run threads until every process has ended; raises
        MachineStop or BugCheck."""
        if self.count_always and self.pending_drivers:
            # Whatever asks for counting (--max-insns, --trace, --events, the debugger)
            # counts from the first instruction, DriverEntry's included, as the debugger
            # always has: --max-insns N stops at the same instruction under `emu run` and
            # `emu debug`, and the clock a driver reads moves the same way under both.
            self.set_budget(self._kernel_budget())
        # Where a quantum renewed in C writes the times (the frame never moves), and who
        # takes in the switches made in C.
        self.cpu.native.set_shared_times(*kuser.renewal_layout(self, self.shared_data_frame))
        self.cpu.native.on_switches = self._switches_made
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

    def _budget(self, queued: int | None = None) -> int | None:
        """Instructions for the next turn, or None to run at full speed (nothing to count);
        ``queued``: as if the ready queue held that many threads (default: as it is)."""
        device = self.device_deadline()
        scheduler = self.scheduler
        needed = scheduler.needs_counting() if queued is None else \
            queued > 0 or scheduler.next_deadline() is not None
        counting = self.count_always or needed or device is not None
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
        """One turn of ``thread`` on the CPU: until it blocks, yields, ends, or is preempted.
        (A turn that ends in a system call may hand the CPU to the next thread without
        stopping it, ``_switch_at_syscall``: the turns after it end here too.)"""
        self._begin_turn(thread, self._budget())
        try:
            # _bug_checks_recorded, inline: a context manager's generator costs a switch
            # more than the rest of this frame.
            result = self._switch_to(thread)
            while not self._turn_over(self.current_thread, result):
                result = self._run_cpu(turn=True)
        except BugCheck as bc:
            if bc is not self.bugcheck:
                self._fill_bugcheck(bc)
            raise
        finally:
            self._end_turn()

    def _begin_turn(self, thread: Thread, budget: int | None) -> None:
        """``thread`` is the current thread, with ``budget`` instructions (None: full speed);
        MachineStop(INSTRUCTION_LIMIT) when --max-insns leaves it none."""
        thread.process.state = ProcessState.RUNNING
        self.current_thread = thread
        if budget is not None and budget <= 0:
            raise MachineStop(INSTRUCTION_LIMIT)
        self.counted_everything &= budget is not None
        self._full_speed = budget is None
        self.set_budget(budget)
        self._turn_start = self.cpu.instructions
        self._reschedule = False

    def _end_turn(self) -> None:
        """The current thread's turn is over: its instructions go to it and its process."""
        thread = self.current_thread
        spent = self.cpu.instructions - self._turn_start
        thread.instructions += spent
        thread.process.instructions += spent
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

    def _run_cpu(self, begin: int | None = None, *, turn: bool = False) -> RunResult:
        """Run the CPU from ``begin`` (default RIP) until it stops for the executive: an
        exception, the budget's end, or a stop it asked for. Stops a debugger made (a step, a
        breakpoint, Ctrl-C in ``emu debug``) pause here and the run goes on after them.
        ``turn``: a thread's turn (not a kernel call's routine), whose quantum ends may be
        renewed inside the run (``_arm_renewal``)."""
        while True:
            if self.debugger is not None:
                if begin is not None:                       # the pause shows where it starts
                    self.cpu.set_reg("rip", begin)
                    begin = None
                self.debugger.before_run()                  # may pause: the shell runs here
            self.running = True
            armed = turn and self._arm_renewal()
            try:
                result = self.cpu.run(begin)
            finally:
                self.running = False
                if armed:
                    self._take_renewals()
                while self._deferred:
                    self._deferred.pop(0)()
            if result.exception is not None and (self.events.observers or self.debugger):
                self.cpu.settle(result.exception)     # someone may keep it: exact CR2 now
            if self.debugger is None or not self._stopped_for_debugger(result):
                return result
            begin = None
            self.rearm_budget()

    def _arm_renewal(self) -> bool:
        """Before a run of the current thread's turn: when every condition of
        ``_quantum_renewed`` holds now, let the run renew the quantum itself at the block
        entry where the budget ends (NativeHooks.arm_renewal), with the budget that
        ``_budget`` would give then (the quantum, or what --max-insns leaves) and
        KUSER_SHARED_DATA's times written as ``kuser.update_shared_data`` writes them; with
        other threads ready, the preempted switch instead (``_arm_ring``). Only Python
        changes what those conditions read (the ready queue, timers, devices, interrupts,
        a stop), and only from a hook inside a run, which disarms it at its entry
        (every Python hook on the engine: emu.hw.cpu ``_disarm_in_every_python_hook``; the
        walker, the page walk alone, changes none of them). True when armed."""
        if not self.quantum_end_in_c or not self.cpu.native.counting or \
                self._budget_end is None:
            return False        # a run at full speed (a page fault's resume...): no quantum
        thread = self.current_thread
        scheduler = self.scheduler
        debugger = self.debugger
        if (thread is None
                or thread.state is not ThreadState.RUNNING
                or thread.apc is not None or thread.resume_rax is not None
                or self.interrupted
                or self.pending_interrupts or self.dpc_queue or self._deferred
                or self.device_deadline() is not None
                or scheduler.next_deadline() is not None
                or not self.cpu.can_renew_quantum):
            return False
        # Someone who sees each dispatch (a debugger, an event log: for them each quantum
        # end is a turn of its own) is told of those made in C after the run, when each
        # of them takes that (``_switches_made``); a debugger's step or snapshot cuts the run.
        watched = debugger is not None or bool(self.events.observers)
        if watched and not self._watchers_take_dispatches_in_the_run():
            return False
        stop_at = None if debugger is None else debugger.stop_count()
        if not scheduler.ready and not self.count_always:
            return False
        if scheduler.ready or watched:
            return self._arm_ring(thread, stop_at)
        # _budget() then: counting because count_always (nothing else is ready or due),
        # the quantum, cut by --max-insns.
        self.cpu.native.arm_renewal(scheduler.quantum, self.max_insns, scheduler.idle_skipped,
                                    budget_end=self._budget_end)
        return True

    def _watchers_take_dispatches_in_the_run(self) -> bool:
        """Whether every observer of the executive's events and the debugger take a
        dispatch made inside a run (the switches and renewals made in C, told after the
        run; a switch inside the SYSCALL hook): emu.nt.events ``logged``, the debugger's
        ``takes_logged_dispatches``. The debugger's steps and snapshots cut the run's
        budget as ever."""
        debugger = self.debugger
        return self.events.takes_logged_dispatches and \
            (debugger is None or debugger.takes_logged_dispatches())

    def _arm_ring(self, thread: Thread, stop_at: int | None) -> bool:
        """The preempted switch made in C (NativeHooks.arm_ring): at each quantum end on a
        block boundary the thread on the CPU goes to the back of the ready queue and the
        head runs, as ``_turn_over``'s budget end, ``run``, ``_run_thread`` and
        ``_switch_to`` make it, when nothing else would happen between the turns (checked
        by ``_arm_renewal``, and here: every thread of the ring has a saved context and
        nothing to take first, an I/O completion or a status to resume with, as for
        ``_switch_at_syscall``). The budget of each turn is the quantum (cut by
        --max-insns: a ready queue is never empty while they take turns), the run cut at
        the count ``stop_at`` (a debugger's). C logs each switch; ``_switches_made`` takes
        them into the books. With nothing else ready, a ring of the one thread: its quantum
        ends are renewals in C, each booked as the turn of its own that someone watching
        each dispatch sees (its context is neither saved nor loaded: it may have none yet).
        True when armed."""
        cpu = self.cpu
        ring = (thread, *self.scheduler.ready)
        if len(ring) > RING_THREADS or not cpu.can_switch_in_c:
            return False
        for t in ring:
            if (t.context is None and len(ring) > 1) or t.apc is not None \
                    or t.resume_rax is not None or t.kernel_work is not None \
                    or t.continue_context is not None:
                return False
        pcids = cpu.cr4 & _PCIDE
        threads = []
        for t in ring:
            base = t.process.space.cr3
            # load_cr3's MOV: with a PCID of its own, bit 63 set (nothing flushed), else
            # PCID 0, flushed.
            pcid = self.mm.pcid_of(base) if pcids else 0
            threads.append((t.context, base, pcid, pcid == 0, t.kernel_stack_top))
        tss = self.mem.address + self._gdt_frame * layout.PAGE_SIZE + \
            (layout.KERNEL_TSS & 0xFFF) + 4
        self._ring, self._ring_next = ring, 1 % len(ring)
        cpu.native.arm_ring(threads, cpu.cr3, tss, self.scheduler.quantum, self.max_insns,
                            self.scheduler.idle_skipped, budget_end=self._budget_end,
                            stop_at=stop_at)
        return True

    def _switches_made(self, switches: list[SwitchLogged]) -> None:
        """The preempted switches C made (``_arm_ring``), each at the instruction count in
        ``switches``, taken into the books exactly as the turns' ends and beginnings through
        a stop keep them: the leaving thread's instructions and its place at the back of
        the queue, the next one taken from its head (``Scheduler.next_thread``: the
        switch counted), its turn's start and budget, the process running, the dispatch
        told to the observers (THREAD_DISPATCH, then CR3_LOAD if the space differs, as
        ``_switch_to`` tells them), the CPU's CR3. The clock reads each switch's moment
        meanwhile."""
        scheduler, cpu, ring = self.scheduler, self.cpu, self._ring
        quantum, limit = scheduler.quantum, self.max_insns
        events = self.events
        for logged in switches:
            at = self._switched_at = logged.count
            events.logged = logged
            try:
                leaving = self.current_thread
                scheduler.make_ready(leaving)                 # _turn_over: to the back
                spent = at - self._turn_start                 # _end_turn
                leaving.instructions += spent
                leaving.process.instructions += spent
                self.current_thread = None
                following = scheduler.next_thread(self.clock)     # run()
                if following is not ring[self._ring_next]:
                    raise RuntimeError("a switch made in C is out of step with the ready "
                                       f"queue: thread {following and following.tid}, not "
                                       f"{ring[self._ring_next].tid}")
                self._ring_next = (self._ring_next + 1) % len(ring)
                following.process.state = ProcessState.RUNNING      # _begin_turn
                self.current_thread = following
                self._full_speed = False
                self._budget_end = at + (quantum if limit is None else min(quantum, limit - at))
                self._turn_start = at
                self._reschedule = False
                if events.observers:                                # _switch_to: told,
                    events.emit(Event.THREAD_DISPATCH, thread=following)   # then CR3
                base = following.process.space.cr3                  # _switch_to
                if cpu.cr3 != base:
                    pcid = self.mm.pcid_of(base) if cpu.cr4 & _PCIDE else 0
                    cpu.cr3_loaded_in_c(base, pcid)
                cpu.runs += 1
            finally:
                self._switched_at = None
                events.logged = None

    def _take_renewals(self) -> None:
        """After an armed run: no renewal or switch outside it, the switches taken in
        (``_switches_made``), and what ``_quantum_renewed`` does besides the budget and the
        times made true for the renewals the run made: the budget's end (``set_budget``)
        is the count plus the budget left."""
        native = self.cpu.native
        native.disarm()
        made = native.renewals
        if made != self._renewals_seen:
            self._renewals_seen = made
            self._budget_end = native.budget_end

    def _stopped_for_debugger(self, result: RunResult) -> bool:
        """Whether the CPU stopped only because the debugger wanted it to."""
        if result.reason is StopReason.BUDGET:
            return self._budget_end is not None and self.cpu.instructions < self._budget_end
        return result.reason is StopReason.REQUESTED and not self.cpu.stop_requested and \
            not self.interrupted and self.debugger.stop_pending

    def _switch_to(self, thread: Thread) -> RunResult:
        """Load ``thread``'s context (or start it at ring 3) and run it."""
        self._set_rsp0(thread.kernel_stack_top)
        kuser.update_shared_data(self, self.shared_data_frame)   # each dispatch: a new quantum
        if self.events.observers:
            self.events.emit(Event.THREAD_DISPATCH, thread=thread)
        if thread.context is None:
            return self._enter_user(thread)
        cpu = self.cpu
        cpu.restore_context(thread.context)
        if cpu.cr3 != thread.process.space.cr3:
            # Windows' SwapContext loads CR3 only when the new thread's process differs:
            # a thread resumed in its own address space keeps its TLB entries (and the
            # counted turns of one process pay no refills).
            self.load_cr3(thread.process.space.cr3)
        if thread.resume_rax is not None:
            cpu.set_reg("rax", thread.resume_rax)
            thread.resume_rax = None
        if thread.apc is not None:
            # The completion of its I/O, in its own context (Windows' special kernel APC):
            # now the caller's buffer is the caller's buffer.
            apc, thread.apc = thread.apc, None
            cpu.set_reg("rax", apc() & 0xFFFF_FFFF)
        return self._run_cpu(turn=True)

    def _switch_at_syscall(self, thread: Thread) -> bool:
        """SwapContext from inside the SYSCALL hook: ``thread`` yielded or blocked in a
        system service and the next ready thread gets the CPU without the run stopping
        (Unicorn's stop and restart are most of what a stop costs). Everything else is
        what the turn's end and the next turn give (``_turn_over``, ``run``,
        ``_run_thread``, ``_switch_to``): the same thread next, the same budget, the same
        counts, KUSER_SHARED_DATA, TSS.RSP0, the context saved as the stop leaves it, the
        CR3 load, and the dispatch told to whoever watches each (THREAD_DISPATCH, then
        CR3_LOAD, as ``_switch_to`` tells them: the CPU still the leaving thread's, then the
        next one's). True when done; False when the run must stop and the dispatcher take
        over as ever: a thread never switched out before (no context yet), a pending I/O
        completion, a timer due now, a budget too small for a run (a step), an observer
        that must see each dispatch with the CPU stopped at it (``_watchers_take_
        dispatches_in_the_run``), work deferred to the stop. A debugger's step or snapshot
        due here cuts the next turn's budget to nothing: the run stops before its first
        instruction, where the stop would have paused."""
        cpu, scheduler = self.cpu, self.scheduler
        if (not self.switch_at_syscall or thread.state is ThreadState.TERMINATED
                or thread.context is None or not scheduler.ready
                or self.interrupted or self._deferred or not cpu.can_switch_at_syscall):
            return False
        watched = bool(self.events.observers)
        if (watched or self.debugger is not None) and \
                not self._watchers_take_dispatches_in_the_run():
            return False
        now = self.clock
        deadline = scheduler.next_deadline()
        following = scheduler.ready[0]
        if (deadline is not None and deadline <= now) or following.context is None \
                or following.apc is not None:
            return False
        # The budget the next turn gets once the run loop has taken the head of the queue
        # (no timer expires now: that is all it does).
        budget = self._budget(len(scheduler.ready) - 1)
        if budget is None or not cpu.native.runs_budget(budget):
            return False
        following = scheduler.next_thread(now)
        self._end_turn()
        self._begin_turn(following, budget)
        self._set_rsp0(following.kernel_stack_top)
        kuser.update_shared_data(self, self.shared_data_frame)   # each dispatch: a new quantum
        if watched:
            self.events.emit(Event.THREAD_DISPATCH, thread=following)
        cpu.switch_at_syscall(thread.context, following.context)
        self.switches_at_syscall += 1
        if cpu.cr3 != following.process.space.cr3:
            if watched:
                # Inside the hook RIP reads the SYSCALL's (the run completes it): its CR3
                # load is told with the CPU as the next thread resumes (its saved context,
                # just loaded), as after a stop.
                cs, rip, cr8 = cpu.context_regs(following.context, _CS_RIP_CR8)
                self.events.logged = SwitchLogged(cpu.instructions, rip, cs, cr8, cr8)
            try:
                self.load_cr3(following.process.space.cr3)
            finally:
                self.events.logged = None
        if following.resume_rax is not None:
            cpu.set_reg("rax", following.resume_rax)
            following.resume_rax = None
        return True

    def _turn_over(self, thread: Thread, result: RunResult) -> bool:
        """Handle why the CPU stopped; True when this thread's turn is over."""
        if result.reason is StopReason.BUDGET and self._quantum_renewed(thread):
            return False
        if result.reason is StopReason.EXCEPTION:
            self._handle_exception(thread, result.exception)
            return thread.state is not ThreadState.RUNNING
        alive = thread.state is not ThreadState.TERMINATED
        if alive:
            if thread.context is None:
                thread.context = self.cpu.uc.context_save()
            else:                        # into the thread's own buffer: no allocation
                self.cpu.save_context(thread.context)
        if result.reason is StopReason.BUDGET:
            if self.max_insns is not None and self.cpu.instructions >= self.max_insns:
                raise MachineStop(INSTRUCTION_LIMIT)
            # A device's interrupt line may be up: it interrupts THIS thread, whatever
            # process it belongs to (the seed's "arbitrary thread context").
            self.deliver_interrupts(thread)
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
            self.load_cr3(thread.process.space.cr3)
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

    def _quantum_renewed(self, thread: Thread) -> bool:
        """KiQuantumEnd with no other thread ready: the thread keeps the CPU with a new
        quantum, no dispatch (Windows Internals, 7th ed., ch. 4, "Quantum end"). True when
        that is so here: nothing else ready, no timer or device due, no interrupt or DPC
        pending, no stop asked for, and nobody watching each dispatch (an event log, the
        debugger: for them every quantum is a turn of its own, as it always was). The
        schedule is the one a full turn would give: the same thread, the same budgets."""
        if (thread.state is not ThreadState.RUNNING or self.scheduler.ready
                or thread.apc is not None or thread.resume_rax is not None
                or self.debugger is not None or self.events.observers or self.interrupted
                or self.pending_interrupts or self.dpc_queue
                or self.device_deadline() is not None
                or self.scheduler.next_deadline() is not None):
            return False
        if self.max_insns is not None and self.cpu.instructions >= self.max_insns:
            return False
        budget = self._budget()
        if budget is None or budget <= 0:
            return False
        # KUSER_SHARED_DATA's times move on as at a dispatch: in Windows the clock
        # interrupt keeps them current whatever runs, and a guest can read them.
        kuser.update_shared_data(self, self.shared_data_frame)
        self.set_budget(budget)
        return True

    # -- interrupts and DPCs ----------------------------------------------------------------

    def device_deadline(self) -> int | None:
        """The clock time at which the next device raises its line (None: no device busy)."""
        if not self.cpu.devices:
            return None
        times = [d.fire_at for d in self.cpu.devices if d.fire_at is not None]
        return min(times) if times else None

    def _idle_until_interrupt(self) -> bool:
        """Nothing ready: if a device will interrupt before any timer, let the clock run to
        it (the idle loop) and take the interrupt in the system context."""
        device = self.device_deadline()
        timer = self.scheduler.next_deadline()
        if device is None or (timer is not None and timer < device):
            return False
        self.scheduler.idle_skipped += max(0, device - self.clock)
        self.deliver_interrupts(None)
        return True

    def deliver_interrupts(self, thread: Thread | None, *, here: bool = False) -> None:
        """Every device whose line is up interrupts ``thread`` (None: the idle system) if its
        DIRQL is above the IRQL: its ISR, then the DPCs queued, at DISPATCH_LEVEL, in that
        thread's address space and on its kernel stack (``here``: below the frames of the
        ring-0 code running now, such as a driver waiting in KeWaitForSingleObject), before
        the thread goes on. A masked interrupt stays pending until the IRQL drops below its
        DIRQL (emu.nt.kintr)."""
        self.raise_interrupt_lines()
        if not self.pending_interrupts and not self.dpc_queue:
            return          # nothing to deliver (always so with no driver: kintr not imported)
        from emu.nt import kintr

        kintr.dispatch(self, thread, here=here)

    def raise_interrupt_lines(self) -> None:
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
        if not self.pending_interrupts and not self.dpc_queue:
            return False    # nothing a lower IRQL could unmask
        from emu.nt import kintr

        return kintr.work_after_write(self, old, new)

    def load_cr3(self, cr3: int) -> None:
        """KiSwapProcess's MOV to CR3 for the address space whose PML4 is at ``cr3``: with
        CR4.PCIDE, its PCID in CR3[11:0] and bit 63 set, so that the translations it cached
        under its PCID survive the switch (SDM Vol. 3A 4.10.4.1; the memory manager drops a
        page from every PCID whenever a PTE changes, and flushes a PCID before handing it
        out again). A space without a PCID of its own is loaded as PCID 0, flushed."""
        cpu = self.cpu
        pcid = self.mm.pcid_of(cr3) if cpu.cr4 & _PCIDE else 0
        cpu.load_cr3(cr3 | pcid | CR3_NOFLUSH if pcid else cr3)

    def _set_rsp0(self, top: int) -> None:
        """TSS.RSP0: the stack the CPU would switch to on entering ring 0 (SDM §7.7)."""
        tss = self._gdt_frame * layout.PAGE_SIZE + (layout.KERNEL_TSS & 0xFFF)
        self.mem.write_u64(tss + 4, top)

    def _enter_user(self, thread: Thread) -> RunResult:
        """KiStartUserThread: iretq from the clean ring-0 state to the thread's start, CPL 3."""
        self.load_user_context(thread, {"rip": thread.start_rip, "rsp": thread.start_rsp,
                                        "rdi": thread.start_arg, "rflags": USER_RFLAGS})
        return self._run_cpu(turn=True)

    def load_user_context(self, thread: Thread, regs: dict[str, int]) -> None:
        """Make the CPU ready to iretq into ring 3 with ``regs`` (registers not named are 0):
        the clean ring-0 state (no stale exception), the thread's CR3, the interrupt frame
        on its kernel stack, RIP at the trampoline. The next run starts there."""
        cpu = self.cpu
        cpu.restore_clean_context()
        self.load_cr3(thread.process.space.cr3)
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
