"""Going back in time: the debugger's reverse execution, over deterministic re-execution.

A position (emu.debugger.session) names one machine state. Going back to an earlier one
resumes the newest snapshot at or before it (emu.debugger.snapshots), or rebuilds the
machine from its recipe, and re-executes to it: the machine is deterministic, so it arrives
byte for byte where it was. ``reverse-continue`` re-executes once to search (``record``:
every stop the forward run would have made is noted, with its position and the number of
executive events seen then, since one position can hold several stops: a fault, then the
process's end), and once more to stop at the last one before the present.
``reverse-finish`` searches the same way for the ``call`` of the current function, and
``reverse-nexti`` steps back and, when it lands in a callee, searches for its call.

``ReverseExecution`` is a part of ``Session``: it works on the session's own state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from emu.debugger.snapshots import SnapshotLost
from emu.debugger.stops import Breakpoint, SessionError, Stop, StopReason
from emu.debugger.target import LiveTarget
from emu.nt.events import Event


class Rewind(Exception):
    """Unwinds the machine's run: the session rebuilds it to go back in time."""


@dataclass
class Replay:
    """Re-execution to an earlier position: where to stop and what to say there."""

    target: int
    stop: Stop | None = None       # None: a STEP stop made at the target
    record: bool = False           # reverse-continue's search: note hits, stop nowhere
    hits: list[Hit] = field(default_factory=list)
    pending_hit: Stop | None = None    # a catchpoint's stop due at the next boundary
    origin: int = 0                # where this re-execution began (a snapshot, or boot)
    event: int = 0                 # and once this many events have been seen (see Hit)
    at_once: bool = False          # stop at that event itself, not at the next boundary
    call: tuple[int, int, int | None] | None = None   # a search for this call instruction
    #                                (address, RSP before it, pid): reverse-finish's target
    over: tuple[int, int | None] | None = None   # reverse-nexti: (RSP, pid) it started at


@dataclass(frozen=True)
class Hit:
    """Where a stop was met while re-executing: its position, and how many executive events
    had been seen then (one position can hold several stops: a fault, then the process's
    end); ``at_once``: the stop is at the event itself (a fault), else at the next
    instruction boundary after it (a breakpoint, an interrupt's ISR)."""

    position: int
    stop: Stop
    event: int
    at_once: bool = False

    def key(self) -> tuple[int, int]:
        return self.position, self.event


END_OF_HISTORY = 1 << 62      # a search from the end: every hit is before it

# Events whose catchpoint stops before the next instruction the CPU runs (the ISR's, the
# DPC's, DriverEntry's, the new address space's) rather than at once.
AT_NEXT_INSTRUCTION = frozenset({Event.INTERRUPT, Event.DPC, Event.DRIVER_LOAD,
                                 Event.CR3_LOAD, Event.THREAD_DISPATCH,
                                 Event.PROCESS_CREATE})


