"""Run control for a debugger: pause the machine between two instructions, and go on.

A front end (the ``emu debug`` shell, the gdb stub) gives ``on_stop(stop) -> bool``. The
session runs the machine and calls it at every stop, with the machine paused between two
instructions; the front end reads and writes state through ``session.target``, then calls
one of the resume methods (``step``, ``next``, ``finish``, ``until``, ``cont``,
``reverse_step``, ``reverse_cont``) and returns True. Returning False without resuming
detaches: the machine runs on to its end with no more stops.

How the machine pauses (emu.nt.ke_dispatcher, Executive._run_cpu):
* Steps: the C counter (emu/hw/native.py) charges each translated block at its entry and
  finishes a budget inside a block instruction by instruction; the CPU's budget is
  clipped at the step's end, and the executive gives the rest of its budget back after
  the pause, so the schedule (quanta, interrupts, preemption) is the same as without a
  debugger: a run is deterministic with or without stops.
* Breakpoints: a Unicorn code hook on the one address (only that address pays); it stops
  the CPU before the instruction runs.
* Watchpoints: Unicorn memory hooks on the range; the CPU stops after the accessing
  instruction, as hardware debug registers report a data breakpoint (SDM Vol. 3B 17.2.4).
  Instructions are still counted per block: the hook stops the run right after the access,
  with RIP still at the accessing instruction (Unicorn's behaviour), and its count taken
  back like any early exit from a block; the store it made is undone, and the instruction
  runs again as a step of one, which stops after it (see ``_on_memory``).
* Catchpoints: the executive's events (emu.nt.events).
* Ctrl-C: ``interrupt()`` from any thread stops the CPU at the next block boundary (the
  next instruction while every instruction is counted).
The shell always runs outside Unicorn's emu_start, between two runs of the CPU.

Positions: instructions completed since boot plus exceptions the CPU raised (a fault is a
step of its own, so one position names one machine state). Going back re-executes to an
earlier position, from a snapshot or from boot: emu.debugger.reverse. The hooks and
listeners that decide a stop (breakpoints, watchpoints, catchpoints) are
emu.debugger.triggers; this module is the run and pause control and the commands' side.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from emu import fmt
from emu.debugger import catch
from emu.debugger.expr import ExprError, evaluate
from emu.debugger.reverse import Replay, ReverseExecution, Rewind
from emu.debugger.stops import (
    Breakpoint,
    CatchKind,
    Catchpoint,
    SessionError,
    Stop,
    StopReason,
    Watchpoint,
)
from emu.debugger.target import LiveTarget
from emu.debugger.triggers import Triggers, WatchHit
from emu.nt import layout

if TYPE_CHECKING:
    from emu.debugger.snapshots import SnapshotRing
    from emu.machine import Machine, MachineResult


OnStop = Callable[[Stop], bool]


class Session(ReverseExecution, Triggers):
    """A machine under a debugger's control (see the module docstring)."""

    def __init__(self, machine: Machine, on_stop: OnStop, *,
                 factory: Callable[[], Machine] | None = None,
                 stop_at_driver: bool = False, snapshots: SnapshotRing | None = None,
                 front_end_state: tuple[Callable[[], Any], Callable[[Any], None]] | None = None,
                 on_resume: Callable[[], None] | None = None) -> None:
        """``factory`` makes the same machine again (going back); ``snapshots`` forks sleeping
        copies of the emulator on the way (emu.debugger.snapshots); ``front_end_state``
        (get, set) carries the front end's own state into a resumed snapshot, and
        ``on_resume`` runs there once it has taken over."""
        self.machine = machine
        self.snapshots = snapshots
        self.front_end_state = front_end_state
        self.on_resume = on_resume
        self.on_stop = on_stop
        self.factory = factory
        self.stop_at_driver = stop_at_driver
        self.target = LiveTarget(machine)
        self.ended = False
        self.result: MachineResult | None = None
        self.breakpoints: dict[int, Breakpoint | Watchpoint | Catchpoint] = {}
        self._internal: list[Breakpoint] = []
        self._next_number = 1
        self._hooks: list[int] = []
        self._watched: list[tuple[int, int]] = []     # physical ranges hooked for watchpoints
        self._watch: WatchHit | None = None     # a watchpoint hit being made exact
        self._deadline: int | None = None        # pause once this many instructions are done
        self._pending: Stop | None = None
        self._interrupt = threading.Event()
        self._skip: tuple[int, int] | None = None   # (rip, instructions) of the one resumed
        self._detached = False
        self._resumed = False
        self._replay: Replay | None = None          # re-executing to an earlier position
        self._rewind_to: Replay | None = None       # going back, once the front end returns
        self._last_words = False         # a stop after the end, before the final one
        self._killed = False             # ``kill`` ended the machine: no history to go to
        self._last_exception: Any = None  # the last CpuException (emu.hw.exceptions)
        self._exceptions = 0             # exceptions raised since boot: part of the position
        self._events = 0                 # executive events seen since boot (see Hit)
        self._clipped: tuple[int, int | None, int | None] | None = None   # _clip_key, cut
        self._attach()

    # -- the machine ----------------------------------------------------------------------

    @property
    def executive(self):
        return self.machine.executive

    @property
    def position(self) -> int:
        """Where the machine is in its history: instructions completed since boot plus
        exceptions the CPU raised. A fault is a step of its own (the faulting instruction has
        not completed, but CR2 and the handler's work set it apart from the moment before),
        so each position names one machine state however it is reached."""
        return self.executive.cpu.instructions + self._exceptions

    def _attach(self) -> None:
        ex = self.executive
        ex.debugger = self
        console = ex.console
        if console is not None:   # going back re-executes: its output was shown already
            ex.console = lambda proc, data: self._replay is None and console(proc, data)
        ex.events.subscribe(self._on_event, logged=True)     # see takes_logged_dispatches
        ex.set_budget(ex.scheduler.quantum)      # count from the first instruction (drivers)
        self._install_hooks()
        if self._replay is None:
            self._start_breakpoint()

    def _start_breakpoint(self) -> None:
        """The first stop: the first driver's DriverEntry (on request), else the first
        process's entry point, else whatever runs first."""
        ex = self.executive
        if self.stop_at_driver and ex.pending_drivers:
            entry, pid = ex.pending_drivers[0].entry, None
        elif ex.processes:
            entry, pid = ex.processes[0].image.entry, ex.processes[0].pid
        else:
            self._pending = Stop(StopReason.START, "stopped before the first instruction")
            return
        self._add_internal(Breakpoint(0, entry, pid, temporary=True, internal=True, start=True))

    def run(self) -> MachineResult:
        """Run the machine to its end, calling the front end at every stop."""
        while True:
            try:
                result = self.machine.run()
                self.result = result
                self.ended = True
                if self._killed:                # the front end hears of the end, and goes on
                    self._detached = False
                replay = self._replay
                if replay is not None and replay.record:
                    self._note_pending_hit(replay)
                    self._rewind_to = self._last_hit(replay)   # searched to the end
                    self._replay = None
                    self._go_back()
                self._replay = None             # history ended at the target: stop here
                if replay is not None and replay.event and replay.stop is not None:
                    self._pending = replay.stop   # a catchpoint's stop of the very end
                if self._pending is not None:   # an event of the very end (a CR3 load):
                    stop, self._pending = self._pending, None   # going on shows the end
                    self._last_words = True
                    self._pause(stop)
                    self._last_words = False
                self._pause(self._final_stop(result))
                return result
            except Rewind:
                self.ended = False
                self._rebuild()

    def _final_stop(self, result: MachineResult) -> Stop:
        if result.bugcheck is not None:
            bc = result.bugcheck
            return Stop(StopReason.BUGCHECK, f"the system stopped: bug check {bc.code:#x} "
                        f"{bc.name}", position=self.position)
        first = result.processes[0] if result.processes else None
        code, status = None, ""
        if first is not None and first.exit_status is not None:
            code = first.exit_status & 0xFF
            status = (f'process {first.pid} "{first.name}" exit status '
                      f"{fmt.status(first.exit_status)}")
        why = result.stopped or "every process has ended"
        return Stop(StopReason.EXITED, f"the machine has stopped: {why}", exit_code=code,
                    exit_status=status, position=self.position)

    def close(self) -> None:
        """Detach from the machine and release it."""
        self.executive.debugger = None
        self.machine.close()

    # -- the pause ------------------------------------------------------------------------

    @property
    def stop_pending(self) -> bool:
        """Whether a stop is waiting for the next instruction boundary."""
        return self._pending is not None or self._interrupt.is_set() or \
            self._watch is not None or \
            (self._replay is not None and self._replay.pending_hit is not None)

    def clip_budget(self, n: int) -> int:
        """The executive's budget ``n``, cut at the end of a step or replay, or at the next
        snapshot (``stop_count``)."""
        self._clipped = self._clip_key()
        stop = self.stop_count()
        if stop is not None:
            n = min(n, max(0, stop - self.executive.cpu.instructions))
        return n

    def stop_count(self) -> int | None:
        """The instruction count at which a run must stop for this session (a step's or a
        replay's end, the next snapshot), or None."""
        cuts = [at for at in (self._deadline, self._snapshot_due()) if at is not None]
        # A position counts the exceptions raised too; none is raised without a stop.
        return max(0, min(cuts) - self._exceptions) if cuts else None

    def _snapshot_due(self) -> int | None:
        """The position of the next snapshot, if snapshots are taken now."""
        ring = self.snapshots
        return ring.due_at() if ring is not None and ring.keep and not self._detached \
            else None

    def takes_logged_dispatches(self) -> bool:
        """Whether the next run's dispatches may be made inside it and told to this session
        after it (emu.nt.events): its own books then only count them. Not while it
        re-executes to an event's index (a replay), makes a watchpoint's hit exact, or has
        a catchpoint that stops at a dispatch or a CR3 load."""
        if self._replay is not None or self._watch is not None:
            return False
        return not any(isinstance(cp, Catchpoint) and cp.enabled and catch.stops_at_dispatch(cp)
                       for cp in self.breakpoints.values())

    def _clip_key(self) -> tuple[int, int | None, int | None]:
        """What clip_budget's cut depends on besides the instructions run: the exceptions
        (a position's other part), the step's end and the next snapshot's position. While
        it stays the same, the CPU's budget left is already the cut's (an instruction
        spends a step of the position, of the deadline and of the budget alike)."""
        return self._exceptions, self._deadline, self._snapshot_due()

    def before_run(self) -> None:
        """Called by the executive before each run of the CPU (from RIP): take a snapshot if
        one is due, and pause here if a stop is."""
        ring = self.snapshots
        if ring is not None and not self._detached and ring.due(self.position):
            message = ring.take(self.position, self.machine.pagefile)
            if message is not None:
                self._restore(message)       # this is a snapshot, resumed: carry on from here
        if self._watch is not None and not self._watch.again:
            self._run_watched_again()
        stop = self._due_stop()
        if stop is not None:
            self._pause(stop)
        elif self._clipping() and self._clip_key() != self._clipped:
            # The CPU's budget counts instructions, a position counts exceptions and kernel
            # export calls too: one raised since the budget was clipped (the run that ended
            # at it) moved the position on without spending the budget, so clip it anew
            # from the position now, or the step ends one instruction late per exception.
            self.executive.rearm_budget()

    def _clipping(self) -> bool:
        """Whether clip_budget cuts the CPU's budget (a step, a replay, a snapshot due)."""
        return self._deadline is not None or self._snapshot_due() is not None

    def _due_stop(self) -> Stop | None:
        if self._detached:
            return None
        replay = self._replay
        if replay is not None:
            self._note_pending_hit(replay)
            if self.position < replay.target or self._events < replay.event:
                self._pending = None
                return None
            if replay.record:
                self._end_record()
            self._replay = None
            self._deadline = None
            if replay.over is not None and self._in_callee(*replay.over):
                self._rewind_to = self._call_search(self.executive.cpu.reg("rsp"))
                self._go_back()          # stepped back into a callee: to before its call
            return replay.stop or Stop(StopReason.STEP, "", position=self.position)
        if self._pending is not None:
            stop, self._pending = self._pending, None
            self._interrupt.clear()
            return stop
        if self._interrupt.is_set():
            self._interrupt.clear()
            return Stop(StopReason.INTERRUPT, "interrupted (Ctrl-C)", position=self.position)
        if self._deadline is not None and self.position >= self._deadline:
            self._deadline = None
            watch, self._watch = self._watch, None
            if watch is not None:            # the watched instruction has run again
                return watch.stop
            return Stop(StopReason.STEP, "", position=self.position)
        return None

    def _pause(self, stop: Stop) -> None:
        """Hand the paused machine to the front end until it resumes it."""
        stop.position = self.position
        self._resumed = False
        self._deadline = None
        if self._detached:
            return
        if self.snapshots is not None:
            self.snapshots.stopped()         # dense snapshots again where the user works
        resumed = self.on_stop(stop)
        if not resumed and not self._resumed:
            self._detached = True
            self._remove_hooks()
            self._deadline = None
        if self._rewind_to is not None:
            self._go_back()
        ex = self.executive
        self._skip = (ex.cpu.rip, ex.cpu.instructions)   # not hit again by what it resumes
        if not self.ended:
            ex.rearm_budget()                # clipped to a new step, if one was asked for
            if self._interrupt.is_set():     # Ctrl-C since the command was read: stop at once
                ex.cpu.native.stop_soon()

    def interrupt(self) -> None:
        """Stop at the next instruction boundary (Ctrl-C); safe from any thread."""
        self._interrupt.set()
        self.executive.cpu.native.stop_soon()

    def _stop_soon(self, stop: Stop, *, next_instruction: bool = False) -> None:
        """Pause at the next boundary: now if the CPU is not running, else after this
        instruction; with ``next_instruction``, before whatever the CPU runs next (an ISR's,
        a DPC's or DriverEntry's first instruction)."""
        if self._replay is not None or self._detached:
            return
        if self.executive.running or next_instruction:
            if self._pending is not None:        # e.g. a system call's entry and return
                self._pending.description += "; " + stop.description
            else:
                self._pending = stop
            if self.executive.running:
                self.executive.cpu.native.stop_soon()
        else:
            self._pause(stop)

    # -- resuming -------------------------------------------------------------------------

    def _check_alive(self) -> None:
        if self._killed:
            raise SessionError("no machine is running (it was killed)")

    def _check_forward(self) -> None:
        self._check_alive()
        if self.ended and not self._last_words:
            raise SessionError("the machine has ended: nothing to run (reverse-stepi and "
                               "reverse-continue still go back)")
        self._accept_resume()

    def _accept_resume(self) -> None:
        """The front end has asked to resume: a Ctrl-C typed at the prompt, before this
        command, stops nothing later; one typed from here on stops what it resumes."""
        self._interrupt.clear()
        self._resumed = True

    def step(self, count: int = 1) -> None:
        """Run ``count`` instructions, then stop (stepi)."""
        if count <= 0:
            raise SessionError("the count must be positive")
        self._check_forward()
        self._deadline = self.position + count

    def cont(self) -> None:
        """Run until a breakpoint, watchpoint, catchpoint, Ctrl-C or the end (continue)."""
        self._check_forward()

    def next(self) -> None:
        """Step over a call: a ``call`` runs to its return; anything else is one stepi."""
        self._check_forward()
        cpu = self.executive.cpu
        insn = cpu.decode_at(cpu.rip)
        if insn is None or insn.mnemonic not in ("call", "syscall"):
            self.step(1)
            return
        rsp = cpu.reg("rsp")
        self._run_to(cpu.rip + insn.size, lambda: self.executive.cpu.reg("rsp") >= rsp)

    def finish(self) -> None:
        """Run until the current function returns to its caller: frame 1 of ``bt``
        (emu.debugger.memview.backtrace: 8 or 4 bytes, by frame pointer or prologue)."""
        from emu.debugger.memview import backtrace
        self._check_forward()
        rsp = self.executive.cpu.reg("rsp")
        frames, why = backtrace(self.target)
        if len(frames) < 2:
            raise SessionError("finish: cannot find the return address" +
                               (f": {why}" if why else ""))
        self._run_to(frames[1], lambda: self.executive.cpu.reg("rsp") > rsp)

    def until(self, address: int) -> None:
        """Run until ``address`` is reached in this process (or a breakpoint stops first)."""
        self._check_forward()
        self._run_to(address, lambda: True)

    def _run_to(self, address: int, guard: Callable[[], bool]) -> None:
        proc = self.executive.current
        bp = Breakpoint(0, address, proc.pid if proc else None, temporary=True,
                        internal=True, guard=guard)
        self._add_internal(bp)

    def kill(self) -> None:
        """End the machine now: every process is terminated (gdb's ``k``). The front end
        then gets the final stop; its state stays readable, and nothing runs it again,
        forward or back."""
        self._check_forward()
        from emu.nt.kernel import MachineStop
        self._remove_hooks()
        self._detached = True            # no stop while the run unwinds
        self._killed = True
        raise MachineStop("killed")

    # -- breakpoints ----------------------------------------------------------------------

    def _number(self) -> int:
        n = self._next_number
        self._next_number += 1
        return n

    def add_breakpoint(self, address: int, *, pid: int | None = None, physical: bool = False,
                       condition: str | None = None, temporary: bool = False) -> int:
        """A breakpoint before the instruction at ``address``; returns its number."""
        if condition is not None:
            try:                             # evaluated at each arrival; its syntax now
                evaluate(condition, _SyntaxOnly(self.target.register_names()))
            except ExprError as err:
                raise SessionError(f"bad condition: {err}") from None
        bp = Breakpoint(self._number(), address, pid, physical, condition, temporary)
        self.breakpoints[bp.number] = bp
        self._install_hooks()
        return bp.number

    def add_watchpoint(self, address: int, length: int, kind: str, *, pid: int | None = None,
                       physical: bool = False) -> int:
        """A watchpoint on [address, address + length) for ``kind`` accesses."""
        if kind not in ("write", "read", "access"):
            raise SessionError(f"watchpoint kind {kind!r}: write, read or access")
        if not 1 <= length <= 1 << 20:
            raise SessionError("a watchpoint covers 1 byte to 1 MiB")
        proc = self.executive.current
        if pid is None and not physical and proc is not None and \
                address < layout.KERNEL_SPACE_START:
            pid = proc.pid                # a user address means this process's page
        wp = Watchpoint(self._number(), address, length, kind, pid, physical)
        self.breakpoints[wp.number] = wp
        self._install_hooks()
        return wp.number

    def add_catchpoint(self, kind: CatchKind, filter: str | None = None) -> int:
        """A catchpoint on an executive event."""
        cp = Catchpoint(self._number(), kind, filter)
        self.breakpoints[cp.number] = cp
        return cp.number

    def delete(self, number: int) -> None:
        """Delete breakpoint, watchpoint or catchpoint ``number``."""
        if number not in self.breakpoints:
            raise SessionError(f"no breakpoint number {number}")
        del self.breakpoints[number]
        self._install_hooks()

    def set_enabled(self, number: int, enabled: bool) -> None:
        """Enable or disable breakpoint ``number``."""
        if number not in self.breakpoints:
            raise SessionError(f"no breakpoint number {number}")
        self.breakpoints[number].enabled = enabled
        self._install_hooks()

    def _add_internal(self, bp: Breakpoint) -> None:
        self._internal.append(bp)
        self._install_hooks()

class _SyntaxOnly:
    """A stand-in target for checking an expression's syntax: every register, symbol and
    memory word reads as 0."""

    def __init__(self, registers: list[str]) -> None:
        self._registers = registers

    def register_names(self) -> list[str]:
        return self._registers

    def register(self, _name: str, _pid: int | None = None) -> int:
        return 0

    def resolve_symbol(self, _name: str, _pid: int | None = None) -> int:
        return 0

    def read_u64(self, _address: int, _pid: int | None = None) -> int:
        return 0
