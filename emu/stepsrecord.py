"""What a steppable page (``emu run --html FILE``, emu.viz.steps) shows at each step, recorded
while the machine runs.

Each step is one record of the event log (emu.eventlog: the same position, pid, ring, IRQL,
RIP and the event's own fields) with what the page adds, read from the machine at the moment
of the event, never worked out again afterwards:

- ``name``: the name of the process ``pid`` names (null: no thread);
- ``symbol`` and ``insn``: RIP as the debugger names it (``slowread!main+0x1a``,
  ``slowneither.sys!DpcForIsr+0x0``) and the instruction there, disassembled from the
  thread's own address space as code at the record's ring may read it;
- ``walk`` (a #PF's ``exception`` and ``page-fault`` steps only): the walk the MMU did for
  the faulting access (emu.hw.mmu: the entries as they were read when the CPU faulted), in
  the debugger's words (emu.debugger.walkview, as ``walk`` prints it).

- ``space``: the address space of the step's process (the thread's; with no thread, the
  process a ``process-create`` or ``process-exit`` names; null: none, or its page tables
  are gone) as the machine holds it at the event, read from its page tables in guest RAM
  and its VAD tree, as a change since the previous step of the same process: ``pid``, ``name``,
  ``first`` (the first step of this process: ``ptes`` and ``runs`` are whole), ``ptes``
  (virtual page -> its leaf PTE's value now, valid or a software PTE, 0: none any more; only
  those that changed: a page mapped, unmapped, paged out, its frame, flags or A/D bits) and
  ``runs`` (the VAD runs, emu.viz.addrmap.vad_runs, when they changed; else None).
  emu.viz.addrmap.from_ptes makes the map (regions, pages) of them.

Only the first ``MAX_STEPS`` events are kept; later ones are counted (``left_out``).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from emu.debugger import walkview
from emu.eventlog import COMMON, EventLog
from emu.hw import mmu
from emu.hw.exceptions import Vector
from emu.hw.faultaddr import decode
from emu.nt.events import Event
from emu.nt.layout import KERNEL_PML4_FIRST, PAGE_SIZE
from emu.viz.addrmap import vad_runs

if TYPE_CHECKING:
    from emu.machine import Machine
    from emu.nt.kernel import Executive

# The events a recorder keeps at most (docs/report.md, "Steppable pages"); the page then
# embeds as many of them as fit its budget (emu.viz.steps.MAX_BYTES) and says how many
# events were left out.
MAX_STEPS = 20_000


class StepRecorder(EventLog):
    """An event log whose records carry what a page shows at each step (module docstring);
    ``steps`` holds them, ``left_out`` counts the events past ``MAX_STEPS``."""

    def __init__(self, executive: Executive, sink: Callable[[dict[str, Any]], None] | None = None,
                 max_steps: int = MAX_STEPS) -> None:
        self.steps: list[dict[str, Any]] = []
        self.left_out = 0
        self.max_steps = max_steps
        self.target = None     # the debugger's view of the machine, for symbols (attach)
        self._shadows: dict[int, SpaceShadow] = {}    # id(process) -> what was last read
        super().__init__(executive, sink if sink is not None else self.keep)

    @classmethod
    def attach(cls, machine: Machine, sink: Callable[[dict[str, Any]], None] | None = None,
               max_steps: int = MAX_STEPS) -> StepRecorder:
        """Record ``machine``'s steps from now on (before drivers and apps are added);
        every instruction is counted, as for the event log (EventLog.attach)."""
        from emu.debugger.live import LiveTarget

        recorder = cls(machine.executive, sink, max_steps)
        recorder.target = LiveTarget(machine)
        recorder.subscribe_to(machine)
        return recorder

    def keep(self, step: dict[str, Any] | None) -> None:
        """The default sink: keep ``step`` (None: an event past the cap, counted)."""
        if step is None:
            self.left_out += 1
        else:
            self.steps.append(step)

    def __call__(self, event: Event, details: dict[str, Any]) -> None:
        if len(self.steps) + self.left_out >= self.max_steps:
            # Past the cap: counted (the position still needs its exceptions), not described.
            if event is Event.EXCEPTION:
                self._exceptions += 1
                self._pf_events += details["exc"].vector == Vector.PF
            self.sink(None)       # type: ignore[arg-type]
            return
        super().__call__(event, details)

    def record(self, event: Event, d: dict[str, Any]) -> dict[str, Any]:
        """The event log's record of ``event`` plus ``name``, ``symbol``, ``insn`` and, for
        a #PF, ``walk`` (module docstring)."""
        out = super().record(event, d)
        ex = self.executive
        proc = _process(ex, out["pid"])
        out["name"] = proc.name if proc is not None else None
        out["symbol"] = self._symbol(out["rip"], out["pid"])
        out["insn"] = _instruction(ex, proc, out["ring"], out["rip"])
        exc = d.get("exc")
        out["walk"] = _walk(ex, exc, out["pid"], self.target) if exc is not None and \
            exc.vector == Vector.PF else None
        if proc is None and event in (Event.PROCESS_CREATE, Event.PROCESS_EXIT):
            proc = d["process"]      # no thread: the space is the one of the process it names
        out["space"] = self._space(proc)
        return out

    def _space(self, proc) -> dict[str, Any] | None:
        """``space`` of a step of ``proc`` (module docstring): what changed in its address
        space since the recorder last read it, read now from guest RAM."""
        ex = self.executive
        if proc is None or proc.space not in ex.mm.spaces:
            return None                  # no thread, or its page tables are freed
        shadow = self._shadows.get(id(proc))
        first = shadow is None or shadow.space is not proc.space
        if first:
            shadow = self._shadows[id(proc)] = SpaceShadow(proc.space)
        ptes = shadow.update(ex.mm.mem)
        # The VAD tree's runs as plain values (cheap to compare); named only when they change.
        vads = [(r.start, r.end, r.state, r.protect) for v in getattr(proc, "vads", None) or ()
                for r in getattr(v, "runs", ())]
        changed_runs = first or vads != shadow.vads
        shadow.vads = vads
        return {"pid": proc.pid, "name": proc.name, "first": first, "ptes": ptes,
                "runs": vad_runs(proc) if changed_runs else None}

    def _symbol(self, rip: int, pid: int | None) -> str:
        """RIP as the debugger names it (emu.debugger.targetbase.Target.symbolize)."""
        if self.target is None:
            return f"{rip:#x}"
        try:
            return self.target.symbolize(rip, pid)
        except Exception:    # noqa: BLE001 - a process gone, a TargetError: no name
            return f"{rip:#x}"


