"""``analyze --why``: who put this value here, and when (the data's way back through time).

From a fault (a kernel one that bug checked, a user one that ended a process), from bug
check 0x44, or from any address the user names, the answer walks back through the data with
re-execution from boot (the machine is deterministic to the instruction):

1. the start: the faulting instruction's pointer register (its memory operand's base) and
   its value, or the value now at the address named;
2. in the last WINDOW steps before a use, re-executed one at a time (``_Window``), the last
   instruction of the same function that wrote that register: a load from memory, a
   constant, the return of a kernel export; moves (``mov r, r``), ``lea`` and arithmetic
   whose destination is also a source (``add r, 1``) are followed to their register;
3. a load's memory: its last write before the load (emu.debugger.query's engine: a
   ``history write`` query), with position, pid, tid, ring, IRQL, RIP, instruction, old and
   new value; then the stored value's own source (its register, as in 2; a constant; the
   old value, for a read-modify-write such as ``add dword ptr [x], 1``); and so on.

It stops after MAX_WRITES writes, or at a store of a constant, an export's return, an IRP's
field (the I/O manager filled it from a system call's arguments: the requesting process is
named), memory no instruction wrote since boot (a driver image's initial data, or the
executive's own write), or a register it does not follow. What it does not follow, and says
so: a register set before the window or before the function was entered (an argument from
the caller), the second source of a two-register operation, values that pass through the
executive's Python code (a system call's copy, an export's work on memory).

RAX after a ``call`` is followed into the callee from its ``ret`` (the return value, by the
Microsoft x64 calling convention). An instruction fetch fault (bug check 0xFC, an execute
access violation) has RIP as its pointer: the branch before it is walked back instead.

For a write made in ring 0 at DISPATCH_LEVEL or above (a DPC or ISR writing into whichever
process it interrupted), the write's pointer is traced too, and the DPC that ran is named
(the event history's last ``dpc`` before it). Bug check 0x44 lists each IoCompleteRequest of the
IRP (``completions``: the first and the second, with their callers and positions).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from capstone import x86_const as cx

from emu.debugger import query
from emu.debugger.session import Session
from emu.debugger.stops import Stop
from emu.hw import faultaddr
from emu.nt import exports, io, layout, wdm

if TYPE_CHECKING:
    from emu.machine import Machine

WINDOW = 256         # steps re-executed one at a time before each use ...
MAX_WINDOW = 8192    # ... and, when a register's source is not among them, this many
MAX_WRITES = 4       # writes walked back through, at most
_GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
         "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
# Microsoft x64 ABI: an export call leaves RAX its result and may change RCX, RDX, R8-R11.
_VOLATILE = {"rax", "rcx", "rdx", "r8", "r9", "r10", "r11"}
_FAMILY: dict[str, str] = {}
for _r in ("a", "b", "c", "d"):
    for _n in (f"r{_r}x", f"e{_r}x", f"{_r}x", f"{_r}l", f"{_r}h"):
        _FAMILY[_n] = f"r{_r}x"
for _r in ("si", "di", "bp", "sp"):
    for _n in (f"r{_r}", f"e{_r}", _r, f"{_r}l"):
        _FAMILY[_n] = f"r{_r}"
for _i in range(8, 16):
    for _n in (f"r{_i}", f"r{_i}d", f"r{_i}w", f"r{_i}b"):
        _FAMILY[_n] = f"r{_i}"
# Destination also a source: the new value is computed from the old one.
_ARITH = {"add", "sub", "inc", "dec", "neg", "not", "and", "or", "xor", "shl", "shr", "sar",
          "rol", "ror", "imul", "adc", "sbb", "bswap"}
_MOVES = {"mov", "movzx", "movsx", "movsxd", "movabs"}


class WhyError(ValueError):
    """Nothing to explain, or an input that cannot be: one line."""


def family(name: str) -> str:
    """The 64-bit register a (sub)register name is part of: ``ecx`` -> ``rcx``."""
    return _FAMILY.get(name, name)


@dataclass
class StepState:
    """The machine before one step of a window: where, who, and the registers."""

    position: int
    rip: int
    cr3: int
    ring: int
    irql: int
    pid: int | None              # the thread's process (None: no thread)
    tid: int | None
    space_pid: int | None        # whose address space CR3 is (None: the system's)
    regs: dict[str, int]
    insn: Any                    # Capstone's instruction with details, or None
    export: str | None           # the kernel export this step runs (its trap address)
    irps: dict[int, tuple[int | None, str]] = field(default_factory=dict)  # IRP -> requester

    def reg(self, name: str) -> int:
        """A register by any name, as the CPU held it before this step."""
        if name in ("fs_base", "gs_base", "rip"):
            return self.regs.get(name, 0)
        full = self.regs.get(family(name), 0)
        if name.endswith(("l", "b")) and name not in ("rbx", "rbp", "rdi", "rsi", "rsp"):
            return full & 0xFF
        if name[-1] == "h":
            return (full >> 8) & 0xFF
        if name.endswith("w") or (len(name) == 2 and name[0] != "r"):
            return full & 0xFFFF
        if name.startswith("e") or name.endswith("d"):
            return full & 0xFFFF_FFFF
        return full


class _Done(Exception):
    """The window reached its last position."""


class _Window(Session):
    """A machine re-executed from boot to ``start``, then one step at a time to ``end``,
    noting the state before each step."""

    def __init__(self, machine: Machine, start: int, end: int) -> None:
        machine.executive.console = None
        self.start, self.end = max(start, 0), end
        self.steps: list[StepState] = []
        super().__init__(machine, self._on_stop)

    def collect(self) -> list[StepState]:
        """Run; the states before each step from ``start`` to ``end`` (inclusive)."""
        try:
            if self.start > 0:
                self.step(self.start)
            else:
                self._note()
                self.step(1)
            self.run()
        except _Done:
            pass
        finally:
            self.close()
        return self.steps

    def _on_stop(self, _stop: Stop) -> bool:
        if self.ended:
            return False
        if self.position >= self.start:
            self._note()
        if self.position >= self.end:
            raise _Done()
        self.step(1 if self.position >= self.start else self.start - self.position)
        return True

    def _note(self) -> None:
        ex = self.executive
        cpu = ex.cpu
        rip = cpu.rip
        ring = cpu.reg("cs") & 3
        regs = {r: cpu.reg(r) for r in _GPRS}
        regs["rip"] = rip
        regs["gs_base"] = cpu.reg_named("gs_base")
        regs["fs_base"] = cpu.reg_named("fs_base")
        export = exports.name_at(rip)
        insn = None
        if export is None:
            code = cpu.read_code(rip, cpl=ring)
            insn = faultaddr.decode(code, rip) if code else None
        thread = ex.current_thread
        space = next((p.pid for p in ex.processes if p.space is not None and
                      p.space.cr3 == cpu.cr3), None)
        irps = {}
        for address, record in ex.io.irps.items():
            proc = record.thread.process if record.thread is not None else None
            irps[address] = (proc.pid if proc else None, proc.name if proc else "")
        self.steps.append(StepState(
            self.position, rip, cpu.cr3, ring, ex.irql,
            thread.process.pid if thread is not None else None,
            thread.tid if thread is not None else None, space, regs, insn, export, irps))


class _Completions(Session):
    """A machine re-executed from boot to its end, noting each IofCompleteRequest call."""

    def __init__(self, machine: Machine, irp: int) -> None:
        machine.executive.console = None
        self.irp = irp
        self.calls: list[dict[str, Any]] = []
        super().__init__(machine, lambda _stop: not self.ended and (self.cont() or True))

    def export_called(self, address: int) -> None:
        """Note a call of IofCompleteRequest on our IRP, then let the session see it."""
        ex = self.executive
        if not self._detached and exports.name_at(address) == "IofCompleteRequest" and \
                ex.cpu.reg("rcx") == self.irp:
            ret = ex.kernel_read_u64(ex.cpu.reg("rsp"))
            thread = ex.current_thread
            record = ex.io.irps.get(self.irp)
            who = record.thread.process if record is not None and \
                record.thread is not None else None
            self.calls.append({
                "position": self.position, "caller": exports.call_site(ex, ret),
                "return": ret, "pid": thread.process.pid if thread is not None else None,
                "tid": thread.tid if thread is not None else None,
                "irql": ex.irql, "requester": who.pid if who is not None else None})
        super().export_called(address)


def completions(factory: Callable[[], Machine], irp: int) -> list[dict[str, Any]]:
    """Each IofCompleteRequest(Irp) call of the run (what wdm.h's IoCompleteRequest
    calls), in order: position (the export's step), caller (the call instruction), pid, tid,
    IRQL and the IRP's requesting process (None once the IRP is gone). A narrow
    ``history calls IofCompleteRequest``: to be unified with it."""
    session = _Completions(factory(), irp)
    try:
        session.run()
    finally:
        session.close()
    return session.calls


class Tracer:
    """Walks back through the data of one machine's past (see the module docstring)."""

    def __init__(self, factory: Callable[[], Machine], symbolize: Callable[..., str],
                 names: dict[int, str], images: Callable[[int, int | None], str | None],
                 index: query.QueryIndex | None = None) -> None:
        self.factory = factory
        self.symbolize = symbolize
        self.names = names               # pid -> process name
        self.images = images             # (address, pid) -> the image holding it, or None
        self.index = index or query.QueryIndex()
        self.chain: list[dict[str, Any]] = []
        self.writes = 0

    # -- re-execution ----------------------------------------------------------------------

    def window(self, end: int, n: int = WINDOW) -> list[StepState]:
        """The states before each step of the ``n`` steps up to ``end`` (inclusive)."""
        return _Window(self.factory(), end - n, end).collect()

    def last_write(self, address: int, size: int, pid: int | None,
                   before: int) -> query.Access | None:
        """The last write overlapping [address, address + size) before ``before``."""
        q = query.Query("write", address, size, None if address >= layout.KERNEL_SPACE_START
                        else pid, False)
        if q.pid is None and address < layout.KERNEL_SPACE_START:
            return None
        found, _, _ = self.index.answer(q, before, self.factory)
        return found[-1] if found else None

    # -- naming ----------------------------------------------------------------------------

    def where(self, rip: int, pid: int | None) -> str:
        """``module!function+0xN`` (or the address in hex)."""
        return self.symbolize(rip, pid)

    def function(self, rip: int, pid: int | None) -> str:
        """``module!function`` of ``rip`` ("" when it has no symbol)."""
        name = self.where(rip, pid)
        return name.split("+")[0] if "!" in name else ""

    def process(self, pid: int | None) -> str:
        """``process N "name"``, or ``the system (no process)``."""
        return "the system (no process)" if pid is None else \
            f'process {pid} "{self.names.get(pid, "?")}"'

    # -- the walk --------------------------------------------------------------------------

    def origin(self, kind: str, text: str, **extra: Any) -> dict[str, Any]:
        """A link that ends the walk."""
        link = {"step": "origin", "kind": kind, "text": text, **extra}
        self.chain.append(link)
        return link

    def trace_register(self, steps: list[StepState], k: int, reg: str) -> None:
        """Where ``reg`` (a 64-bit name) held before step ``k`` came from (in WINDOW steps
        before it, else in MAX_WINDOW)."""
        use = steps[k]
        if self._trace_in(steps, k, reg) or steps[0].position == 0 or \
                len(steps) > MAX_WINDOW // 2:
            return
        wider = self.window(use.position, MAX_WINDOW)
        k = next((n for n, s in enumerate(wider) if s.position == use.position), None)
        if k is None or not self._trace_in(wider, k, reg):
            self.origin("not-followed", f"{reg} was set before the {len(wider) - 1} steps "
                        f"re-executed before position {use.position}, or before "
                        f"{self.function(use.rip, use.pid) or 'the function'} was entered "
                        "(an argument from its caller): not followed", register=reg,
                        through=[])

    def _trace_in(self, steps: list[StepState], k: int, reg: str, home: str | None = None,
                  through: list[str] | None = None) -> bool:
        """trace_register in ``steps``, among the steps of function ``home`` (default: step
        ``k``'s): False (nothing recorded) when no step of it wrote ``reg``, with no
        register followed on the way, and the window does not start at boot."""
        use = steps[k]
        if home is None:
            home = self.function(use.rip, use.pid)
        through = [] if through is None else through
        for i in range(k - 1, -1, -1):
            s = steps[i]
            if reg == "rax" and home and s.insn is not None and s.insn.mnemonic == "call" \
                    and self.function(s.rip, s.pid) == home:
                # RAX after a call is the callee's return value (Microsoft x64 ABI): follow
                # it into the callee, from its `ret`.
                callee = self.function(steps[i + 1].rip, steps[i + 1].pid)
                ret = next((j for j in range(k - 1, i, -1)
                            if steps[j].insn is not None and steps[j].insn.mnemonic == "ret"
                            and self.function(steps[j].rip, steps[j].pid) == callee), None)
                if callee and ret is not None:
                    s_ret = steps[ret]
                    through.append(f"{self.where(s_ret.rip, s_ret.pid)} ({s_ret.position}): "
                                   f"ret (rax: {callee}'s return value)")
                    return self._trace_in(steps, ret, reg, callee, through) or \
                        self._window_end(steps, ret, reg, callee, through)
            if s.export is not None:
                after = steps[i + 1]
                if home and self.function(after.rip, after.pid) != home:
                    continue
                if reg == "rax":
                    self.origin("export-return", f"{s.export}'s return value (a kernel "
                                f"export, called at position {s.position}): not followed "
                                "into the executive", export=s.export, position=s.position,
                                through=through)
                    return True
                if reg in _VOLATILE:
                    self.origin("not-followed", f"{reg} was changed by the call of "
                                f"{s.export} at position {s.position} (a volatile register)",
                                position=s.position, through=through)
                    return True
                continue
            if s.insn is None or (home and self.function(s.rip, s.pid) != home) or \
                    (not home and (s.ring, s.cr3) != (use.ring, use.cr3)):
                continue
            if steps[i + 1].rip == s.rip and s.insn.mnemonic.split()[0] not in ("rep",):
                continue                 # a fault: the instruction did not complete
            _, written = s.insn.regs_access()
            if reg not in {family(s.insn.reg_name(r)) for r in written}:
                continue
            step = self._register_source(steps, i, reg, through)
            if step is None:
                return True
            reg = step[1]
        if not through and steps[0].position > 0 and len(steps) <= MAX_WINDOW // 2:
            return False                 # a wider window may find it
        return self._window_end(steps, k, reg, home, through)

    def _window_end(self, steps: list[StepState], k: int, reg: str, home: str,
                    through: list[str]) -> bool:
        """No step of ``home`` before step ``k`` wrote ``reg``: say so (True)."""
        self.origin("not-followed", f"{reg} was set before the {len(steps) - 1} steps "
                    f"re-executed before position {steps[k].position}, or before "
                    f"{home or 'the function'} was entered (an argument from its caller): "
                    "not followed", register=reg, through=through)
        return True

    def _register_source(self, steps: list[StepState], i: int, reg: str,
                         through: list[str]) -> tuple[int, str] | None:
        """Step ``i`` wrote ``reg``: follow it to a register (returned), or end the walk
        (a load, a constant, something not followed: None)."""
        s = steps[i]
        insn = s.insn
        text = f"{insn.mnemonic} {insn.op_str}".strip()
        m = insn.mnemonic
        ops = list(insn.operands)
        src = ops[1] if len(ops) > 1 else None
        if m in ("xor", "sub") and src is not None and src.type == cx.X86_OP_REG and \
                ops[0].type == cx.X86_OP_REG and family(insn.reg_name(src.reg)) == reg:
            self._constant(s, 0, text, through)
            return None
        if m == "pop" or (m in _MOVES and src is not None and src.type == cx.X86_OP_MEM):
            self.load(steps, i, reg, through)
            return None
        if m == "in" and src is not None:      # SDM Vol. 2A, IN: a port's data
            port = src.imm if src.type == cx.X86_OP_IMM else s.reg("dx")
            self.origin("port-input", f"a device's data: {text} read I/O port {port:#x} at "
                        f"{self.where(s.rip, s.pid)} (position {s.position})", port=port,
                        position=s.position, rip=s.rip, symbol=self.where(s.rip, s.pid),
                        instruction=text, through=through)
            return None
        if m in _MOVES and src is not None and src.type == cx.X86_OP_IMM:
            self._constant(s, src.imm & 0xFFFF_FFFF_FFFF_FFFF, text, through)
            return None
        if m in _MOVES and src is not None and src.type == cx.X86_OP_REG:
            through.append(f"{self.where(s.rip, s.pid)} ({s.position}): {text}")
            return i, family(insn.reg_name(src.reg))
        if m == "lea" and src is not None:
            base = src.mem.base
            if base == cx.X86_REG_RIP or not base:
                self._constant(s, _lea_value(insn), text, through)
                return None
            through.append(f"{self.where(s.rip, s.pid)} ({s.position}): {text}")
            return i, family(insn.reg_name(base))
        if m in _ARITH and ops and ops[0].type == cx.X86_OP_REG:
            through.append(f"{self.where(s.rip, s.pid)} ({s.position}): {text}")
            return i, reg
        self.origin("not-followed", f"{reg} was set by {text} at "
                    f"{self.where(s.rip, s.pid)} (position {s.position}): not followed",
                    position=s.position, instruction=text, through=through)
        return None

    def _constant(self, s: StepState, value: int, text: str, through: list[str]) -> None:
        self.origin("constant", f"a constant, {value:#x}: {text} at "
                    f"{self.where(s.rip, s.pid)} (position {s.position})", value=value,
                    position=s.position, rip=s.rip, symbol=self.where(s.rip, s.pid),
                    instruction=text, through=through)

    def load(self, steps: list[StepState], i: int, reg: str, through: list[str]) -> None:
        """Step ``i`` loaded ``reg`` from memory: the memory's last write, and on."""
        s = steps[i]
        insn = s.insn
        reads = [a for a in faultaddr.memory_accesses(insn, s.reg) if not a.write]
        if not reads:
            self.origin("not-followed", f"{reg}: no load found in {insn.mnemonic}",
                        through=through)
            return
        access = reads[0]
        text = f"{insn.mnemonic} {insn.op_str}".strip()
        value = steps[i + 1].regs.get(reg) if i + 1 < len(steps) else None
        self.chain.append({"step": "load", "position": s.position, "pid": s.pid,
                           "ring": s.ring, "irql": s.irql, "rip": s.rip,
                           "symbol": self.where(s.rip, s.pid), "instruction": text,
                           "register": reg, "address": access.address, "size": access.size,
                           "value": value, "through": through})
        self.memory(s, access.address, access.size)

    def memory(self, s: StepState, address: int, size: int) -> None:
        """Who wrote [address, address + size) last before step ``s``, and on."""
        self.memory_at(address, size, s.space_pid, s.position, s.irps)

    def memory_at(self, address: int, size: int, space_pid: int | None, position: int,
                  irps: dict[int, tuple[int | None, str]]) -> None:
        """Who wrote [address, address + size) (in ``space_pid``'s space, for a user
        address) last before ``position``, and on; ``irps``: the IRPs in flight then."""
        for irp, (pid, name) in irps.items():
            if irp <= address < irp + io.IRP_SIZE:
                what = _irp_field(address - irp)
                self.origin("irp-field", f"the IRP {irp:#x}'s {what}: the I/O manager filled "
                            f"it from the system call of {self.process(pid)} (the request's "
                            "originator)", irp=irp, field=what, requester=pid,
                            requester_name=name)
                return
        if self.writes >= MAX_WRITES:
            self.origin("not-followed", f"stopped after {MAX_WRITES} writes: ask again from "
                        f"there (goto {position}, then analyze --why {address:#x} {size})")
            return
        a = self.last_write(address, size, space_pid, position)
        if a is None:
            image = self.images(address, space_pid)
            text = f"no instruction wrote {address:#x} since boot: " + (
                f"its value is {image}'s initial data, as the loader put it there"
                if image else "the executive (or the loader) put it there")
            self.origin("initial", text, address=address)
            return
        self.write(a)

    def write(self, a: query.Access) -> None:
        """A write of the past: record it, then walk back from its stored value."""
        self.writes += 1
        self.chain.append(self.write_record(a))
        steps = self.window(a.position)
        k = next((n for n, s in enumerate(steps) if s.position == a.position), None)
        if k is None or steps[k].insn is None:
            self.origin("not-followed", "the store's step could not be re-executed")
            return
        self.store_source(steps, k, a)

    def write_record(self, a: query.Access) -> dict[str, Any]:
        """The JSON record of a write link."""
        record = {"step": "write", **a.json(self.where(a.rip, a.pid))}
        record["process"] = self.names.get(a.pid) if a.pid is not None else None
        record["function"] = self.function(a.rip, a.pid)
        return record

    def store_source(self, steps: list[StepState], k: int, a: query.Access) -> None:
        """Where the value the store of step ``k`` wrote came from."""
        s = steps[k]
        insn = s.insn
        m = insn.mnemonic.split()[-1]
        ops = list(insn.operands)
        text = f"{insn.mnemonic} {insn.op_str}".strip()
        if m.startswith("stos") or m == "push" and ops and ops[0].type == cx.X86_OP_REG:
            reg = "rax" if m.startswith("stos") else family(insn.reg_name(ops[0].reg))
            self.trace_register(steps, k, reg)
            return
        if m.startswith("movs"):
            self.chain.append({"step": "load", "position": s.position, "pid": s.pid,
                               "ring": s.ring, "irql": s.irql, "rip": s.rip,
                               "symbol": self.where(s.rip, s.pid), "instruction": text,
                               "register": None, "address": s.reg("rsi"), "size": a.size,
                               "value": None, "through": []})
            self.memory(s, s.reg("rsi") + (a.va or a.pa) - s.reg("rdi"), a.size)
            return
        src = ops[1] if len(ops) > 1 else None
        if ops and ops[0].type == cx.X86_OP_MEM and m in _ARITH:
            self.chain.append({"step": "read-modify-write", "position": s.position,
                               "instruction": text, "text": f"{text} computed the new value "
                               "from the old one: whoever wrote the old one"})
            self.memory(s, a.va if a.va is not None else a.pa, a.size)
            return
        if src is not None and src.type == cx.X86_OP_IMM:
            self._constant(s, src.imm & ((1 << (8 * a.size)) - 1), text, [])
            return
        if src is not None and src.type == cx.X86_OP_REG:
            self.trace_register(steps, k, family(insn.reg_name(src.reg)))
            return
        self.origin("not-followed", f"the value {text} stored: not followed",
                    instruction=text)

    def pointer(self, steps: list[StepState], k: int) -> str | None:
        """Trace the base register of step ``k``'s memory operand; its name, or None."""
        insn = steps[k].insn
        for op in insn.operands if insn is not None else ():
            if op.type == cx.X86_OP_MEM and op.mem.base and op.mem.base != cx.X86_REG_RIP:
                reg = family(insn.reg_name(op.mem.base))
                self.trace_register(steps, k, reg)
                return reg
        return None


def _lea_value(insn: Any) -> int:
    """The address a ``lea`` of no register computes (rip-relative: an image's)."""
    for a in [op for op in insn.operands if op.type == cx.X86_OP_MEM]:
        return (a.mem.disp + (insn.address + insn.size if a.mem.base == cx.X86_REG_RIP
                              else 0)) & 0xFFFF_FFFF_FFFF_FFFF
    return 0


def _irp_field(offset: int) -> str:
    """The IRP (or its one IO_STACK_LOCATION) field at ``offset``: ``UserBuffer``."""
    fields = {v: f"{k}" for k, v in wdm.IRP.fields.items()}
    if offset >= io.IRP_STACK:
        fields = {v + io.IRP_STACK: f"stack location's {k}"
                  for k, v in wdm.IO_STACK_LOCATION.fields.items()}
    best = max((o for o in fields if o <= offset), default=None)
    if best is None:
        return f"field at +{offset:#x}"
    return fields[best] + (f"+{offset - best:#x}" if offset != best else "")



# -- the questions ---------------------------------------------------------------------------

# Stop codes whose RIP is a faulting data access (Microsoft's bug check reference): the
# pointer its memory operand used is walked back.
_FAULT_CODES = {0x0A, 0x1E, 0x3B, 0x50, 0x7E, 0xBE, 0xD1, 0xFC}
_FETCH_CODES = {0xFC}       # ATTEMPTED_EXECUTE_OF_NOEXECUTE_MEMORY: RIP is the target


def _last_step_at(steps: list[StepState], rip: int) -> int | None:
    return next((k for k in range(len(steps) - 1, -1, -1)
                 if steps[k].rip == rip and steps[k].export is None), None)


def explain_fault(tracer: Tracer, end: int, rip: int, what: str,
                  registers: dict[str, int] | None = None,
                  fetch: bool = False) -> dict[str, Any]:
    """The faulting instruction at ``rip`` (the last step at it before ``end``): its
    pointer register, and where that came from; for an instruction fetch (``fetch``), the
    branch that went there and where its target came from."""
    steps = tracer.window(end)
    k = _last_step_at(steps, rip)
    if k is None:
        raise WhyError(f"the faulting instruction at {rip:#x} is not among the {WINDOW} steps "
                       f"before position {end}: nothing to walk back from")
    s = steps[k]
    text = f"{s.insn.mnemonic} {s.insn.op_str}".strip() if s.insn is not None else "?"
    start = {"what": what, "position": s.position, "pid": s.pid, "tid": s.tid,
             "ring": s.ring, "irql": s.irql, "rip": s.rip,
             "symbol": tracer.where(s.rip, s.pid), "instruction": text}
    if fetch:
        _explain_branch(tracer, steps, k, start)
        return start
    reg = tracer.pointer(steps, k)
    if reg is None:
        tracer.origin("not-followed", f"{text} uses no pointer register (a constant or "
                      "rip-relative address): nothing to walk back")
    else:
        start["register"] = reg
        start["value"] = (registers or {}).get(reg, s.regs.get(reg))
    return start


def _explain_branch(tracer: Tracer, steps: list[StepState], k: int,
                    start: dict[str, Any]) -> None:
    """A fetch fault at step ``k``: the pointer is RIP itself, set by the step before (a
    call, jmp or ret); walk back its target: a register, a load (``ret``'s from the stack,
    ``call qword ptr [...]``'s), or a constant."""
    start["register"], start["value"] = "rip", steps[k].rip
    while k > 0 and steps[k - 1].rip == steps[k].rip:
        k -= 1                           # an earlier attempt at the same fetch (a page-in)
    b = steps[k - 1] if k > 0 else None
    if b is None or b.insn is None:
        tracer.origin("not-followed", "the step before the fetch is not in the window: "
                      "not followed")
        return
    text = f"{b.insn.mnemonic} {b.insn.op_str}".strip()
    start["branch"] = {"position": b.position, "rip": b.rip,
                       "symbol": tracer.where(b.rip, b.pid), "instruction": text}
    ops = list(b.insn.operands)
    if b.insn.mnemonic == "ret" or (ops and ops[0].type == cx.X86_OP_MEM):
        tracer.load(steps, k - 1, "rip", [])
    elif ops and ops[0].type == cx.X86_OP_REG:
        tracer.trace_register(steps, k - 1, family(b.insn.reg_name(ops[0].reg)))
    elif ops and ops[0].type == cx.X86_OP_IMM:
        tracer._constant(b, ops[0].imm & 0xFFFF_FFFF_FFFF_FFFF, text, [])
    else:
        tracer.origin("not-followed", f"the target of {text}: not followed")


def explain_address(tracer: Tracer, address: int, size: int, pid: int | None,
                    position: int, value: int | None) -> dict[str, Any]:
    """The value now at [address, address + size): its last write, and on."""
    start = {"what": "value", "position": position, "address": address, "size": size,
             "pid": pid, "value": value, "symbol": tracer.where(address, pid)}
    tracer.memory_at(address, size, pid, position, {})
    return start


def annotate_pointer(tracer: Tracer, result: dict[str, Any],
                     events: list[dict[str, Any]]) -> None:
    """The first write of the chain, made in ring 0 to a user address or at DISPATCH_LEVEL
    or above: walk back its pointer too (``pointer``: whose request it came from); at
    DISPATCH_LEVEL or above, name the DPC that ran (the last ``dpc`` event before it) and
    the process it wrote into vs the IRP's requester (``dpc``)."""
    first = next((link for link in result["chain"] if link["step"] == "write"), None)
    if first is None or first["ring"] != 0:
        return
    user = first["va"] is not None and first["va"] < layout.USER_SPACE_END
    if not user and first["irql"] < 2:
        return
    chain, writes, tracer.chain, tracer.writes = tracer.chain, tracer.writes, [], 0
    steps = tracer.window(first["position"])
    k = next((n for n, s in enumerate(steps) if s.position == first["position"]), None)
    if k is not None:
        tracer.pointer(steps, k)
    pointer, tracer.chain, tracer.writes = tracer.chain, chain, writes
    result["pointer"] = pointer
    if first["irql"] < 2:
        return
    dpcs = [e for e in events if e["event"] == "dpc" and e["position"] <= first["position"]]
    dpc = {"routine": None, "position": None}
    if dpcs:
        dpc = {"routine": dpcs[-1]["routine_symbol"].split("+")[0],
               "position": dpcs[-1]["position"]}
    requester = next((link for link in pointer if link.get("kind") == "irp-field"), None)
    dpc.update(wrote_into=first["pid"], wrote_into_name=first["process"],
               irp=requester["irp"] if requester else None,
               requester=requester["requester"] if requester else None,
               requester_name=requester["requester_name"] if requester else None)
    result["dpc"] = dpc


_FREES = ("NtFreeVirtualMemory", "NtUnmapViewOfSection")
_ALLOCS = ("NtAllocateVirtualMemory", "NtMapViewOfSection")


def annotate_free(result: dict[str, Any], events: list[dict[str, Any]]) -> None:
    """A use of a user pointer (a fault through it, or the first write's pointer): the
    frees of that process's memory (system calls NtFreeVirtualMemory, NtUnmapViewOfSection)
    between the store that kept the pointer and its use, when there are any: a use after
    free; for a write that did not fault (the first write's pointer), the allocations
    (NtAllocateVirtualMemory, NtMapViewOfSection) after the first free too: it landed in
    memory allocated again (``reallocated``)."""
    start = result["start"]
    if "pointer" in result:                      # the first write's pointer
        use = next(link for link in result["chain"] if link["step"] == "write")
        chain, user_pid, at = result["pointer"], use["pid"], use["position"]
    elif "register" in start and start.get("value") is not None and \
            start["value"] < layout.USER_SPACE_END and start["register"] != "rip":
        chain, user_pid, at = result["chain"], start["pid"], start["position"]
    else:
        return
    stores = [link for link in chain if link["step"] == "write"]
    if not stores:
        return
    kept = stores[-1]["position"]
    whose = next((link["requester"] for link in chain if link.get("kind") == "irp-field"),
                 user_pid)
    frees = [{"position": e["position"], "pid": e["pid"], "service": e["service"]}
             for e in events if e["event"] == "syscall" and e["service"] in _FREES and
             e["pid"] == whose and kept < e["position"] < at]
    if frees:
        result["freed"] = frees
    if frees and "pointer" in result:
        again = [{"position": e["position"], "pid": e["pid"], "service": e["service"]}
                 for e in events if e["event"] == "syscall" and e["service"] in _ALLOCS and
                 e["pid"] == whose and frees[0]["position"] < e["position"] < at]
        if again:
            result["reallocated"] = again


def blame(result: dict[str, Any]) -> dict[str, Any] | None:
    """The oldest store the walk found (the instruction that put the value in memory), or
    the faulting instruction itself when no store was found."""
    writes = [link for link in result["chain"] if link["step"] == "write"]
    if writes:
        w = writes[-1]
        return {"position": w["position"], "rip": w["rip"], "symbol": w["symbol"],
                "module": w["symbol"].split("!")[0] if "!" in w["symbol"] else None,
                "instruction": w["instruction"], "pid": w["pid"]}
    start = result["start"]
    if "branch" in start:                # a fetch fault: the branch that went there
        br = start["branch"]
        return {"position": br["position"], "rip": br["rip"], "symbol": br["symbol"],
                "module": br["symbol"].split("!")[0] if "!" in br["symbol"] else None,
                "instruction": br["instruction"], "pid": start["pid"]}
    if "rip" in start:
        return {"position": start["position"], "rip": start["rip"],
                "symbol": start["symbol"],
                "module": start["symbol"].split("!")[0] if "!" in start["symbol"] else None,
                "instruction": start["instruction"], "pid": start["pid"]}
    return None


# -- the answer in words ---------------------------------------------------------------------

def _who(tracer_names: dict[int, str], pid: int | None) -> str:
    return "the system (no process)" if pid is None else \
        f'process {pid} "{tracer_names.get(pid, "?")}"'


def _at(address: int, symbol: str) -> str:
    """``0x... <module!function+0xN>``, or the address alone when it has no symbol."""
    return f"{address:#x}" + (f" <{symbol}>" if symbol != f"{address:#x}" else "")


def _link_lines(link: dict[str, Any], names: dict[int, str]) -> list[str]:
    kind = link["step"]
    if kind == "write":
        at = link["va"] if link["va"] is not None else link["pa"]
        return [f"write at position {link['position']}: {_at(link['rip'], link['symbol'])}  "
                f"{link['instruction']}",
                f"  wrote {link['new']:#x} (was {link['old']:#x}) at {at:#x}, "
                f"{link['size']} bytes, in {_who(names, link['pid'])}"
                + ("" if link["tid"] is None else f" tid {link['tid']}")
                + f" at ring {link['ring']}, IRQL {link['irql']}"]
    if kind == "load":
        value = "" if link["value"] is None else f" = {link['value']:#x}"
        reg = link["register"] or "the data"
        lines = [f"load at position {link['position']}: {_at(link['rip'], link['symbol'])}  "
                 f"{link['instruction']}: {reg}{value} from {link['address']:#x}"]
        lines += [f"  then {t}" for t in reversed(link["through"])]
        return lines
    if kind == "read-modify-write":
        return [link["text"]]
    lines = [f"origin: {link['text']}"]
    lines += [f"  then {t}" for t in reversed(link.get("through") or [])]
    return lines


def text(result: dict[str, Any]) -> str:
    """The answer as plain lines (docs/debugger.md, "analyze --why")."""
    names = result["names"]
    start = result["start"]
    lines = [f"why: {result['subject']}"]
    if "rip" in start:
        lines.append(f"  at position {start['position']}: "
                     f"{_at(start['rip'], start['symbol'])}  {start['instruction']}, in "
                     f"{_who(names, start['pid'])} at ring {start['ring']}, IRQL "
                     f"{start['irql']}")
        branch = start.get("branch")
        if branch is not None:
            lines.append(f"  reached by: {_at(branch['rip'], branch['symbol'])}  "
                         f"{branch['instruction']} at position {branch['position']}")
        if start.get("register"):
            value = start.get("value")
            lines.append(f"  the pointer: {start['register']}"
                         + ("" if value is None else f" = {value:#x}"))
    elif "address" in start:
        where = f"{start['address']:#x}" + (
            f" <{start['symbol']}>" if start["symbol"] != f"{start['address']:#x}" else "")
        now = "cannot be read now (not mapped, or its process has ended)" \
            if start["value"] is None else f"holds {start['value']:#x}"
        lines.append(f"  {where} {now} ({start['size']} bytes) at position "
                     f"{start['position']}")
    for n, link in enumerate(result["chain"], 1):
        first, *rest = _link_lines(link, names)
        lines.append(f"  {n}. {first}")
        lines += [f"     {line}" for line in rest]
    for c in result.get("completions", []):
        lines.append(f"  {c['ordinal']} IoCompleteRequest at position {c['position']}: "
                     f"called from {_at(c['caller'], c['symbol'])} in "
                     f"{_who(names, c['pid'])} at IRQL {c['irql']}")
    dpc = result.get("dpc")
    if dpc is not None:
        lines.append(f"  the write ran in the DPC {dpc['routine'] or '(unknown)'}"
                     + (f" (it started at position {dpc['position']})"
                        if dpc["position"] is not None else "")
                     + f", in {_who(names, dpc['wrote_into'])}: the process it "
                     "interrupted")
        if dpc["requester"] is not None:
            lines.append(f"  the request it served was {_who(names, dpc['requester'])}'s "
                         f"(IRP {dpc['irp']:#x}): "
                         + ("the same process" if dpc["requester"] == dpc["wrote_into"]
                            else "another process, whose address is meaningless here"))
    for n, link in enumerate(result.get("pointer", []), 1):
        first, *rest = _link_lines(link, names)
        lines.append(f"  pointer {n}. {first}")
        lines += [f"     {line}" for line in rest]
    for f in result.get("freed", []):
        lines.append(f"  {_who(names, f['pid'])} called {f['service']} at position "
                     f"{f['position']}, after the pointer was stored and before it was used: "
                     "a use after free")
    for f in result.get("reallocated", []):
        lines.append(f"  {_who(names, f['pid'])} called {f['service']} at position "
                     f"{f['position']}, after the free: the write landed in memory allocated "
                     "again")
    b = result.get("blame")
    if b is not None:
        lines.append(f"  responsible: {b['symbol']} ({b['module'] or 'no module'}) at position "
                     f"{b['position']}: {b['instruction']}")
    return "\n".join(lines)


def answer(target: Any, factory: Callable[[], Machine], position: int,
           events: list[dict[str, Any]], *, exception: Any = None,
           address: tuple[int, int, int | None] | None = None,
           index: query.QueryIndex | None = None) -> dict[str, Any]:
    """``analyze --why``'s answer as a JSON-ready dict: of the value at ``address``
    (address, size, pid) if given, else of the CPU ``exception`` the debugger stopped at,
    else of the bug check, else of the exception that ended a process; WhyError (one line)
    when there is nothing to explain."""
    names = {p.pid: p.name for p in target.processes()}

    def symbolize(rip: int, pid: int | None = None) -> str:
        try:
            return target.symbolize(rip, pid)
        except Exception:    # noqa: BLE001 - a process gone, a TargetError: no name
            return f"{rip:#x}"

    def image(addr: int, pid: int | None) -> str | None:
        try:
            found = target.image_at(addr, pid)
        except Exception:    # noqa: BLE001 - no image there
            return None
        return found.name if found is not None else None

    tracer = Tracer(factory, symbolize, names, image, index)
    result: dict[str, Any] = {"position": position}
    bc = target.bugcheck()
    if address is not None:
        va, size, pid = address
        try:
            value: int | None = int.from_bytes(target.read_virtual(va, size, pid), "little")
        except Exception:    # noqa: BLE001 - a TargetError: unmapped now, or its process gone
            value = None     # the past still holds its writes
        result["subject"] = f"the value at {va:#x}, {size} bytes" + (
            " (kernel space)" if va >= layout.KERNEL_SPACE_START else f" in {_who(names, pid)}")
        result["start"] = explain_address(tracer, va, size, pid, position, value)
    elif exception is not None:
        result["subject"] = f"the CPU exception #{exception.vector.name} at " \
            f"{symbolize(exception.rip)}"
        result["start"] = explain_fault(tracer, position, exception.rip, "exception",
                                        fetch=exception.access == "fetch")
    elif bc is not None and bc.code == 0x44:
        irp = bc.params[0]
        result["subject"] = f"bug check 0x44 MULTIPLE_IRP_COMPLETE_REQUESTS: the IRP " \
            f"{irp:#x} was completed twice"
        calls = completions(factory, irp)
        for n, c in enumerate(calls):
            c["ordinal"] = ("first", "second", "third")[min(n, 2)] if n < 3 else f"#{n + 1}"
            c["symbol"] = symbolize(c["caller"])
        result["completions"] = calls
        result["start"] = {"what": "irp", "irp": irp, "position": position}
        result["chain"] = []
        result["blame"] = None if len(calls) < 2 else {
            "position": calls[1]["position"], "rip": calls[1]["caller"],
            "symbol": calls[1]["symbol"],
            "module": calls[1]["symbol"].split("!")[0] if "!" in calls[1]["symbol"] else None,
            "instruction": "call IofCompleteRequest", "pid": calls[1]["pid"]}
        result["names"] = names
        return result
    elif bc is not None:
        if bc.code not in _FAULT_CODES or bc.rip is None:
            raise WhyError(f"bug check {bc.code:#x} {bc.name}: no faulting access to walk "
                           "back from (analyze --why follows a fault's pointer, bug check "
                           "0x44's completions, or ADDR)")
        result["subject"] = f"bug check {bc.code:#x} {bc.name} at {symbolize(bc.rip)}"
        result["start"] = explain_fault(tracer, position, bc.rip, "bugcheck", bc.registers,
                                        bc.code in _FETCH_CODES)
    else:
        dead = next(((p.pid, target.exception_of(p.pid)) for p in reversed(target.processes())
                     if target.exception_of(p.pid) is not None), None)
        if dead is None:
            raise WhyError("nothing to explain: no CPU exception at this stop, no bug check, "
                           "no process ended by an exception (analyze --why ADDR [LEN] [pid N] "
                           "explains a value)")
        pid, info = dead
        exits = [e for e in events if e["event"] == "exception" and e["pid"] == pid
                 and e["rip"] == info.rip]
        end = exits[-1]["position"] if exits else position
        result["subject"] = f'the exception that ended process {pid} "{names.get(pid, "?")}" ' \
            f"at {symbolize(info.rip, pid)}"
        result["start"] = explain_fault(tracer, end, info.rip, "exception",
                                        fetch=info.access == "execute")
    result["chain"] = tracer.chain
    annotate_pointer(tracer, result, events)
    result["blame"] = blame(result)
    annotate_free(result, events)
    result["names"] = names
    return result


def json_record(result: dict[str, Any]) -> dict[str, Any]:
    """The answer for scripts: ``result`` without the process-name table."""
    return {k: v for k, v in result.items() if k != "names"}
