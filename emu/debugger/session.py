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
earlier position, from a snapshot or from boot: emu.debugger.reverse.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from unicorn import (
    UC_CTL_IO_WRITE,
    UC_CTL_TLB_FLUSH,
    UC_HOOK_CODE,
    UC_HOOK_MEM_READ,
    UC_HOOK_MEM_WRITE,
    UC_MEM_WRITE,
)

from emu import fmt
from emu.debugger import catch
from emu.debugger.expr import ExprError, evaluate
from emu.debugger.reverse import AT_NEXT_INSTRUCTION, Hit, Replay, ReverseExecution, Rewind
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
from emu.hw import mmu
from emu.nt import layout
from emu.nt.events import Event
from emu.nt.process import ProcessState

if TYPE_CHECKING:
    from emu.debugger.snapshots import SnapshotRing
    from emu.machine import Machine, MachineResult


OnStop = Callable[[Stop], bool]


class Session(ReverseExecution):
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
        self._watch: _WatchHit | None = None     # a watchpoint hit being made exact
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
        self._last_exception: Any = None  # the CPU's last exception (emu.hw.cpu.CpuException)
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
        ex.events.subscribe(self._on_event)
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
        """The executive's budget ``n``, cut at the end of a step or replay."""
        self._clipped = self._clip_key()
        if self._deadline is not None:
            n = min(n, max(0, self._deadline - self.position))
        ring = self.snapshots
        if ring is not None and ring.keep and not self._detached:
            n = min(n, max(0, ring.due_at() - self.position))
        return n

    def _clip_key(self) -> tuple[int, int | None, int | None]:
        """What clip_budget's cut depends on besides the instructions run: the exceptions
        (a position's other part), the step's end and the next snapshot's position. While
        it stays the same, the CPU's budget left is already the cut's (an instruction
        spends a step of the position, of the deadline and of the budget alike)."""
        ring = self.snapshots
        due = ring.due_at() if ring is not None and ring.keep and not self._detached \
            else None
        return self._exceptions, self._deadline, due

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
        ring = self.snapshots
        return self._deadline is not None or \
            (ring is not None and ring.keep and not self._detached)

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

    # -- hooks on the CPU -----------------------------------------------------------------

    def _remove_hooks(self) -> None:
        uc = self.executive.cpu.uc
        for h in self._hooks:
            uc.hook_del(h)
        self._hooks = []

    def _install_hooks(self) -> None:
        """(Re)install a code hook per breakpoint address and memory hooks per watchpoint;
        translated code is flushed so that every block sees them."""
        self._remove_hooks()
        uc = self.executive.cpu.uc
        addresses: set[int] = set()
        physical_code = False
        for bp in self._all_breakpoints():
            if bp.physical:
                physical_code = True
            else:
                addresses.add(bp.address)
        for a in sorted(addresses):
            self._hooks.append(uc.hook_add(UC_HOOK_CODE, self._on_code, None, a, a))
        if physical_code:
            self._hooks.append(uc.hook_add(UC_HOOK_CODE, self._on_code))
        self._watched = []
        for wp in self.breakpoints.values():
            if isinstance(wp, Watchpoint) and wp.enabled:
                kinds = {"write": UC_HOOK_MEM_WRITE, "read": UC_HOOK_MEM_READ,
                         "access": UC_HOOK_MEM_WRITE | UC_HOOK_MEM_READ}[wp.kind]
                # Unicorn's memory hooks see physical addresses (the TLB hook translated).
                for lo, hi in self._physical_ranges(wp):
                    self._watched.append((lo, hi))
                    self._hooks.append(uc.hook_add(kinds, self._on_memory, wp, lo, hi - 1))
        uc.ctl_flush_tb()
        uc.ctl(UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE)   # cached pages would skip memory hooks

    def _physical_ranges(self, wp: Watchpoint) -> list[tuple[int, int]]:
        """[lo, hi) physical ranges a watchpoint covers now: its own for a physical one, the
        frames its pages map to in its process for a virtual one (pages not present: none;
        a page fault that maps one installs the hooks again)."""
        if wp.physical:
            return [(wp.address, wp.address + wp.length)]
        out = []
        va, end = wp.address, wp.address + wp.length
        while va < end:
            n = min(end, (va | 0xFFF) + 1) - va
            pa = self._translate(va, wp.pid)
            if pa is not None:
                out.append((pa, pa + n))
            va += n
        return out

    def _translate(self, va: int, pid: int | None) -> int | None:
        """The physical address of ``va`` in process ``pid`` (None: the current space)."""
        ex = self.executive
        cr3 = ex.cpu.cr3
        if pid is not None:
            proc = next((p for p in ex.processes if p.pid == pid), None)
            if proc is None or proc.state is ProcessState.TERMINATED:
                return None
            cr3 = proc.space.cr3
        cpu = ex.cpu
        try:
            return mmu.walk(ex.mem, va, "read", cr3=cr3, cpl=0, cr0=cpu.cr0, cr4=cpu.cr4,
                            efer=cpu.efer, rflags=mmu.RFLAGS_AC).pa     # a debugger's: past SMAP
        except (mmu.PageFault, mmu.GeneralProtection):
            return None

    def _all_breakpoints(self) -> list[Breakpoint]:
        bps = [b for b in self.breakpoints.values() if isinstance(b, Breakpoint) and b.enabled]
        return bps + self._internal

    def _physical_rip(self, rip: int) -> int | None:
        try:
            return self.executive.cpu.walk(rip, "fetch").pa
        except (mmu.PageFault, mmu.GeneralProtection):
            return None

    def _on_code(self, uc, address: int, size: int, _data) -> None:
        """A breakpoint's code hook: decide whether this arrival stops."""
        if self._detached:
            return
        completed = self.executive.cpu.native.completed_before(address)
        position = completed + self._exceptions    # the position before this instruction
        if self._skip is not None:
            if self._skip == (address, completed):
                return       # the instruction we paused before (or its retry after a fault)
            self._skip = None
        pa = None
        for bp in list(self._all_breakpoints()):
            if bp.physical:
                pa = self._physical_rip(address) if pa is None else pa
                if pa != bp.address:
                    continue
            elif bp.address != address:
                continue
            if not self._breakpoint_applies(bp):
                continue
            self._breakpoint_hit(bp, address, position)
            return

    def export_called(self, address: int) -> None:
        """A driver's call reached a kernel export's trap address ``address`` (its fetch
        faults and the executive runs the routine, emu.nt.ke_call: call_kernel): a breakpoint
        there stops now, before the routine runs, RIP the export's address, the arguments
        in RCX/RDX/R8/R9 and the return address at [RSP], as on a routine's first
        instruction (WinDbg's `bp nt!DbgPrint`). The stop is at the position the call
        instruction left; the routine, like the fetch fault behind it, is one step of its
        own (a fault is a step: the position moves on by one once it has run), so stepi
        from here stops at the return address and going back finds this stop again."""
        ex = self.executive
        if self._detached:
            return
        ex.cpu.set_reg("rip", address)               # the export's address, not the caller's
        completed = ex.cpu.instructions
        if self._skip == (address, completed):
            self._skip = None                        # the stop we just paused at
        else:
            self._skip = None
            for bp in list(self._all_breakpoints()):
                if not bp.physical and bp.address == address and self._breakpoint_applies(bp):
                    self._breakpoint_hit(bp, address, self.position)
                    break
        stop = self._due_stop()
        if stop is not None:
            self._pause(stop)
        self._exceptions += 1                        # the routine runs: one step

    def _breakpoint_applies(self, bp: Breakpoint) -> bool:
        proc = self.executive.current
        if bp.pid is not None and (proc is None or proc.pid != bp.pid):
            return False
        if bp.guard is not None and not bp.guard():
            return False
        if bp.condition is not None:
            try:
                return bool(evaluate(bp.condition, self.target))
            except ExprError as err:
                bp.condition_error = str(err)
                return True              # a condition that cannot be evaluated stops (gdb)
        return True

    def _breakpoint_hit(self, bp: Breakpoint, address: int, position: int) -> None:
        if self._replay is not None:
            if self._replay.record and bp.reverse:     # reverse-finish's call
                self._replay.hits.append(Hit(position, Stop(StopReason.STEP, ""),
                                              self._events))
            elif self._replay.record and not bp.internal:
                self._replay.hits.append(Hit(position, Stop(
                    StopReason.BREAKPOINT, f"Breakpoint {bp.number}, "
                    f"{self.target.symbolize(address)}", number=bp.number), self._events))
            return
        if bp.internal:
            self._internal.remove(bp)
            if bp.start:
                stop = Stop(StopReason.START, self._start_text(address), position=position)
            else:
                stop = Stop(StopReason.STEP, "", position=position)
        else:
            bp.hits += 1
            text = f"Breakpoint {bp.number}, {self.target.symbolize(address)}"
            if bp.condition_error:
                text += f" (its condition could not be evaluated: {bp.condition_error})"
                bp.condition_error = None
            stop = Stop(StopReason.BREAKPOINT, text, number=bp.number, position=position)
            if bp.temporary:
                del self.breakpoints[bp.number]
        self._pending = stop
        self.executive.cpu.uc.emu_stop()

    def _start_text(self, address: int) -> str:
        proc = self.executive.current
        where = self.target.symbolize(address)
        if proc is None:
            return f"stopped before DriverEntry at {where}, ring 0"
        return f'process {proc.pid} "{proc.name}" stopped at its entry point {where}, ring 3'

    def _on_memory(self, uc, access: int, address: int, size: int, value: int,
                   wp: Watchpoint) -> None:
        """A watchpoint's memory hook: note the access; stop after this instruction.

        Counting per block, the run is stopped right here: Unicorn ends it after this
        access with RIP still at the instruction, which has not completed (its count is
        taken back, emu/hw/native.py), though a store has landed. ``before_run`` undoes
        that store and the instruction runs again, alone (``_run_watched_again``); its
        hooks then do what they do when every instruction is counted: each access counts
        a hit, the last one is the stop, made once the instruction has completed."""
        if self._detached or not wp.enabled:
            return
        native = self.executive.cpu.native
        rip = self.executive.cpu.rip
        watch = self._watch
        if watch is not None and not watch.again:
            return                   # stopped at an earlier access of this instruction
        pa = address
        proc = self.executive.current
        if not wp.physical:
            if wp.pid is not None and (proc is None or proc.pid != wp.pid):
                return
            address = self._virtual_hit(wp, address, size)   # the frame may map elsewhere
            if address is None:
                return
        write = access == UC_MEM_WRITE
        kind = "write" if write else "read"
        if wp.kind != "access" and wp.kind != kind:
            return
        what = f"{size}-byte {kind} of {'physical ' if wp.physical else ''}{address:#x}"
        if write:
            what += f" (value {value & ((1 << (8 * size)) - 1):#x})"
        stop = Stop(StopReason.WATCHPOINT,
                    f"Watchpoint {wp.number}: {what} by the instruction at "
                    f"{self.target.symbolize(rip)}",
                    number=wp.number, watch_kind=wp.kind, address=address)
        if self._replay is not None:
            if self._replay.record:      # the position after the accessing instruction
                after = native.completed_before(rip) + 1 + self._exceptions
                self._replay.hits.append(Hit(after, stop, self._events))
            return
        if watch is not None:            # the instruction again, alone: as counted one by one
            if rip == watch.rip:
                wp.hits += 1
                watch.stop = stop
            return
        if native.per_instruction:       # the next instruction's count stops the run
            wp.hits += 1
            self._pending = stop
            native.stop_soon()
            return
        completed = native.completed_before(rip)
        undo = None
        if write:                        # the store lands after this hook (Unicorn's order)
            n = min(size, 0x1000 - (pa & 0xFFF))   # a store across pages: its first page
            undo = (pa, self.executive.mem.read(pa, n))
        self._watch = _WatchHit(rip, completed, wp, stop, undo)
        uc.emu_stop()

    def _run_watched_again(self) -> None:
        """Before the run after a watchpoint's stop: if it stopped at the accessing
        instruction, undo the store that landed and run that instruction again as a step
        of one (the position after it is the deadline; clip_budget makes it the budget).
        An access QEMU makes inside a helper (cmpxchg16b, fxsave/xsave, far transfers,
        iretq) does not stop the run at once: the run ends at the next block, and the
        stop is made there."""
        watch = self._watch
        cpu = self.executive.cpu
        after = watch.completed + 1 + self._exceptions
        if cpu.rip == watch.rip and cpu.instructions == watch.completed:
            if watch.undo is not None:
                pa, old = watch.undo
                self.executive.mem.write(pa, old)
            watch.again = True
            self._deadline = after if self._deadline is None else min(self._deadline, after)
            self.executive.rearm_budget()          # clipped to the one instruction
            return
        self._watch = None                          # it ran past: stop where it is
        watch.wp.hits += 1
        self._pending = watch.stop

    def _virtual_hit(self, wp: Watchpoint, pa: int, size: int) -> int | None:
        """The watched virtual address that physical access [pa, pa + size) touched in the
        current address space, or None (the frame now backs some other page)."""
        va, end = wp.address, wp.address + wp.length
        while va < end:
            n = min(end, (va | 0xFFF) + 1) - va
            got = self._translate(va, None)
            if got is not None and got < pa + size and pa < got + n:
                return va + max(0, pa - got)
            va += n
        return None

    # -- catchpoints ----------------------------------------------------------------------

    def _on_event(self, event: Event, details: dict[str, Any]) -> None:
        self._events += 1
        if event is Event.EXCEPTION:     # the CPU delivers it: the position moves on by one
            self._exceptions += 1
            self._last_exception = details["exc"]
        if event is Event.PAGE_FAULT and self._watched_page_moved():
            self._install_hooks()
        if self._detached:
            return
        if self._replay is not None:
            self._replay_event(event, details)
            return
        stop = self._event_stop(event, details)
        if stop is None and event is Event.EXCEPTION and self._deadline is not None and \
                self.position >= self._deadline:
            stop = self._due_stop()      # a step that ends at the fault
        if stop is not None:
            self._stop_soon(stop, next_instruction=event in AT_NEXT_INSTRUCTION)

    def _event_stop(self, event: Event, details: dict[str, Any], *,
                    count: bool = True) -> Stop | None:
        """The stop ``event`` makes: a catchpoint's, an unhandled exception's, or both."""
        stop = self._catch_stop(event, details, count=count)
        unhandled = self._unhandled(event, details)
        if unhandled is not None:        # gdb's SIGSEGV, WinDbg's second chance
            if stop is None:
                return unhandled
            stop.description += "\n" + unhandled.description   # process-exit too: one stop
            stop.exception = unhandled.exception
        return stop

    def _catch_stop(self, event: Event, details: dict[str, Any], *,
                    count: bool = True) -> Stop | None:
        """The stop of the first enabled catchpoint that catches ``event``, or None."""
        for cp in self.breakpoints.values():
            if isinstance(cp, Catchpoint) and cp.enabled:
                text = catch.describe(cp, event, details, self)
                if text is not None:
                    pending = self._pending
                    if count and (pending is None or pending.number != cp.number):
                        cp.hits += 1           # (a system call's return joins its entry)
                    return Stop(StopReason.CATCH, f"Catchpoint {cp.number} ({text})",
                                number=cp.number, exception=details.get("exc"))
        return None

    def _unhandled(self, event: Event, details: dict[str, Any]) -> Stop | None:
        """An exception no handler took ends its process: stop there, still in the faulting
        process (its registers, its address space), with the line ``emu run`` prints."""
        if event is not Event.PROCESS_EXIT or details["process"].exception is None:
            return None
        proc = details["process"]
        return Stop(StopReason.EXCEPTION, fmt.exception_line(proc, proc.exception),
                    exception=self._last_exception)

    def _watched_page_moved(self) -> bool:
        """Whether a virtual watchpoint's pages now map to other frames than hooked."""
        now = []
        for wp in self.breakpoints.values():
            if isinstance(wp, Watchpoint) and wp.enabled:
                now += self._physical_ranges(wp)
        return now != self._watched


class _WatchHit:
    """A watchpoint's access that stopped the run at its instruction (block counting):
    the instruction's address, the instructions completed before it, the first stop it
    made, and the store to undo, (physical address, the bytes it overwrote), if any."""

    def __init__(self, rip: int, completed: int, wp: Watchpoint, stop: Stop,
                 undo: tuple[int, bytes] | None) -> None:
        self.rip = rip
        self.completed = completed
        self.wp = wp
        self.stop = stop
        self.undo = undo
        self.again = False           # the instruction is running again, alone


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
