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

What a query learnt is kept (``QueryIndex``): every access to the pages it hooked, up to
the position it ran to; a later query over the same pages at or before that position is
answered from the index without re-executing. Memory is bounded (docs/limits.md).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
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
from emu.nt.process import ProcessState

if TYPE_CHECKING:
    from emu.machine import Machine

PAGE = layout.PAGE_SIZE
MAX_ACCESSES = 100_000        # accesses one query records (docs/limits.md)
MAX_INDEX_ACCESSES = 200_000  # accesses the index keeps, all pages (about 350 B each: 70 MiB)
MAX_LENGTH = 1 << 20          # a query covers 1 byte to 1 MiB, as a watchpoint
KINDS = ("write", "read", "access")
USAGE = "history write|read|access ADDR [LEN] [pid N | phys] [--json]"


class QueryError(ValueError):
    """A query that cannot be answered: one line."""


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
    instruction: str       # "mov dword ptr [rax], ecx" (Capstone's syntax)

    def json(self, symbol: str) -> dict[str, Any]:
        """The JSON record of this access (docs/debugger.md, "history write")."""
        return {"position": self.position, "access": self.kind, "pa": self.pa,
                "va": self.va, "size": self.size, "old": self.old, "new": self.new,
                "pid": self.pid, "tid": self.tid, "ring": self.ring, "irql": self.irql,
                "cr3": self.cr3, "rip": self.rip, "symbol": symbol,
                "instruction": self.instruction}


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
        text = rest.pop(0)
        try:
            pid = int(text, 0)
        except ValueError:
            raise QueryError(f"pid {text}: not a process id (a number; see ps)") from None
        if pid not in pids:
            known = ", ".join(str(p) for p in sorted(pids)) or "none"
            raise QueryError(f"pid {pid}: no such process in this machine's history "
                             f"(processes: {known})")
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


class _Done(Exception):
    """The query's machine reached the position asked for."""


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
        self.truncated = False
        self._mem_hooks: list[int] = []
        self._frames: dict[int, int | None] = {}    # frame -> virtual page base (None: phys)
        self._decoded: dict[tuple[int, int], str] = {}
        super().__init__(machine, self._on_stop)
        self.executive.events.subscribe(lambda _event, _details: self._refresh())
        self._refresh()

    def record(self) -> list[Access]:
        """Run to the target; the accesses to the query's pages, in order."""
        if self.goal > 0:
            self.step(self.goal)
            try:
                self.run()
            except _Done:
                pass
            except _TooMany:
                self.truncated = True
        self.close()
        return self.accesses

    def _on_stop(self, _stop: Stop) -> bool:
        if self.ended:
            return False
        if self.position >= self.goal:
            raise _Done()
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
        if len(self.accesses) >= MAX_ACCESSES:
            cpu.native.stop_soon()
            raise _TooMany()


@dataclass
class _Learnt:
    upto: int                      # accesses are known from boot to this position
    accesses: list[Access]
    truncated: bool


class QueryIndex:
    """What queries learnt: the accesses to each query's pages from boot to a position,
    kept for the next query over the same pages; at most MAX_INDEX_ACCESSES accesses, the
    least recently used queries' dropped first."""

    def __init__(self) -> None:
        self._learnt: OrderedDict[tuple, _Learnt] = OrderedDict()

    def answer(self, query: Query, position: int,
               factory: Callable[[], Machine]) -> tuple[list[Access], bool, bool]:
        """(accesses that answer ``query`` from boot to ``position``, truncated, from the
        index): re-executes only if the index has not seen that far."""
        key = tuple(query.pages())
        learnt = self._learnt.get(key)
        cached = learnt is not None and (learnt.upto >= position or learnt.truncated)
        if not cached:
            page_query = Query("access", query.pages()[0][1] * PAGE,
                               len(query.pages()) * PAGE, query.pid, query.physical)
            recorder = Recorder(factory(), page_query, position)
            accesses = recorder.record()
            # Truncated: complete only before the last access recorded.
            upto = accesses[-1].position if recorder.truncated else position
            learnt = _Learnt(upto, accesses, recorder.truncated)
            self._learnt[key] = learnt
            self._bound()
        self._learnt.move_to_end(key)
        end = min(position, learnt.upto)
        out = [a for a in learnt.accesses if a.position < end and query.wants(a)]
        return out, position > learnt.upto, cached

    def _bound(self) -> None:
        while len(self._learnt) > 1 and \
                sum(len(v.accesses) for v in self._learnt.values()) > MAX_INDEX_ACCESSES:
            self._learnt.popitem(last=False)
