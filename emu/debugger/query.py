"""Who touched this memory, and when: ``history write|read|access`` over the whole past.

A query re-executes the machine from boot to the debugger's current position in a
machine of its own, built by the same recipe (the machine is deterministic to the
instruction, so it takes the very path the user's machine took), with Unicorn memory hooks
on the watched frames only: Unicorn's memory hooks see physical addresses (the TLB hook
translated them), so a hook on a frame sees every access to it, through any mapping, at any
ring, in any address space: a DPC's, an ISR's, an MDL alias's. The user's machine is not
touched: the query leaves the user exactly where they were.

* ``phys``: the hooks sit on the physical range; every access to it is an answer.
* A virtual range of process N (a user address: the current process unless ``pid N``; a
  kernel address: the shared kernel half): the frames its pages map to in N's page tables
  are hooked, and hooked again whenever the mapping may have changed (before each run of
  the CPU and at each executive event: a page fault, a system call's return, an address
  space switch); an access is an answer when it is made in N's address space (CR3 is N's,
  for a user address) to a frame that one of the range's pages maps to there. An access to
  the frame through another mapping (an MDL's system address) is not an access to that
  virtual range: ask ``phys`` for those.

Each answer is an ``Access``: its position (the instructions and exceptions completed
before the accessing instruction: ``goto`` that position puts RIP on it, before it runs),
pid, tid, ring, IRQL, CR3, RIP, the instruction, and for a write the old and new value.

The executive's own stores are answers too (a write, ring 0, "by the executive: <what>"):
Unicorn's hooks see only instructions, so the query's machine (and no other) gets its own
PhysicalMemory.write and write_u64, the one way the executive's Python code stores into
guest RAM; the Python stack at the store says what it was doing (``executive_writer``).

What a query learnt is kept (``QueryIndex``): every access to the pages it hooked, up to
the position it ran to; a later query over the same pages at or before that position is
answered from the index without re-executing. The query's machine stays paused there (it
runs in a thread of its own and waits inside the session's stop, as the debugger's shell
waits): a later query over the same pages further on runs it on from there, which is
exact (the same machine, going on). Why not the debugger's snapshots: one holds the
machine at its position, not the accesses before it, so it could only extend what the
index knows, and the paused machine does that without a fork, a pipe and the user's
session state. Memory is bounded (docs/limits.md).
"""

from __future__ import annotations

import os
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from unicorn import (
    UC_CTL_IO_WRITE,
    UC_CTL_TLB_FLUSH,
    UC_HOOK_MEM_READ,
    UC_HOOK_MEM_WRITE,
    UC_MEM_WRITE,
)

from emu.debugger.session import Session
from emu.debugger.stops import Stop
from emu.hw import mmu
from emu.nt import layout
from emu.nt.mm.pfn import FrameUse
from emu.nt.process import ProcessState

if TYPE_CHECKING:
    from emu.machine import Machine

PAGE = layout.PAGE_SIZE
MAX_ACCESSES = 100_000        # accesses one query records (docs/limits.md)
MAX_INDEX_ACCESSES = 200_000  # accesses the index keeps, all pages (about 350 B each: 70 MiB)
STORE_UNIT = 64               # an executive's store counts one access per 64 bytes it covers
MAX_LIVE_RECORDERS = 2        # query machines kept paused to run on (docs/limits.md)
MAX_LENGTH = 1 << 20          # a query covers 1 byte to 1 MiB, as a watchpoint
KINDS = ("write", "read", "access")
USAGE = "history write|read|access ADDR [LEN] [pid N | phys] [--json]"


class QueryError(ValueError):
    """A query that cannot be answered: one line."""


def parse_pid(text: str, pids: set[int], error: type[ValueError] = QueryError) -> int:
    """A process id the machine has created by now (``pids``); ``error`` otherwise."""
    try:
        pid = int(text, 0)
    except ValueError:
        raise error(f"pid {text}: not a process id (a number; see ps)") from None
    if pid not in pids:
        known = ", ".join(str(p) for p in sorted(pids)) or "none"
        raise error(f"pid {pid}: no such process in this machine's history "
                    f"(processes: {known})")
    return pid


