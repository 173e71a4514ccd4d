"""The witness: listens to the executive's events (emu.nt.events), tells what happens in
plain words, and leaves marks for the timeline.

Every line it says comes from an event and the machine state at that moment: the thread
on the CPU, the page tables, the PFN database. It never changes what the guest does (the
only thing it adds is a memory-write hook while a DPC or a watched DriverEntry runs, which
records stores and lets them happen). It also keeps the facts the scenarios check: which
process an interrupt arrived in, where a DPC's stores landed, what watched pages held.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from emu.fmt import addr
from emu.hw.exceptions import Vector
from emu.nt.drivers import driver_at
from emu.nt.events import Event
from emu.nt.kernel import DEVICE_IRQL, DISPATCH_LEVEL
from emu.nt.layout import KERNEL_SPACE_START, USER_SPACE_END
from emu.nt.mm import softpte
from emu.nt.mm.virtual import FaultResolution
from emu.nt.process import Process, ProcessState
from emu.scenarios import describe
from emu.scenarios.args import result_words, service_words
from emu.scenarios.timeline import DISK_LANE, SYSTEM_LANE, Mark, MarkKind
from emu.scenarios.watch import (
    WriteRun,
    WriteWatch,
    frame_words,
    is_bookkeeping,
    read_user,
    text_of,
)

if TYPE_CHECKING:
    from emu.nt.drivers import Driver
    from emu.scenarios.stage import Act

_PTE_STORY = {
    softpte.PteState.PAGEFILE: "in the pagefile: a hard fault reads it back into",
    softpte.PteState.TRANSITION: "trimmed, but still in RAM: a soft fault maps again",
}
_DEMAND_ZERO = "committed, never touched: the memory manager maps a zeroed"
_FAULT_WORDS = {MarkKind.FAULTS: ("#PF", "page faults resolved in RAM (demand zero, or a "
                                  "page taken back off a list)"),
                MarkKind.HARD_FAULTS: ("from disk", "hard page faults: pages read back from "
                                       "the pagefile"),
                MarkKind.PAGE_OUT: ("to disk", "pages written to the pagefile")}


@dataclass
class PageWatch:
    """A few bytes of one process's page, read at every event to see when they change."""

    proc: Process
    va: int
    size: int
    last: bytes | None = None
    history: list[tuple[int, bytes]] = field(default_factory=list)   # (mark seq, bytes)


@dataclass(frozen=True)
class DpcRecord:
    """A DPC that ran: in whose context, and where its stores landed."""

    routine: str
    interrupted: int | None      # pid of the thread it interrupted (None: the idle system)
    cr3: int                     # the address space it ran in
    runs: tuple[WriteRun, ...]   # its data stores (stack and own-driver stores left out)