class ReverseExecution:
    """The going-back half of ``Session`` (see the module docstring)."""


    def reverse_step(self, count: int = 1) -> None:
        """Go back ``count`` instructions (re-executing from boot to there)."""
        if count <= 0:
            raise SessionError("the count must be positive")
        self._check_alive()
        self._need_factory()
        target = max(0, self.position - count)
        stop = None if target > 0 else Stop(StopReason.HISTORY_START,
                                            "at the start of history (boot)")
        self._accept_resume()
        self._rewind_to = Replay(target, stop)

    def reverse_next(self) -> None:
        """Go back one step; if that lands in a function called from here (its ``ret``),
        go back to before the ``call`` instead (gdb's reverse-nexti)."""
        self.reverse_step(1)
        proc = self.executive.current
        self._rewind_to.over = (self.executive.cpu.reg("rsp"), proc.pid if proc else None)

    def reverse_finish(self) -> None:
        """Go back to before the ``call`` of the current function (gdb's reverse-finish),
        found by the frame pointer as ``finish`` finds the return address."""
        self._check_alive()
        self._need_factory()
        self._rewind_to = self._call_search(self._return_slot())
        self._accept_resume()

    def _return_slot(self) -> int:
        """Where the current function's return address is: [rsp] on its first instruction
        or before its frame is set up, else [rbp + 8]."""
        cpu = self.executive.cpu
        rsp, rbp = cpu.reg("rsp"), cpu.reg("rbp")
        at_entry = self.target.symbolize(cpu.rip).find("+") < 0
        return rsp if at_entry or rbp < rsp else rbp + 8

    def _call_search(self, slot: int) -> Replay:
        """A search back for the ``call`` that pushed the return address at ``slot``: its
        instruction, with RSP at slot + 8 (SDM Vol. 1 6.4.1: CALL pushes, then jumps)."""
        try:
            ret = int.from_bytes(self.target.read_virtual(slot, 8), "little")
        except Exception as err:   # noqa: BLE001 - TargetError or a bad frame
            raise SessionError(f"cannot find the return address: {err}") from None
        call = self._call_before(ret)
        proc = self.executive.current
        return Replay(self.position, record=True, event=self._events,
                       call=(call, slot + 8, proc.pid if proc else None))

    def _call_before(self, ret: int) -> int:
        """The address of the ``call`` instruction that ends at ``ret``."""
        cpu = self.executive.cpu
        for size in range(2, 8):           # E8 rel32 is 5 bytes, FF /2 2 to 7
            insn = cpu.decode_at(ret - size)
            if insn is not None and insn.mnemonic == "call" and insn.size == size:
                return ret - size
        raise SessionError(f"no call instruction ends at the return address {ret:#x}")

    def _in_callee(self, rsp: int, pid: int | None) -> bool:
        """Whether the CPU is deeper in the stack of process ``pid`` than ``rsp``."""
        proc = self.executive.current
        return (proc.pid if proc else None) == pid and self.executive.cpu.reg("rsp") < rsp

    def _arm_search(self, replay: Replay) -> None:
        """For reverse-finish's search: an internal breakpoint on the call it looks for."""
        if replay.record and replay.call is not None:
            address, rsp, pid = replay.call
            self._add_internal(Breakpoint(
                0, address, pid, internal=True, reverse=True,
                guard=lambda: self.executive.cpu.reg("rsp") == rsp))

    def reverse_cont(self) -> None:
        """Go back to the last breakpoint or watchpoint hit before now."""
        self._check_alive()
        self._need_factory()
        self._accept_resume()
        if self.ended:               # search to the very end: its last events count too
            self._rewind_to = Replay(END_OF_HISTORY, record=True, event=END_OF_HISTORY)
        else:
            self._rewind_to = Replay(self.position, record=True, event=self._events)

    def _go_back(self) -> None:
        """Leave this position for an earlier one: resume the newest snapshot before it (this
        emulator then only waits), or rebuild the machine from boot."""
        replay = self._rewind_to
        ring = self.snapshots
        while ring is not None and (snapshot := ring.best(replay.target)) is not None:
            replay.origin = snapshot.position
            self._rewind_to = None
            try:
                ring.resume(snapshot, self._handover(replay))
            except SnapshotLost:         # killed from outside: an older one, or boot
                self._rewind_to = replay
                replay.origin = 0
        if ring is not None:
            ring.forget_all()
        raise Rewind()

    def _handover(self, replay: Replay) -> dict[str, Any]:
        """What a resumed snapshot needs to carry on this session."""
        return {"replay": replay, "breakpoints": self.breakpoints,
                "next_number": self._next_number,
                "front_end": self.front_end_state[0]() if self.front_end_state else None}

    def _restore(self, message: dict[str, Any]) -> None:
        """In a resumed snapshot: take over the session where the other emulator left it."""
        replay = message["replay"]
        self.breakpoints = message["breakpoints"]
        self._next_number = message["next_number"]
        self._rewind_to = None
        self._begin_replay(replay)
        self._install_hooks()
        self._arm_search(replay)
        if self.front_end_state is not None:
            self.front_end_state[1](message["front_end"])
        if self.on_resume is not None:
            self.on_resume()
        self.executive.rearm_budget()        # clipped to the target

    def _need_factory(self) -> None:
        if self.factory is None:
            raise SessionError("going back needs the machine's recipe (use emu debug)")

    def _rebuild(self) -> None:
        """Make the machine again from its recipe and set up the replay to the target."""
        replay, self._rewind_to = self._rewind_to, None
        assert replay is not None
        old = self.machine
        old.executive.debugger = None
        old.close()
        self._hooks = []                 # they died with the old engine
        self.machine = self.factory()
        self.target = LiveTarget(self.machine)
        self.result = None
        self._exceptions = 0
        self._events = 0
        replay.origin = 0
        self._begin_replay(replay)
        self._attach()
        self._arm_search(replay)

    def _begin_replay(self, replay: Replay) -> None:
        """The session's run state at the start of a re-execution (a resumed snapshot's, or
        a rebuilt machine's): nothing pending, no internal breakpoint, on its way to
        ``replay``'s target."""
        self.ended = False
        self._pending = None
        self._skip = None
        self._interrupt.clear()
        self._internal = []
        self._replay = replay
        self._deadline = replay.target
        if self.snapshots is not None:
            self.snapshots.going_to(replay.target)

    def _note_pending_hit(self, replay: Replay) -> None:
        if replay.pending_hit is not None:
            replay.hits.append(Hit(self.position, replay.pending_hit, self._events))
            replay.pending_hit = None

    def _end_record(self) -> None:
        """Reverse-continue's search reached its end: go to the last hit it saw."""
        self._rewind_to = self._last_hit(self._replay)
        self._replay = None
        self._go_back()

    @staticmethod
    def _last_hit(replay: Replay) -> Replay:
        hits = [h for h in replay.hits if h.key() < (replay.target, replay.event)]
        if hits:
            hit = hits[-1]
            return Replay(hit.position, hit.stop, event=hit.event, at_once=hit.at_once)
        if replay.origin > 0:            # nothing since that snapshot: search before it
            return Replay(replay.origin, record=True, call=replay.call)
        return Replay(0, Stop(StopReason.HISTORY_START, "no breakpoint, watchpoint or "
                               "catchpoint was hit before this point: at the start of history "
                               "(boot)"))

    def _replay_event(self, event: Event, details: dict[str, Any]) -> None:
        """An event met while re-executing: a search notes the catchpoints it would stop at;
        a replay whose target is this fault stops here, as the forward run did."""
        replay = self._replay
        if replay.record:
            stop = self._event_stop(event, details, count=False)
            if stop is not None:
                if event in AT_NEXT_INSTRUCTION or self.executive.running:
                    if replay.pending_hit is not None:   # a system call's entry and return
                        stop.description = replay.pending_hit.description + "; " + \
                            stop.description
                    replay.pending_hit = stop     # told at the next instruction boundary
                    if self.executive.running:    # where the forward run stopped for it
                        self.executive.cpu.native.stop_soon()
                else:
                    replay.hits.append(Hit(self.position, stop, self._events, True))
        if self.position < replay.target or self._events < replay.event:
            return
        if event is Event.EXCEPTION or (replay.at_once and self._events == replay.event):
            stop = self._due_stop()      # the fault (or the event) the forward run stopped at
            if stop is not None:
                self._pause(stop)