@dataclass(frozen=True, slots=True)
class Access:
    """One memory access of the past (see the module docstring)."""

    position: int          # steps completed before the accessing instruction
    kind: str              # "read" or "write"
    pa: int                # the physical address accessed
    va: int | None         # the virtual address in the query's range (None: a phys query)
    size: int
    old: int | None        # a write's value before it (little-endian), else None
    new: int | None        # a write's value, or None for a read
    pid: int | None        # the thread's process (None: no thread, as in DriverEntry)
    tid: int | None
    ring: int              # CPL: CS's RPL (SDM Vol. 3A 5.5)
    irql: int
    cr3: int
    rip: int
    instruction: str       # "mov dword ptr [rax], ecx" (Capstone's syntax), or for the
    #                        executive's own store "by the executive: <what>"
    executive: bool = False  # a store of the executive's Python code, not an instruction

    def json(self, symbol: str) -> dict[str, Any]:
        """The JSON record of this access (docs/debugger.md, "history write")."""
        return {"position": self.position, "access": self.kind, "pa": self.pa,
                "va": self.va, "size": self.size, "old": self.old, "new": self.new,
                "pid": self.pid, "tid": self.tid, "ring": self.ring, "irql": self.irql,
                "cr3": self.cr3, "rip": self.rip, "symbol": symbol,
                "instruction": self.instruction, "executive": self.executive}


@dataclass(frozen=True)
class Query:
    """``kind`` accesses to [address, address + length): physical, or virtual in ``pid``
    (None: a kernel address, the same in every address space)."""

    kind: str
    address: int
    length: int
    pid: int | None
    physical: bool

    def pages(self) -> list[tuple]:
        """The index keys of the pages this query covers."""
        first, last = self.address // PAGE, (self.address + self.length - 1) // PAGE
        space = "phys" if self.physical else self.pid
        return [(space, p) for p in range(first, last + 1)]

    def wants(self, a: Access) -> bool:
        """Whether ``a`` (an access to one of this query's pages) is an answer."""
        if self.kind != "access" and a.kind != self.kind:
            return False
        at = a.pa if self.physical else a.va
        return at is not None and at < self.address + self.length and self.address < at + a.size


def parse(words: list[str], pids: set[int], current_pid: int | None,
          evaluate: Callable[[str], int], ram: int) -> tuple[Query, bool]:
    """``KIND ADDR [LEN] [pid N | phys] [--json]`` -> (query, json); QueryError otherwise.
    ``evaluate`` reads an address expression (raises ValueError with one line); ``ram``:
    the bytes of physical memory."""
    kind = words[0]
    rest = [w for w in words[1:] if w != "--json"]
    as_json = len(rest) != len(words) - 1
    if not rest:
        raise QueryError(f"history {kind} needs an address ({USAGE})")
    address = _number(evaluate, rest.pop(0), "address")
    length = 1
    if rest and rest[0] not in ("pid", "phys"):
        length = _number(evaluate, rest.pop(0), "length")
        if not 1 <= length <= MAX_LENGTH:
            raise QueryError(f"length {length:#x}: a query covers 1 byte to 1 MiB")
    pid, physical = None, False
    if rest and rest[0] == "phys":
        rest.pop(0)
        physical = True
    elif rest and rest[0] == "pid":
        rest.pop(0)
        if not rest:
            raise QueryError("pid needs a process id (see ps)")
        pid = parse_pid(rest.pop(0), pids)
    if rest:
        raise QueryError(f"unexpected {rest[0]!r} ({USAGE})")
    if address + length > 1 << 64:
        raise QueryError(f"{address:#x} + {length:#x} runs past the end of the address space")
    if physical:
        if address + length > ram:
            raise QueryError(f"physical {address:#x}..{address + length - 1:#x} is beyond "
                             f"RAM (0x0..{ram - 1:#x})")
    elif address >= layout.KERNEL_SPACE_START:
        pid = None                       # the kernel half is the same in every space
    elif address + length > layout.USER_SPACE_END:
        raise QueryError(f"{address:#x}: not a canonical address (user space ends at "
                         "0x7fffffffffff)")
    elif pid is None:
        if current_pid is None:
            raise QueryError(f"{address:#x} is a user address, and no process is current: "
                             "say whose (pid N), or ask phys")
        pid = current_pid
    return Query(kind, address, length, pid, physical), as_json