class Witness:
    """One act's observer: narration lines through ``say``, timeline marks in ``marks``."""

    def __init__(self, act: Act, say: Callable[[str], None]) -> None:
        self.act = act
        self.ex = act.machine.executive
        self._say = say
        self.marks: list[Mark] = []
        self.dpcs: list[DpcRecord] = []
        self.driver_writes: dict[str, tuple[WriteRun, ...]] = {}
        self.interrupted: list[int | None] = []
        self.cr3_loads: list[int] = []
        self.syscalls: list[tuple[int, int, tuple[int, ...], int | None]] = []
        self.pages: list[PageWatch] = []
        self._watch = WriteWatch(self.ex)
        self._watched_driver: Driver | None = None
        self._dpc: int | None = None
        self._entry: dict[int, str] = {}            # tid -> the narrated call's arguments
        self._user_fault: dict[int, Any] = {}       # pid -> its last ring-3 CpuException
        self._pte_before: dict[int, int | None] = {}  # pid -> PTE of the faulting page
        self._kernel_fault = None
        self._last_dispatched: Process | None = None
        self._console: dict[int | None, bytearray] = {}
        self._driver_marks: dict[str, int] = {}     # image name -> its DriverEntry's mark
        self._pages_written = self.ex.mm.pager.counters.pages_written
        self._handlers = {
            Event.DRIVER_LOAD: self._driver_load, Event.PROCESS_CREATE: self._create,
            Event.PROCESS_EXIT: self._exit, Event.THREAD_DISPATCH: self._dispatch,
            Event.SYSCALL: self._syscall, Event.SYSCALL_RETURN: self._syscall_return,
            Event.EXCEPTION: self._exception, Event.PAGE_FAULT: self._page_fault,
            Event.INTERRUPT: self._interrupt, Event.DPC: self._dpc_start,
            Event.KERNEL_CALL_DONE: self._call_done, Event.CR3_LOAD: self._cr3,
            Event.BUGCHECK: self._bugcheck}

    # -- plumbing --------------------------------------------------------------------------

    def __call__(self, event: Event, details: dict[str, Any]) -> None:
        self._clock = details["clock"]
        dpc_done = event is Event.KERNEL_CALL_DONE and details["routine"] == self._dpc
        self._handlers[event](details)
        if event is not Event.CR3_LOAD and self.pages:
            self._sample(details.get("thread"), dpc_done)
        self._page_outs()

    def say(self, who: str, where: str, text: str) -> None:
        """One narration line: who (process), where (ring, IRQL, console), what."""
        self._say(f"  {who:<18} {where:<10} {text}")

    def mark(self, kind: MarkKind, lane: int, label: str, detail: str = "",
             target: int | None = None, *, stray: bool = False,
             target_seq: int | None = None) -> None:
        """Leave a mark on the timeline (page faults and page-outs: ``count``)."""
        self.marks.append(Mark(len(self.marks), self._clock, kind, lane, label,
                               detail or label, target, stray=stray, target_seq=target_seq))

    def count(self, kind: MarkKind, lane: int, n: int = 1) -> None:
        """Add ``n`` page faults or page-outs to the lane's last mark of ``kind`` when only
        such counts came after it (paging interleaves them), else leave a new mark."""
        word, detail = _FAULT_WORDS[kind]
        for i in range(len(self.marks) - 1, -1, -1):
            last = self.marks[i]
            if last.kind not in _FAULT_WORDS:
                break
            if last.kind is kind and last.lane == lane:
                n += last.count
                self.marks[i] = Mark(last.seq, last.clock, kind, lane, f"{n} {word}",
                                     f"{n} {detail}", count=n)
                return
        self.marks.append(Mark(len(self.marks), self._clock, kind, lane, f"{n} {word}",
                               f"{n} {detail}", count=n))

    def _page_outs(self) -> None:
        """Pages the modified-page writer put in the pagefile since the last event."""
        written = self.ex.mm.pager.counters.pages_written
        if written > self._pages_written:
            self.count(MarkKind.PAGE_OUT, DISK_LANE, written - self._pages_written)
        self._pages_written = written

    def watch_page(self, proc: Process, va: int, size: int = 48) -> PageWatch:
        """Follow ``size`` bytes at ``va`` in ``proc``: each change is told and marked."""
        watch = PageWatch(proc, va, size)
        self.pages.append(watch)
        return watch

    def console(self, proc: Process | None, data: bytes) -> None:
        """Bytes written to the console (a process) or by DbgPrint (None), told by line."""
        key = proc.pid if proc is not None else None
        buffer = self._console.setdefault(key, bytearray())
        buffer += data
        while b"\n" in buffer:
            line, _, rest = bytes(buffer).partition(b"\n")
            buffer[:] = rest
            self._console_line(proc, line.decode("utf-8", "replace"))

    def _console_line(self, proc: Process | None, line: str) -> None:
        if proc is None:
            self.say(describe.who(self.ex.current), "DbgPrint", line)
        else:
            self.say(describe.who(proc), "console", line)

    def finish(self) -> None:
        """After the run: stop any write watch, say what is left in console buffers."""
        self._stop_driver_watch()
        if self._watch.active:
            self._watch.stop()
        for key, buffer in self._console.items():
            if buffer:
                proc = next((p for p in self.ex.processes if p.pid == key), None)
                self._console_line(proc, buffer.decode("utf-8", "replace"))
                buffer.clear()

    def _lane_name(self, pid: int) -> str:
        proc = next((p for p in self.ex.processes if p.pid == pid), None)
        return proc.name if proc is not None else "kernel pool"

    @staticmethod
    def _proc(thread) -> Process | None:
        return thread.process if thread is not None else None

    # -- processes and threads -------------------------------------------------------------

    def _create(self, d: dict[str, Any]) -> None:
        proc = d["process"]
        bits = " 32-bit," if proc.bits == 32 else ""
        self.say(describe.who(proc), "created", f"a{bits} process with its own page tables: "
                 f"CR3 {addr(proc.space.cr3)} (the kernel half is shared)")

    def _dispatch(self, d: dict[str, Any]) -> None:
        self._stop_driver_watch()
        proc = d["thread"].process
        self.mark(MarkKind.RUN, proc.pid, "", f"{describe.who(proc)} on the CPU")
        if self.act.dispatches and (proc is not self._last_dispatched or
                                    d["thread"].context is None):
            thread = d["thread"]
            if thread.context is None and thread is proc.threads[0]:
                text = f"starts: CR3 := {addr(proc.space.cr3)} (its page tables), iretq to ring 3"
            elif thread.context is None:
                text = f"its thread {thread.tid} starts, in the same address space"
            else:
                text = f"back on the CPU: CR3 := {addr(proc.space.cr3)}"
            self.say(describe.who(proc), "ring 0->3", text)
        self._last_dispatched = proc

    def _exit(self, d: dict[str, Any]) -> None:
        proc = d["process"]
        who = describe.who(proc)
        info = proc.exception
        if info is None:
            self.mark(MarkKind.EXIT, proc.pid, f"exit {proc.exit_status}")
            self.say(who, "exit", f"exits with status {proc.exit_status}")
            return
        self.mark(MarkKind.EXCEPTION, proc.pid, info.name.removeprefix("STATUS_"),
                  describe.exception(info))
        self.mark(MarkKind.EXIT, proc.pid, "killed", f"ended by {info.name}")
        self.say(who, "ring 3", describe.exception(info))
        exc = self._user_fault.get(proc.pid)
        if self.act.explain_walks and exc is not None:
            self._explain(who, exc, info)
        self.say(who, "ring 0", f"no handler: the executive ends this process only "
                 f"(exit status {info.code:#010x})")

    def _explain(self, who: str, exc, info) -> None:
        """Why the CPU refused: the page walk level by level (emu.hw.mmu's steps), or the
        privilege check that needs no walk."""
        if exc.vector == Vector.GP and exc.address is not None:
            self.say(who, "CPU", f"no walk at all: {addr(exc.address)} is not canonical (bits "
                     "63..47 are not all equal): #GP before any page table is read")
            return
        if exc.vector != Vector.PF:
            why = f"`{info.instruction}` needs CPL 0" if exc.vector == Vector.GP else \
                info.detail or "refused"
            self.say(who, "CPU", f"{describe.VECTOR_WORD.get(exc.vector, exc.vector)}: CPL "
                     f"= CS & 3 = {exc.cpl}, and {why}; the instruction does not run")
            return
        self.say(who, "MMU", f"the walk of {addr(exc.address or 0, ticks=True)} with CR3 "
                 f"{addr(self.ex.cpu.cr3)}:")
        for line in describe.walk_lines(exc.walk, describe.blocking_level(exc.reason)):
            self.say("", "", "  " + line)
        self.say(who, "MMU", f"{exc.reason}; #PF error code {describe.error_code(exc.error_code)}")

    # -- system calls and faults -----------------------------------------------------------

    def _syscall(self, d: dict[str, Any]) -> None:
        thread, number = d["thread"], d["number"]
        self.mark(MarkKind.SYSCALL, thread.process.pid, describe.service(number),
                  f"{describe.service(number)} (ring 3 -> ring 0 -> ring 3)")
        if number in self.act.syscalls:
            self._entry[thread.tid] = service_words(thread.process, number, d["args"])
        self._args = d["args"]

    def _syscall_return(self, d: dict[str, Any]) -> None:
        thread, number, result = d["thread"], d["number"], d["result"]
        self.syscalls.append((thread.process.pid, number, self._args, result))
        if thread.tid not in self._entry:
            return
        before = self._entry.pop(thread.tid)
        after = result_words(thread.process, number, self._args, result)
        self.say(describe.who(thread.process), "ring 3->0",
                 f"{describe.service(number)}({before}) -> {describe.status(result)}{after}")

    def _exception(self, d: dict[str, Any]) -> None:
        exc, thread = d["exc"], d["thread"]
        if exc.cpl != 3:
            self._kernel_fault = exc
            return
        proc = thread.process
        self._user_fault[proc.pid] = exc
        if exc.vector == Vector.PF and exc.address is not None and \
                exc.address < USER_SPACE_END:
            self._pte_before[proc.pid] = proc.space.pte(exc.address)

    def _in_fault_range(self, va: int | None) -> bool:
        return va is not None and any(lo <= va < hi for lo, hi in self.act.fault_ranges)

    def _page_fault(self, d: dict[str, Any]) -> None:
        exc, proc = d["exc"], d["thread"].process
        if d["resolution"] is not FaultResolution.RESOLVED:
            return
        self._user_fault.pop(proc.pid, None)
        before = self._pte_before.pop(proc.pid, None)
        state = softpte.decode(before).state if before else softpte.PteState.ZERO
        # A hard fault is one the pagefile resolves (Windows Internals, "Page fault
        # handling"): the PTE named a pagefile slot, so the page is read from disk.
        hard = state is softpte.PteState.PAGEFILE
        self.count(MarkKind.HARD_FAULTS if hard else MarkKind.FAULTS, proc.pid)
        if not self._in_fault_range(exc.address):
            return
        mapping = proc.space.lookup(exc.address)
        frame = addr(mapping.pfn) if mapping is not None else "?"
        story = _PTE_STORY.get(state, _DEMAND_ZERO)
        self.say(describe.who(proc), "ring 3", f"#PF {describe.ACCESS_WORD[exc.access]} "
                 f"{addr(exc.address, ticks=True)} ({exc.reason}): {story} frame {frame}")

    # -- drivers, interrupts, DPCs ---------------------------------------------------------

    def _driver_load(self, d: dict[str, Any]) -> None:
        self._stop_driver_watch()
        driver = d["driver"]
        name = driver.image.name
        self.mark(MarkKind.DRIVER, SYSTEM_LANE, name, f"DriverEntry of {name} at ring 0")
        self._driver_marks[name] = self.marks[-1].seq
        self.say("system", "ring 0", f"{name} mapped at {addr(driver.image.base, ticks=True)} "
                 "in the shared kernel half; its DriverEntry runs at ring 0, in no process")
        if self.act.watch_driver == name:
            self._watched_driver = driver
            self._watch.start()

    def _stop_driver_watch(self) -> None:
        driver, self._watched_driver = self._watched_driver, None
        if driver is None:
            return
        runs = tuple(r for r in self._watch.stop() if not is_bookkeeping(self.ex, r, driver))
        self.driver_writes[driver.image.name] = runs
        for run in runs:
            words = frame_words(self.ex, run)
            self.say("system", "ring 0", f"{driver.image.name} stored {len(run.data)} bytes at "
                     f"{addr(run.va, ticks=True)} -> {words}")
            # Nothing isolates one driver from another (the seed): a store into another
            # driver's image, or into a process's page, is stray.
            hit = driver_at(self.ex, run.va)
            other = hit is not None and hit is not driver
            target = run.owner if run.owner is not None else SYSTEM_LANE
            where = hit.image.name if other else self._lane_name(target)
            self.mark(MarkKind.WRITE, SYSTEM_LANE, f"{len(run.data)} bytes -> {where}",
                      f"{driver.image.name} stored {len(run.data)} bytes at {addr(run.va)}: "
                      f"{words}", target, stray=other or run.owner is not None,
                      target_seq=self._driver_marks.get(hit.image.name) if other else None)

    def _interrupt(self, d: dict[str, Any]) -> None:
        proc = self._proc(d["thread"])
        lane = proc.pid if proc is not None else SYSTEM_LANE
        self.interrupted.append(proc.pid if proc is not None else None)
        where = f"while {describe.who(proc)} runs" if proc else "while the CPU is idle"
        isr = describe.symbol(self.ex, d["isr"])
        self.mark(MarkKind.INTERRUPT, lane, "IRQ", f"interrupt {d['vector']:#x}: {isr}")
        self.say(describe.who(proc), f"IRQL {DEVICE_IRQL}", f"device interrupt "
                 f"{d['vector']:#x} {where}: its ISR {isr} runs at ring 0 on this thread")

    def _dpc_start(self, d: dict[str, Any]) -> None:
        proc = self._proc(d["thread"])
        self._dpc = d["routine"]
        lane = proc.pid if proc is not None else SYSTEM_LANE
        space = proc.space if proc is not None else self.ex.mm.system
        name = describe.symbol(self.ex, self._dpc)
        self.mark(MarkKind.DPC, lane, "DPC", f"{name} at DISPATCH_LEVEL")
        self.say(describe.who(proc), f"IRQL {DISPATCH_LEVEL}", f"DPC {name} runs at "
                 f"DISPATCH_LEVEL with CR3 {addr(space.cr3)}: "
                 f"{describe.who(proc)}'s address space, whoever asked for the I/O")
        self._dpc_space, self._dpc_proc = space, proc
        if self.act.watch_dpc_writes:
            self._watch.start()

    def _call_done(self, d: dict[str, Any]) -> None:
        if d["routine"] != self._dpc:
            return
        self._dpc = None
        runs: tuple[WriteRun, ...] = ()
        proc = self._dpc_proc
        if self._watch.active:
            own = driver_at(self.ex, d["routine"])
            runs = tuple(r for r in self._watch.stop() if not is_bookkeeping(self.ex, r, own))
        lane = proc.pid if proc is not None else SYSTEM_LANE
        for run in runs:
            words = frame_words(self.ex, run)
            self.say(describe.who(proc), f"IRQL {DISPATCH_LEVEL}", f"the DPC stored "
                     f"{len(run.data)} bytes at {addr(run.va, ticks=True)} -> {words}")
            target = run.owner if run.owner is not None else SYSTEM_LANE
            # A DPC runs in an arbitrary thread's context, so it must not use a user-mode
            # address (Microsoft, "Introduction to DPC Objects"; the seed's step 4).
            self.mark(MarkKind.WRITE, lane, f"{len(run.data)} bytes -> "
                      f"{self._lane_name(target)}",
                      f"the DPC stored {len(run.data)} bytes at {addr(run.va)}: {words}",
                      target, stray=run.va < KERNEL_SPACE_START)
        self.dpcs.append(DpcRecord(describe.symbol(self.ex, d["routine"]),
                                   proc.pid if proc is not None else None,
                                   self._dpc_space.cr3, runs))

    def _cr3(self, d: dict[str, Any]) -> None:
        self.cr3_loads.append(d["new"])

    def _bugcheck(self, d: dict[str, Any]) -> None:
        self._stop_driver_watch()
        if self._watch.active:
            self._watch.stop()
        bc = d["bugcheck"]
        proc = self.ex.current
        lane = proc.pid if proc is not None else SYSTEM_LANE
        exc, self._kernel_fault = self._kernel_fault, None
        if exc is not None:
            self.say(describe.who(proc), "ring 0", describe.kernel_fault(exc, bc))
        params = ", ".join(addr(p) for p in bc.params)
        self.mark(MarkKind.BUGCHECK, lane, f"BUG CHECK {bc.code:#x}",
                  f"{bc.name} ({params}) in {bc.location or 'the kernel'}")
        self.say(describe.who(proc), "ring 0", f"*** bug check {bc.code:#x} {bc.name} "
                 f"({params}): a ring-0 fault has no smaller owner than the whole machine; "
                 "everything stops")

    # -- watched pages ---------------------------------------------------------------------

    def _sample(self, thread, dpc_done: bool) -> None:
        for watch in self.pages:
            if watch.proc.state is ProcessState.TERMINATED:
                continue
            data = read_user(watch.proc, watch.va, watch.size)
            if data is None or data == watch.last:
                continue
            fresh = watch.last is None and not data.strip(b"\0")
            watch.last = data
            if fresh:
                continue                  # a demand-zero page appearing: nothing to tell
            if dpc_done:
                context = f"written during the DPC, in {describe.who(self._dpc_proc)}'s context"
            else:
                context = f"changed while {describe.who(self._proc(thread))} had the CPU"
            self.mark(MarkKind.PAGE, watch.proc.pid, "page", f'{addr(watch.va)} now holds '
                      f'"{text_of(data)}" ({context})')
            watch.history.append((self.marks[-1].seq, data))
            self.say(describe.who(watch.proc), "memory", f'its page {addr(watch.va, ticks=True)}'
                     f' now holds "{text_of(data)}" ({context})')

    _dpc_proc: Process | None = None
    _args: tuple[int, ...] = ()
    _clock = 0
