"""What stops a running machine: the debugger's breakpoints, watchpoints and catchpoints.

* Breakpoints: a Unicorn code hook on each breakpoint's one address (only that address
  pays); it stops the CPU before the instruction runs. A physical breakpoint hooks every
  instruction and compares the frame. A kernel export is never executed: the executive
  asks first (``export_called``).
* Watchpoints: Unicorn memory hooks on the frames the watched pages map to (Unicorn's
  memory hooks see physical addresses); the stop is after the accessing instruction, as
  hardware debug registers report a data breakpoint (SDM Vol. 3B 17.2.4): the run ends at
  the access, the store it made is undone and the instruction runs again alone
  (``_on_memory``, ``_run_watched_again``).
* Catchpoints, and an exception no handler takes: the executive's events
  (emu.nt.events, ``_on_event``).

``Triggers`` is a part of ``Session`` (emu.debugger.session): it works on the session's own
state, and hands each stop to the session's pause.
"""

from __future__ import annotations

from typing import Any

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
from emu.debugger.reverse import AT_NEXT_INSTRUCTION, Hit
from emu.debugger.stops import Breakpoint, Catchpoint, Stop, StopReason, Watchpoint
from emu.hw import mmu
from emu.nt.events import Event
from emu.nt.process import ProcessState


class Triggers:
    """The hooks and listeners of ``Session`` that decide its stops (see the module
    docstring)."""

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
        self._watch = WatchHit(rip, completed, wp, stop, undo)
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


class WatchHit:
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