def _number(evaluate: Callable[[str], int], text: str, what: str) -> int:
    try:
        return evaluate(text)
    except ValueError as err:
        raise QueryError(f"{what} {text}: {err}") from None


# The executive's own stores into guest RAM, named for the user: the nearest caller on the
# Python stack that has a name here says what it was doing (its locals give the IRP, the
# slot); else the innermost caller outside the store helpers, as "module.function".
def _io_finish(here: dict[str, Any], inner: dict[str, dict[str, Any]]) -> str | None:
    irp = here.get("irp")
    at = inner.get("probe_and_write", {}).get("address")
    if at is not None and at == here.get("out"):
        return f"I/O manager: the read's byte count to the caller (IRP {irp:#x})"
    return f"I/O manager: buffered read completion copy (IRP {irp:#x})"


_WRITERS: dict[str, Callable[[dict[str, Any], dict[str, dict[str, Any]]], str | None]] = {
    "emu.nt.io._finish": _io_finish,
    "emu.nt.io._write_iosb": lambda _h, _i: "I/O manager: the I/O status block to the caller",
    "emu.nt.mm.paging.page_in":
        lambda h, _i: f"memory manager: page-in from pagefile slot {h.get('slot')}",
    "emu.nt.mm.address_space.allocate_frame": lambda _h, _i: "memory manager: a new page zeroed",
    "emu.nt.mm.address_space.map_new": lambda _h, _i: "memory manager: a new page's contents",
    "emu.nt.kuser._write_times": lambda _h, _i: "KUSER_SHARED_DATA: the clock (InterruptTime, "
                                   "SystemTime, TickCount)",
    "emu.nt.ps._map_main_stack": lambda _h, _i: "process creation: the main thread's "
                                                "arguments on its stack",
    "emu.nt.io._new_irp": lambda _h, _i: "I/O manager: a new IRP (IoAllocateIrp)",
    "emu.nt.io._requested_by": lambda h, _i: f"I/O manager: the IRP's thread "
                                             f"(IRP {h['record'].address:#x})",
    "emu.nt.io._new_file_object": lambda _h, _i: "I/O manager: a new FILE_OBJECT",
    "emu.nt.io.create_device": lambda _h, _i: "I/O manager: a new DEVICE_OBJECT "
                                              "(IoCreateDevice)",
    "emu.nt.io.new_driver_object": lambda _h, _i: "I/O manager: the DRIVER_OBJECT",
    "emu.nt.io.invalid_device_request":
        lambda _h, _i: "I/O manager: IopInvalidDeviceRequest's status in the IRP",
    "emu.nt.eprocess.of": lambda _h, _i: "object manager: the process's EPROCESS",
    "emu.nt.eprocess.thread_of": lambda _h, _i: "object manager: the thread's ETHREAD",
    "emu.nt.eprocess._signal": lambda _h, _i: "object manager: the process signalled "
                                              "(its end)",
    "emu.nt.kintr.insert_queue_dpc": lambda h, _i: f"KeInsertQueueDpc: the KDPC at "
                                                   f"{h['dpc']:#x} queued",
    "emu.nt.kintr.initialize_dpc": lambda h, _i: f"KeInitializeDpc: the KDPC at "
                                                 f"{h['dpc']:#x}",
    "emu.nt.kintr.drain_dpcs": lambda _h, _i: "the DPC queue drained: a KDPC dequeued",
    "emu.nt.dispatch.deliver": lambda _h, _i: "exception dispatch: the record and context on the "
                                         "user stack",
}
_HELPERS = ("probe_and_write", "write_user", "kernel_write", "write", "write_u64", "zero",
            "_store", "_write_u64")