def own_fields(step: dict[str, Any]) -> dict[str, Any]:
    """The event's own fields of ``step`` (the event log's SCHEMA part)."""
    return {k: v for k, v in step.items() if k not in COMMON and k not in _ADDED}


_ADDED = ("name", "symbol", "insn", "walk", "space")


def _process(ex: Executive, pid: int | None):
    return next((p for p in ex.processes if p.pid == pid), None) if pid is not None else None


def _instruction(ex: Executive, proc, ring: int, rip: int) -> str:
    """The instruction at ``rip`` in ``proc``'s address space (the current one without a
    process) as code at ``ring`` may read it; ``(not readable)`` when no byte is."""
    cpu = ex.cpu
    space = proc.space if proc is not None and proc.space in ex.mm.spaces else None
    code = cpu.read_code(rip, cpl=ring, cr3=space.cr3 if space is not None else None)
    if not code:
        return "(not readable)"
    # A 32-bit process's ring-3 code is compatibility mode (docs/abi.md); ring 0 is 64-bit.
    bits = 32 if ring == 3 and proc is not None and proc.bits == 32 else 64
    insn = decode(code, rip, bits)
    return f"{insn.mnemonic} {insn.op_str}".strip() if insn is not None else "(bad)"


def _walk(ex: Executive, exc, pid: int | None, target) -> dict[str, Any]:
    """The walk of a #PF as the MMU did it (``exc.walk``: the entries as read at the fault,
    SDM Vol. 3A §4.7) and as the debugger's ``walk`` explains it."""
    steps = tuple(exc.walk)
    reason = exc.reason
    # The entry the reason names refused (SMEP/SMAP name none: the leaf decides).
    refused = _named(steps, reason) or (steps[-1] if steps else None)
    cr3, efer = ex.cpu.cr3, ex.cpu.efer
    nxe = bool(efer & mmu.EFER.NXE)
    fault = mmu.PageFault(exc.address, mmu.PFErr(exc.error_code), reason, steps,
                          refused.level if refused is not None else 0)
    proc = _process(ex, pid)
    space = f'process {pid} "{proc.name}"' if proc is not None and proc.space.cr3 == cr3 \
        else "the system address space"
    # The debugger's `walk VA ACCESS` at this moment, line for line (emu.debugger.walkview).
    lines = [f"walk {exc.address:#x} in {space} (CR3 {cr3:#x}), {exc.access} at ring {exc.cpl}",
             walkview.index_line(exc.address), *walkview.step_lines(steps, nxe, cr3),
             *walkview.fault_lines(target, fault, exc.access, exc.cpl, pid),
             f"  A/D: the access faults: no A or D bit is set in the "
             f"{steps[-1].name if steps else 'entry'}"]
    return {
        "address": exc.address, "access": exc.access, "ring": exc.cpl,
        "error_code": exc.error_code, "reason": reason,
        "refused": refused.name if refused is not None else None,
        "levels": [{"name": s.name, "index": s.index, "entry_address": s.entry_address,
                    "value": s.value, "flags": walkview.flag_names(s.value, s.level)}
                   for s in steps],
        "text": lines,
    }