# Who made a new page: a name above is generic ("a new page zeroed"); one of these further
# out on the stack says what the page is for (an image, a stack, KUSER_SHARED_DATA).
_PAGE_MAKERS: dict[str, Callable[[dict[str, Any]], str]] = {
    "emu.nt.ps._map_image": lambda h: f"loader: {h['image'].name}'s image, the page at "
                                      f"{h['va']:#x}",
    "emu.nt.drivers.start": lambda h: f"loader: {h['image'].name}'s image, the page at "
                                      f"{h['va']:#x}",
    "emu.nt.ps._map_main_stack": lambda _h: "process creation: the main thread's stack",
    "emu.nt.kuser.map_shared_data": lambda _h: "KUSER_SHARED_DATA made",
}
_GENERIC = ("emu.nt.mm.address_space.allocate_frame", "emu.nt.mm.address_space.map_new")


def executive_writer(frame: Any) -> str:
    """What the executive was doing, from the Python stack at its store: the innermost
    caller named in _WRITERS (a new page's maker further out, _PAGE_MAKERS, names it
    better), else the innermost one outside the store helpers, as module.function."""
    inner: dict[str, dict[str, Any]] = {}
    fallback = generic = None
    f = frame
    while f is not None:
        name = f.f_code.co_name
        module = f.f_globals.get("__name__", "")
        if module.startswith("emu.") and module != __name__:
            where = f"{module}.{name}"
            if generic is not None:
                maker = _PAGE_MAKERS.get(where)
                if maker is not None:
                    return maker(f.f_locals)
            else:
                namer = _WRITERS.get(where)
                text = namer(f.f_locals, inner) if namer is not None else None
                if text is not None:
                    if where not in _GENERIC:
                        return text
                    generic = text
            if fallback is None and name not in _HELPERS:
                fallback = where
            inner.setdefault(name, f.f_locals)
        f = f.f_back
    return generic or fallback or "?"


def _clip(a: Access, query: Query) -> Access:
    """An executive's store (up to a page: a copy, a page-in) cut to the query's range,
    its old and new values with it."""
    at = a.pa if query.physical else a.va
    assert at is not None
    lo, hi = max(at, query.address), min(at + a.size, query.address + query.length)
    if (lo, hi) == (at, at + a.size):
        return a
    shift, mask = 8 * (lo - at), (1 << 8 * (hi - lo)) - 1
    va = None if a.va is None else a.va + lo - at
    return replace(a, pa=a.pa + lo - at, va=va, size=hi - lo,
                   old=(a.old or 0) >> shift & mask, new=(a.new or 0) >> shift & mask)


def weight(a: Access) -> int:
    """What ``a`` counts against MAX_ACCESSES and MAX_INDEX_ACCESSES: 1, or for a store of
    the executive (up to a page, its old and new values with it) one per STORE_UNIT bytes."""
    return -(-a.size // STORE_UNIT) if a.executive else 1


class _Closed(Exception):
    """The paused query's machine is being released."""


class _TooMany(Exception):
    """The query's machine recorded MAX_ACCESSES accesses."""


class Recorder(Session):
    """A query's own machine, re-executed from boot to ``target`` under a headless session,
    recording every access to ``query``'s pages (see the module docstring)."""

    def __init__(self, machine: Machine, query: Query, target: int) -> None:
        machine.executive.console = None        # its output was shown the first time
        self.query = query
        self.goal = target
        self.accesses: list[Access] = []
        self.weight = 0                      # the accesses' count (see ``weight``)
        self.truncated = False
        self._mem_hooks: list[int] = []
        self._frames: dict[int, int | None] = {}    # frame -> virtual page base (None: phys)
        self._decoded: dict[tuple[int, int], str] = {}
        self._thread: threading.Thread | None = None
        self._reached, self._go = threading.Event(), threading.Event()
        self._paused = self._closing = False
        self._error: BaseException | None = None
        super().__init__(machine, self._on_stop)
        self.executive.events.subscribe(lambda _event, _details: self._refresh())
        self._refresh()
        self._watch_executive()

    def record(self) -> list[Access]:
        """Run to the target; the accesses to the query's pages, in order. The machine then
        stays paused there (``extend`` runs it on) until ``close``."""
        if self.goal > 0:
            self._thread = threading.Thread(target=self._main, name="emu-query", daemon=True)
            self._thread.start()
            self._wait()
        return self.accesses

    def extend(self, target: int) -> None:
        """Run on from the position it is paused at to ``target`` (later): the accesses of
        that span are added to ``accesses``. The same machine going on is the path a
        re-execution from boot would take (the machine is deterministic)."""
        if not self.paused or target <= self.position:
            raise ValueError("the query's machine cannot run on to that position")
        self.goal = target
        self._reached.clear()
        self._go.set()
        self._wait()

    @property
    def paused(self) -> bool:
        """Whether it is paused at its goal, able to run on (not ended, cut or closed)."""
        return self._paused

    def close(self) -> None:
        """End the paused run (if any) and release the machine."""
        thread = self._thread
        if thread is not None and thread.is_alive():
            self._closing = True
            self._go.set()
            thread.join()
        mem = self.executive.mem
        if "write" in vars(mem):
            del mem.write, mem.write_u64          # the class's own methods again
        super().close()

    def _main(self) -> None:
        """The run, in a thread of its own: it pauses at each goal inside the session's
        stop (as the debugger's shell pauses a machine), so that it can go on later."""
        try:
            self.step(self.goal)
            self.run()
        except _Closed:
            pass
        except _TooMany:
            self.truncated = True
        except BaseException as err:        # handed to the caller (a bug of the engine)
            self._error = err
        finally:
            self._paused = False
            self._reached.set()

    def _wait(self) -> None:
        """Wait for the run to reach its goal (or end); Ctrl-C stops it."""
        try:
            self._reached.wait()
        except BaseException:
            self.machine.interrupt()
            self._closing = True
            self._go.set()
            if self._thread is not None:
                self._thread.join()
            raise
        if self._error is not None:
            raise self._error

    def _on_stop(self, _stop: Stop) -> bool:
        if self.ended:
            return False
        while self.position >= self.goal:
            self._paused = True
            self._reached.set()
            self._go.wait()
            self._go.clear()
            self._paused = False
            if self._closing:
                raise _Closed()
        self.step(self.goal - self.position)
        return True

    def before_run(self) -> None:
        """The mapping may have changed since the last run: hook the frames anew."""
        self._refresh()
        super().before_run()

    # -- the hooks -------------------------------------------------------------------------

    def _wanted_frames(self) -> dict[int, int | None]:
        q = self.query
        first, last = q.address // PAGE, (q.address + q.length - 1) // PAGE
        if q.physical:
            return {p * PAGE: None for p in range(first, last + 1)}
        ex = self.executive
        cr3 = ex.cpu.cr3
        if q.pid is not None:
            proc = next((p for p in ex.processes if p.pid == q.pid), None)
            if proc is None or proc.state is ProcessState.TERMINATED:
                return {}
            cr3 = proc.space.cr3
        cpu = ex.cpu
        out: dict[int, int | None] = {}
        for p in range(first, last + 1):
            try:
                pa = mmu.walk(ex.mem, p * PAGE, "read", cr3=cr3, cpl=0, cr0=cpu.cr0,
                              cr4=cpu.cr4, efer=cpu.efer, rflags=mmu.RFLAGS_AC).pa   # past SMAP
            except (mmu.PageFault, mmu.GeneralProtection):
                continue
            out[pa & ~(PAGE - 1)] = p * PAGE
        return out

    def _refresh(self) -> None:
        frames = self._wanted_frames()
        if frames == self._frames and (self._mem_hooks or not frames):
            return
        uc = self.executive.cpu.uc
        for h in self._mem_hooks:
            uc.hook_del(h)
        self._mem_hooks = [uc.hook_add(UC_HOOK_MEM_READ | UC_HOOK_MEM_WRITE, self._on_access,
                                       None, frame, frame + PAGE - 1) for frame in frames]
        self._frames = frames
        uc.ctl_flush_tb()
        uc.ctl(UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE)   # cached pages would skip memory hooks

    def _watch_executive(self) -> None:
        """Record the executive's own stores too. PhysicalMemory.write and write_u64 are
        the one way its Python code stores into guest RAM (zero, write_user, kernel_write,
        probe_and_write, the pager, the loader all end there): this query's machine gets
        instance methods that note the store first (its old value) and then make it. Only
        a query's machine has them: an ordinary run pays nothing."""
        mem = self.executive.mem
        cls = type(mem)

        watch_new = not self.query.physical      # pages being made for the range

        def write(pa: int, data: bytes) -> None:
            if self._frames or watch_new:
                self._on_executive_store(pa, bytes(data))
            cls.write(mem, pa, data)

        def write_u64(pa: int, value: int) -> None:
            if self._frames or watch_new:
                self._on_executive_store(pa, (value & (1 << 64) - 1).to_bytes(8, "little"))
            cls.write_u64(mem, pa, value)

        mem.write, mem.write_u64 = write, write_u64

    def _on_executive_store(self, pa: int, data: bytes) -> None:
        """A store of the executive into a hooked frame, or (a virtual query) into a frame
        being made for one of the range's pages: one access per frame it covers, ring 0,
        at the position of the step it is made in (docs/debugger.md: done one step later
        if made while the CPU ran that step, at once if made between two steps), the
        instruction being "by the executive: <what>"."""
        end = pa + len(data)
        hits = {f: base for f, base in self._frames.items() if f < end and pa < f + PAGE}
        if not self.query.physical:
            for frame in range(pa & ~(PAGE - 1), end, PAGE):
                if frame not in hits:
                    base = self._made_for(frame)
                    if base is not None:
                        hits[frame] = base
        if not hits:
            return
        ex = self.executive
        cpu = ex.cpu
        q = self.query
        what = None
        thread = ex.current_thread
        for frame in sorted(hits):
            lo, hi = max(pa, frame), min(end, frame + PAGE)
            base = hits[frame]
            va = None if q.physical or base is None else base + (lo & (PAGE - 1))
            chunk = data[lo - pa:hi - pa]
            if what is None:
                what = "by the executive: " + executive_writer(sys._getframe(2))
            self.accesses.append(Access(
                self.position, "write", lo, va, hi - lo,
                int.from_bytes(ex.mem.read(lo, hi - lo), "little"),
                int.from_bytes(chunk, "little"),
                thread.process.pid if thread is not None else None,
                thread.tid if thread is not None else None, 0, ex.irql, cpu.cr3, cpu.rip,
                what, True))
            self.weight += weight(self.accesses[-1])
        if self.weight >= MAX_ACCESSES:
            cpu.native.stop_soon()
            raise _TooMany()

    def _made_for(self, frame: int) -> int | None:
        """The page of the query's range that ``frame``, not mapped there yet, is being made
        for (zeroed, loaded from an image, paged in: the PFN database's record of the page
        it backs, in the query's process or the kernel half), or None."""
        ex = self.executive
        q = self.query
        pfn = frame // PAGE
        if not 0 <= pfn < len(ex.mm.pfn.entries):
            return None
        entry = ex.mm.pfn.entries[pfn]
        if entry.va is None or entry.use is FrameUse.FREE or \
                (q.pid is not None and entry.owner != q.pid):
            return None
        page = entry.va & ~(PAGE - 1)
        first, last = q.address & ~(PAGE - 1), (q.address + q.length - 1) & ~(PAGE - 1)
        return page if first <= page <= last else None

    def _on_access(self, uc, access: int, address: int, size: int, value: int,
                   _data) -> None:
        frame = address & ~(PAGE - 1)
        if frame not in self._frames:
            return                       # a hook of an old mapping, not yet removed
        ex = self.executive
        cpu = ex.cpu
        q = self.query
        cr3 = cpu.cr3
        va = None
        if not q.physical:
            if q.pid is not None:
                proc = next((p for p in ex.processes if p.pid == q.pid), None)
                if proc is None or proc.space.cr3 != cr3:
                    return               # another address space: not this virtual range
            va = self._frames[frame] + (address & (PAGE - 1))
        write = access == UC_MEM_WRITE
        mask = (1 << (8 * size)) - 1
        old = new = None
        if write:                        # the store lands after this hook (Unicorn's order)
            n = min(size, PAGE - (address & (PAGE - 1)))
            old = int.from_bytes(ex.mem.read(address, n), "little")
            new = value & mask
        rip = cpu.rip
        position = cpu.native.completed_before(rip) + self.position - cpu.instructions
        thread = ex.current_thread
        ring = cpu.reg("cs") & 3
        key = (cr3, rip)
        text = self._decoded.get(key)
        if text is None:
            insn = cpu.decode_at(rip, ring)
            text = f"{insn.mnemonic} {insn.op_str}".strip() if insn is not None else "?"
            self._decoded[key] = text
        self.accesses.append(Access(
            position, "write" if write else "read", address, va, size, old, new,
            thread.process.pid if thread is not None else None,
            thread.tid if thread is not None else None, ring, ex.irql, cr3, rip, text))
        self.weight += 1
        if self.weight >= MAX_ACCESSES:
            cpu.native.stop_soon()
            raise _TooMany()


@dataclass
class _Learnt:
    upto: int                      # accesses are known from boot to this position
    accesses: list[Access]
    truncated: bool
    weight: int                    # what they count (see ``weight``)


class QueryIndex:
    """What queries learnt: the accesses to each query's pages from boot to a position,
    kept for the next query over the same pages; at most MAX_INDEX_ACCESSES accesses, the
    least recently used queries' dropped first. The machines of the last
    MAX_LIVE_RECORDERS page sets stay paused where their answer ended: a query over the
    same pages further on runs one on from there instead of re-executing from boot."""

    def __init__(self) -> None:
        self._learnt: OrderedDict[tuple, _Learnt] = OrderedDict()
        self._live: OrderedDict[tuple, Recorder] = OrderedDict()
        self._owner = os.getpid()
        self.started_at = 0        # where the last answer's re-execution started (0: boot)

    def __getstate__(self) -> dict[str, Any]:
        # Handed to a resumed snapshot (emu.debugger.history): what was learnt travels, a
        # paused machine does not (it lives in this process).
        return {"_learnt": self._learnt}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()
        self._learnt = state["_learnt"]

    def answer(self, query: Query, position: int,
               factory: Callable[[], Machine]) -> tuple[list[Access], bool, bool]:
        """(accesses that answer ``query`` from boot to ``position``, truncated, from the
        index): re-executes only what the index has not seen, from where it stopped when
        its machine is still paused there, else from boot."""
        if os.getpid() != self._owner:
            # A forked copy of the debugger (a resumed snapshot): the paused machines'
            # threads stayed in the process that started them.
            self._live = OrderedDict()
            self._owner = os.getpid()
        key = tuple(query.pages())
        learnt = self._learnt.get(key)
        cached = learnt is not None and (learnt.upto >= position or learnt.truncated)
        if not cached:
            live = self._live.get(key)
            if learnt is not None and live is not None and live.paused and \
                    live.position == learnt.upto:
                self.started_at = learnt.upto
                live.extend(position)
            else:
                self.started_at = 0
                self._forget_live(key)
                page_query = Query("access", query.pages()[0][1] * PAGE,
                                   len(query.pages()) * PAGE, query.pid, query.physical)
                live = Recorder(factory(), page_query, position)
                live.record()
            accesses = live.accesses
            # Truncated: complete only before the last access recorded.
            upto = accesses[-1].position if live.truncated else position
            learnt = _Learnt(upto, accesses, live.truncated, live.weight)
            self._learnt[key] = learnt
            if live.paused:
                self._live[key] = live
                self._live.move_to_end(key)
                while len(self._live) > MAX_LIVE_RECORDERS:
                    self._forget_live(next(iter(self._live)))
            else:
                self._forget_live(key)
                live.close()
            self._bound()
        self._learnt.move_to_end(key)
        end = min(position, learnt.upto)
        out = [_clip(a, query) if a.executive else a
               for a in learnt.accesses if a.position < end and query.wants(a)]
        return out, position > learnt.upto, cached

    def close(self) -> None:
        """Release the paused machines (the index's answers stay)."""
        for key in list(self._live):
            self._forget_live(key)

    def _forget_live(self, key: tuple) -> None:
        live = self._live.pop(key, None)
        if live is not None:
            live.close()

    def _bound(self) -> None:
        while len(self._learnt) > 1 and \
                sum(v.weight for v in self._learnt.values()) > MAX_INDEX_ACCESSES:
            key, _ = self._learnt.popitem(last=False)
            self._forget_live(key)