def _named(steps: tuple[mmu.WalkStep, ...], reason: str) -> mmu.WalkStep | None:
    """The entry ``reason`` names (``... in PTE``, ``U/S=0 in PDE: ...``), or None."""
    for s in steps:
        if f"in {s.name}:" in reason or reason.endswith(f"in {s.name}") or \
                f"in {s.name} " in reason:
            return s
    return None


_TABLE = struct.Struct("<512Q")
_EMPTY = bytes(PAGE_SIZE)
_FRAME = 0x000F_FFFF_FFFF_F000     # an entry's bits 12..51: the next table or the frame
_P, _PS = int(mmu.PTE.P), int(mmu.PTE.PS)


class SpaceShadow:
    """What the recorder last read of one address space's user half: the bytes of each of
    its page tables and every nonzero leaf PTE by virtual page. Each update reads every
    table again (4 KiB each, no copy of what did not change is parsed): the processor sets
    A and D bits between any two events (SDM Vol. 3A §4.8), so no event is trusted to say
    what changed."""

    def __init__(self, space) -> None:
        self.space = space
        self.ptes: dict[int, int] = {}
        self.vads: list[tuple[int, int, int, int]] = []     # the VAD runs last read
        self._leaves: dict[tuple[int, int], bytes] = {}     # (PT address, first VA) -> bytes
        self._uppers: dict[tuple[int, int, int], tuple[bytes, list[tuple[int, int]]]] = {}

    def update(self, mem) -> dict[int, int]:
        """Read the tables now: each virtual page whose leaf PTE changed -> its value now
        (0: none). The first update returns every nonzero one."""
        leaves: dict[tuple[int, int], bytes] = {}
        uppers: dict[tuple[int, int, int], tuple[bytes, list[tuple[int, int]]]] = {}
        self._upper(mem, self.space.cr3, 4, 0, range(KERNEL_PML4_FIRST), leaves, uppers)
        self._uppers = uppers
        changes: dict[int, int] = {}
        # A table no longer in the tree first (its pages are gone), then each table read.
        for key, old in self._leaves.items():
            if key not in leaves:
                self._diff(key[1], old, _EMPTY, changes)
        for key, data in leaves.items():
            old = self._leaves.get(key, _EMPTY)
            if old != data:
                self._diff(key[1], old, data, changes)
        self._leaves = leaves
        ptes = self.ptes
        out = {}
        for va, pte in changes.items():
            if ptes.get(va, 0) != pte:
                out[va] = pte
                if pte:
                    ptes[va] = pte
                else:
                    del ptes[va]
        return out

    def _upper(self, mem, table: int, level: int, base: int, slots: range,
               leaves: dict, uppers: dict) -> None:
        """Read the table at ``table`` (``level`` 4: PML4 ... 2: PD) and those below it."""
        data = mem.read(table, PAGE_SIZE)
        key = (table, level, base)
        known = self._uppers.get(key)
        if known is not None and known[0] == data:
            children = known[1]
        else:
            entries = _TABLE.unpack(data)
            shift = 12 + 9 * (level - 1)
            # A present entry names the next table; a large page (PS) has none below it.
            children = [(entries[i] & _FRAME, base | i << shift) for i in slots
                        if entries[i] & _P and not entries[i] & _PS]
        uppers[key] = (data, children)
        for child, child_base in children:
            if level == 2:
                leaves[(child, child_base)] = mem.read(child, PAGE_SIZE)
            else:
                self._upper(mem, child, level - 1, child_base, range(512), leaves, uppers)

    @staticmethod
    def _diff(base: int, old: bytes, new: bytes, changes: dict[int, int]) -> None:
        """The entries of one page table that differ between ``old`` and ``new``."""
        # The two tables as one 32768-bit number each: the 64-bit lanes of their XOR that
        # are not zero are the entries that changed (a fault changes one or two of 512, and
        # a loop over all 512 cost a tour 0.5 s).
        diff = int.from_bytes(old, "little") ^ int.from_bytes(new, "little")
        changed = []
        while diff:
            i = (diff.bit_length() - 1) >> 6
            changed.append(i)
            diff &= (1 << (i << 6)) - 1
        for i in reversed(changed):                 # in address order
            changes[base | i << 12] = int.from_bytes(new[i * 8:i * 8 + 8], "little")
