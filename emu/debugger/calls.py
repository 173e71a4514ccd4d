"""Each call of a function over the whole past: ``history calls SYMBOL`` (WinDbg TTD's Calls).

A query re-executes the machine from boot to the debugger's current position in a machine
of its own (as ``history write`` does, emu.debugger.query: the machine is deterministic, so
it takes the very path the user's machine took), with a Unicorn code hook on the function's
first instruction only:

* A driver's or an app's function (``ticket.sys!Read``, ``fib!fib``): the hook sees each
  arrival at the function's address, in the process (or the driver) the symbol belongs to.
  That arrival is the call: RSP points at the return address (SDM Vol. 1 6.4.1: CALL
  pushes it, then jumps), the arguments are where the calling convention puts them, the
  caller is the ``call`` instruction that ends at the return address. A second code hook,
  on that return address, sees the return: the first arrival there with RSP one slot above
  the call's (RET pops the return address), in the same address space; RAX (EAX) then holds
  the return value. Nested and recursive calls each have their own RSP, so each pairs with
  its own return.
* A kernel export (``nt!IofCompleteRequest``): the driver's ``call`` through its IAT
  reaches the export's trap address, whose fetch faults, and the executive runs the routine
  in Python (emu.nt.ke_call: the debugger hears of it through ``export_called``); the
  return is the arrival at the return address after it, RAX what the routine returned.

A call that never returns says why: the machine's bug check stopped it, its process ended,
its frame was unwound (an exception dispatched past it: a later call or return in the same
thread and stack ran with RSP above its frame), or it is still running at the position the
query ran to.

Calling conventions: the Microsoft x64 one for drivers and exports (RCX, RDX, R8, R9, then
the stack above the return address and the 32-byte shadow space: [RSP+0x28], [RSP+0x30],
...); System V AMD64 for the 64-bit ELF apps (RDI, RSI, RDX, RCX, R8, R9, then [RSP+8],
...); cdecl for the 32-bit apps (all on the stack: [ESP+4], [ESP+8], ...). How many: the
export's prototype where the executive knows it (its routine's docstring, the WDK's
signature), DriverEntry's (DRIVER_INITIALIZE: DriverObject, RegistryPath), else 4, or what
``args N`` asks for.

What a query learnt is kept (``CallIndex``): a later query for the same function and
argument count at or before the position it ran to is answered without re-executing.
Memory is bounded (docs/limits.md).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from unicorn import UC_HOOK_CODE

from emu import fmt
from emu.debugger import query, symbols
from emu.debugger.records import ImageInfo
from emu.debugger.session import Session
from emu.debugger.stops import Stop
from emu.hw import mmu
from emu.hw.faultaddr import decode
from emu.nt import exports, layout
from emu.nt.events import Event
from emu.nt.loaded_modules import driver_at

if TYPE_CHECKING:
    from emu.machine import Machine

PAGE = layout.PAGE_SIZE
MAX_CALLS = 100_000          # calls one query records (docs/limits.md)
MAX_INDEX_CALLS = 100_000    # calls the index keeps, all functions (about 700 B each: 70 MiB)
MAX_ARGS = 16                # ``args N``: 0 to 16
DEFAULT_ARGS = 4
USAGE = "history calls SYMBOL [pid N] [args N] [--json]"
RFLAGS_AC = 1 << 18

# wdm.h's macros over exported routines: IoCompleteRequest(a, b) is IofCompleteRequest(a, b),
# and so on; a call through the macro is a call of the routine it names.
# (x64: KeAcquireSpinLock(L, O) is *O = KeAcquireSpinLockRaiseToDpc(L).)
WDM_MACROS = {"IoCompleteRequest": "IofCompleteRequest", "KeRaiseIrql": "KfRaiseIrql",
              "KeAcquireSpinLock": "KeAcquireSpinLockRaiseToDpc"}

# The WDK's DRIVER_INITIALIZE: what the executive calls DriverEntry with.
DRIVER_ENTRY_PARAMS = ("DriverObject", "RegistryPath")

# Why a call has no return (JSON "no_return").
BUGCHECK, PROCESS_EXIT, UNWOUND, RUNNING = "bugcheck", "process-exit", "unwound", "running"


class CallsError(ValueError):
    """A ``history calls`` that cannot be answered: one line."""


# -- the function asked about -----------------------------------------------------------------

@dataclass(frozen=True)
class Function:
    """The function a query is about: ``name`` (``module!symbol``), ``kind`` ("export",
    "driver" or "app"), its address in each process that has it (``{pid: address}``; the
    key None for a driver's or an export's, the same in every address space), its
    parameter names when its prototype is known, and its code's width (32 or 64)."""

    name: str
    kind: str
    module: str
    addresses: dict[int | None, int]
    params: tuple[str, ...] | None = None
    bits: int = 64

    @property
    def convention(self) -> str:
        """"ms-x64", "sysv" or "cdecl" (see the module docstring)."""
        if self.kind != "app":
            return "ms-x64"
        return "sysv" if self.bits == 64 else "cdecl"

    def default_args(self) -> int:
        """How many arguments a row shows unless ``args N`` says."""
        return DEFAULT_ARGS if self.params is None else len(self.params)


def prototype(name: str) -> tuple[str, ...] | None:
    """The parameter names of the export ``name`` from its routine's WDK signature (the
    first line of its docstring: ``VOID IofCompleteRequest(Irp, PriorityBoost)``); named
    parameters only for a variadic one (``DbgPrint(Format, ...)``); None if unknown."""
    handler = exports.EXPORTS.get(name)
    doc = (handler.__doc__ or "") if handler is not None else ""
    at = doc.find(name + "(")
    if at < 0 or at > 80:
        return None
    start = at + len(name) + 1
    end = doc.find(")", start)
    if end < 0:
        return None
    out = []
    for item in doc[start:end].replace("\n", " ").split(","):
        words = [w for w in "".join(c if c.isalnum() or c == "_" else " "
                                    for c in item).split() if w != "OPTIONAL"]
        if not words or item.strip() == "...":
            continue
        if len(words) == 1 and words[0].lower() == "void":
            continue
        out.append(words[-1])
    return tuple(out)


def resolve(text: str, images: list[ImageInfo]) -> Function:
    """The function ``text`` names (``module!symbol``, ``nt!Export``, or a bare name
    that one module, or the kernel, has); CallsError naming it, with close names, if none,
    or listing the candidates if several modules have it."""
    if "!" in text:
        module, _, name = text.partition("!")
        if not module or not name:
            raise CallsError(f"{text}: a function is NAME or MODULE!NAME")
        if module.lower() == "nt":
            return _export(name, text)
        matches = [i for i in images if module.lower() in symbols.module_names(i)]
        if not matches:
            known = sorted({i.name for i in images})
            hint = difflib.get_close_matches(module, known, n=1)
            raise CallsError(f"no module '{module}'" + (f" (did you mean '{hint[0]}'?)" if hint
                             else f" (modules: {', '.join(known) or 'none'})"))
        found = [i for i in matches if name in i.symbols]
        if not found:
            names = sorted({n for i in matches for n in i.symbols})
            raise CallsError(f"no function '{text}'" + _suggest(name, names,
                                                                 f"{matches[0].name}!"))
        return _in_images(found, name)
    name = text
    if name in exports.EXPORTS or name in WDM_MACROS:
        # A kernel export: the drivers' import thunks of the same name are the linker's
        # `jmp [__imp_Name]`, not the routine (ask for them as module!Name).
        return _export(name, text)
    modules: dict[str, list[ImageInfo]] = {}
    for image in images:
        if name in image.symbols:
            modules.setdefault(image.name, []).append(image)
    if len(modules) > 1:
        raise CallsError(f"ambiguous function '{name}': " +
                         ", ".join(f"{m}!{name}" for m in sorted(modules)) +
                         " (say which: MODULE!NAME)")
    if not modules:
        everything = sorted({f"{i.name}!{n}" for i in images for n in i.symbols} |
                            {f"nt!{n}" for n in exports.EXPORTS})
        bare = {}
        for full in everything:
            bare.setdefault(full.split("!", 1)[1], full)
        hints = difflib.get_close_matches(name, sorted(bare), n=3)
        raise CallsError(f"no function '{name}'" + (
            " (did you mean " + ", ".join(f"'{bare[h]}'" for h in hints) + "?)" if hints
            else ""))
    return _in_images(next(iter(modules.values())), name)


def _export(name: str, text: str) -> Function:
    routine = WDM_MACROS.get(name, name)
    address = exports.address_of(routine)
    if address is None:
        raise CallsError(f"no kernel export '{name}'" +
                         _suggest(name, sorted(exports.EXPORTS), "nt!"))
    return Function(f"nt!{routine}", "export", "nt", {None: address}, prototype(routine))


def _in_images(found: list[ImageInfo], name: str) -> Function:
    first = found[0]
    params = DRIVER_ENTRY_PARAMS if first.kind == "driver" and name == "DriverEntry" else None
    if first.kind == "driver":
        return Function(f"{first.name}!{name}", "driver", first.name,
                        {None: first.symbols[name]}, params)
    return Function(f"{first.name}!{name}", "app", first.name,
                    {i.pid: i.symbols[name] for i in found}, params, first.bits)


def _suggest(name: str, names: list[str], prefix: str) -> str:
    hint = difflib.get_close_matches(name, names, n=1)
    return f" (did you mean '{prefix}{hint[0]}'?)" if hint else ""


def parse(words: list[str], pids: set[int], images: list[ImageInfo]) \
        -> tuple[Function, int | None, int | None, bool]:
    """``calls SYMBOL [pid N] [args N] [--json]`` -> (function, pid, args, json);
    CallsError otherwise (args None: the function's own count)."""
    rest = [w for w in words[1:] if w != "--json"]
    as_json = len(rest) != len(words) - 1
    if not rest:
        raise CallsError(f"history calls needs a function ({USAGE})")
    symbol = rest.pop(0)
    pid = nargs = None
    while rest:
        word = rest.pop(0)
        if word not in ("pid", "args"):
            raise CallsError(f"unexpected {word!r} ({USAGE})")
        if not rest:
            raise CallsError("pid needs a process id (see ps)" if word == "pid" else
                             f"args needs a number (0 to {MAX_ARGS})")
        text = rest.pop(0)
        if word == "pid":
            pid = parse_pid(text, pids)
        else:
            nargs = parse_args(text)
    return resolve(symbol, images), pid, nargs, as_json


def parse_pid(text: str, pids: set[int]) -> int:
    """A process id the machine has created by now; CallsError otherwise."""
    return query.parse_pid(text, pids, CallsError)


def parse_args(text: str) -> int:
    """``args N``: how many arguments to show, 0 to MAX_ARGS; CallsError otherwise."""
    try:
        n = int(text, 0)
    except ValueError:
        n = -1
    if not 0 <= n <= MAX_ARGS:
        raise CallsError(f"args {text}: the number of arguments to show, 0 to {MAX_ARGS}")
    return n


# -- one call ---------------------------------------------------------------------------------

@dataclass(slots=True)
class Call:
    """One call of the past (see the module docstring): where and by whom it was made, its
    arguments (None: not readable), and its return or why there is none."""

    position: int                # the steps before the function's first instruction
    pid: int | None
    tid: int | None
    ring: int
    irql: int
    address: int                 # the function's (the export's trap address)
    rsp: int                     # RSP at the call: where the return address is
    return_address: int | None
    caller: int | None           # the call instruction; None: the executive called it
    args: tuple[int | None, ...]
    cr3: int
    return_position: int | None = None
    value: int | None = None     # RAX (EAX) at the return
    end: str | None = None       # why it has no return (BUGCHECK, ...), else None
    end_position: int | None = None
    end_detail: str = ""

    def at(self, now: int) -> Call:
        """This call as seen at position ``now`` (a return or an end after it: running)."""
        if self.return_position is not None and self.return_position <= now:
            return self
        if self.end is not None and self.end_position is not None and \
                self.end_position <= now:
            return dataclasses.replace(self, return_position=None, value=None)
        return dataclasses.replace(self, return_position=None, value=None, end=RUNNING,
                                   end_position=now, end_detail="")

    def json(self, fn: Function, nargs: int, symbolize) -> dict[str, Any]:
        """The JSON record of this call (docs/debugger.md, "history calls")."""
        return {"position": self.position, "function": fn.name, "address": self.address,
                "pid": self.pid, "tid": self.tid, "ring": self.ring, "irql": self.irql,
                "caller": self.caller,
                "caller_symbol": None if self.caller is None else
                symbolize(self.caller, self.pid),
                "return_address": self.return_address, "convention": fn.convention,
                "args": list(self.args[:nargs]), "return": self.value,
                "return_position": self.return_position, "no_return": self.end,
                "no_return_position": self.end_position if self.end else None}


def row(n: int, call: Call, fn: Function, nargs: int, symbolize) -> str:
    """One row of the answer: #row, position, pid, tid, ring, IRQL, the caller (RIP <symbol>
    of its call instruction, or the executive), the call with its arguments, and its return
    (value and position) or why it has none."""
    pid = "-" if call.pid is None else str(call.pid)
    tid = "-" if call.tid is None else str(call.tid)
    if call.caller is None:
        caller = "(called by the executive)" if call.return_address == layout.KERNEL_RETURN \
            else "(return address not readable)" if call.return_address is None \
            else f"(no call instruction ends at the return address {call.return_address:#x})"
    else:
        where = symbolize(call.caller, call.pid)
        caller = f"{call.caller:#x}" + (f" <{where}>" if where != f"{call.caller:#x}" else "")
    names = fn.params or ()
    shown = []
    for i, value in enumerate(call.args[:nargs]):
        text = "?" if value is None else f"{value:#x}"
        shown.append(f"{names[i]}={text}" if i < len(names) else text)
    what = f"{fn.name}({', '.join(shown)})"
    if call.return_position is not None:
        ret = f"returned {call.value:#x} at {call.return_position}"
    else:
        ret = "never returned: " + _why(call)
    return f"#{n:<4} {call.position:>10}  pid {pid:>3} tid {tid:>3}  ring {call.ring}  " \
        f"IRQL {call.irql}  {caller}  {what}  {ret}"


def _why(call: Call) -> str:
    if call.end == BUGCHECK:
        return f"the system stopped at {call.end_position} ({call.end_detail})"
    if call.end == PROCESS_EXIT:
        return f"its process ended at {call.end_position} ({call.end_detail})"
    if call.end == UNWOUND:
        return f"unwound by an exception (its frame was gone at {call.end_position})"
    return f"still running at {call.end_position}"


def memo(symbolize: Callable[[int, int | None], str]) -> Callable[[int, int | None], str]:
    """``symbolize`` remembered: an answer's rows name the same call sites again and again."""
    return functools.lru_cache(maxsize=4096)(symbolize)


def summary(fn: Function, count: int, pid: int | None, position: int, truncated: bool,
            cached: bool) -> str:
    """The answer's last line: how many calls of what, whose, up to when, and how found."""
    whose = f" in pid {pid}" if pid is not None else ""
    how = "from the index" if cached else "re-executed from boot"
    cut = f"; more than {MAX_CALLS:,} calls: only the first are shown" if truncated else ""
    return f"{count} call{'' if count == 1 else 's'} of {fn.name}{whose} from boot to " \
        f"position {position} ({how}){cut}"


# -- the re-execution -------------------------------------------------------------------------

class _Done(Exception):
    """The query's machine reached the position asked for."""


def peek(ex, va: int, n: int) -> bytes | None:
    """``n`` bytes at ``va`` in the current address space, read without side effects (no
    page-in, no A/D bits), or None where a page is not present."""
    cpu = ex.cpu
    out = bytearray()
    while len(out) < n:
        at = (va + len(out)) & 0xFFFF_FFFF_FFFF_FFFF
        try:
            # RFLAGS.AC: a supervisor read of a user page passes SMAP (SDM Vol. 3A 4.6.1)
            pa = mmu.walk(ex.mem, at, "read", cr3=cpu.cr3, cpl=0, cr0=cpu.cr0, cr4=cpu.cr4,
                          efer=cpu.efer, rflags=RFLAGS_AC).pa
        except (mmu.PageFault, mmu.GeneralProtection):
            return None
        k = min(n - len(out), PAGE - (at & (PAGE - 1)))
        out += ex.mem.read(pa, k)
    return bytes(out)


def _word(ex, va: int, size: int) -> int | None:
    raw = peek(ex, va, size)
    return None if raw is None else int.from_bytes(raw, "little")


def call_site(ex, ret: int, bits: int) -> int | None:
    """The ``call`` instruction that ends at ``ret`` (as emu.nt.exports.call_site decodes
    backwards: a 3-byte call needs REX.B), or None."""
    for size in (6, 5, 3, 2, 7):
        code = peek(ex, ret - size, size)
        if code is None or (size == 3 and (bits == 32 or code[0] & 0xF1 != 0x41)):
            continue
        insn = decode(code, ret - size, bits)
        if insn is not None and insn.mnemonic == "call" and insn.size == size:
            return ret - size
    return None


class CallRecorder(Session):
    """A query's own machine, re-executed from boot to ``target`` under a headless session,
    recording every call of ``fn`` with ``nargs`` arguments (see the module docstring);
    ``target`` None: to the machine's end (its last events, a process's exit or the bug
    check, happen at the very position it ends at)."""

    def __init__(self, machine: Machine, fn: Function, nargs: int, target: int | None) -> None:
        machine.executive.console = None        # its output was shown the first time
        self.fn = fn
        self.nargs = nargs
        self.goal = target
        self.calls: list[Call] = []
        self.truncated = False
        self._open: dict[tuple[int, int, int | None], list[Call]] = {}
        self._ret_hooks: dict[int, int] = {}     # return address -> hook
        self._wanted: set[int] = set()           # return addresses to hook before the next run
        self._last_entry: tuple[int, int, int] | None = None
        self._exits: dict[int, tuple[int, str]] = {}
        self._sites: dict[tuple[int | None, int], int | None] = {}   # (pid, ret) -> call
        super().__init__(machine, self._on_stop)
        uc = self.executive.cpu.uc
        if fn.kind != "export":
            for address in sorted(set(fn.addresses.values())):
                uc.hook_add(UC_HOOK_CODE, self._on_entry, None, address, address)
            uc.ctl_flush_tb()
        self.executive.events.subscribe(self._on_machine_event, logged=True)  # no dispatch

    def record(self) -> list[Call]:
        """Run to the target; the calls, in order, each with its return or why none."""
        if self.goal is None or self.goal > 0:
            if self.goal is None:
                self.cont()
            else:
                self.step(self.goal)
            try:
                self.run()
            except _Done:
                pass
        ex = self.executive
        for call in self.calls:
            if call.return_position is None and call.end is None:
                if call.ring == 3 and call.pid in self._exits:
                    call.end = PROCESS_EXIT
                    call.end_position, call.end_detail = self._exits[call.pid]
                elif ex.bugcheck is not None and self._bugcheck_at is not None:
                    call.end, call.end_position = BUGCHECK, self._bugcheck_at
                    call.end_detail = f"bug check {ex.bugcheck.code:#x} {ex.bugcheck.name}"
        self.close()
        return self.calls

    _bugcheck_at: int | None = None

    def _on_stop(self, _stop: Stop) -> bool:
        if self.ended:
            return False
        if self.goal is None:
            self.cont()
            return True
        if self.position >= self.goal:
            raise _Done()
        self.step(self.goal - self.position)
        return True

    # -- hooks ----------------------------------------------------------------------------

    @property
    def stop_pending(self) -> bool:
        """A return address waits for its hook: stop the run to add it (between runs)."""
        return bool(self._wanted) or super().stop_pending

    def before_run(self) -> None:
        """Hook the return addresses met since the last run, note the calls whose frame is
        gone, then the session's own work."""
        self._hook_returns()
        if self._open:
            cpu = self.executive.cpu
            self._abandon(cpu.reg("rsp"), self.position, cpu.rip)
        super().before_run()

    def _hook_returns(self) -> None:
        if not self._wanted:
            return
        uc = self.executive.cpu.uc
        for address in sorted(self._wanted):
            self._ret_hooks[address] = uc.hook_add(UC_HOOK_CODE, self._on_return, None,
                                                   address, address)
        self._wanted.clear()
        uc.ctl_flush_tb()

    def _on_entry(self, uc, address: int, _size: int, _data) -> None:
        """The function's first instruction is about to run: a call (once per arrival, not
        again when the instruction is retried after a fault or a stop)."""
        ex = self.executive
        cpu = ex.cpu
        proc = ex.current
        if self.fn.kind == "app":
            if proc is None or self.fn.addresses.get(proc.pid) != address:
                return                           # another image at this address
        else:
            driver = driver_at(ex, address)
            if driver is None or driver.image.name != self.fn.module:
                return
        completed = cpu.native.completed_before(address)
        rsp = cpu.reg("rsp")
        key = (address, rsp, completed)
        if key == self._last_entry:
            return
        self._last_entry = key
        position = completed + self.position - cpu.instructions
        self._enter(position, address, rsp)
        if self._wanted:
            uc.emu_stop()                        # hook the return address first

    def export_called(self, address: int) -> None:
        """A driver called a kernel export (emu.nt.ke_call, outside the CPU's run)."""
        if self.fn.kind == "export" and address == self.fn.addresses[None] and \
                not self._detached:
            self._enter(self.position, address, self.executive.cpu.reg("rsp"))
            self._hook_returns()
        super().export_called(address)

    def _enter(self, position: int, address: int, rsp: int) -> None:
        if len(self.calls) >= MAX_CALLS:
            self.truncated = True            # no more rows; the returns of these still come
            return
        ex = self.executive
        cpu = ex.cpu
        width = 4 if self.fn.bits == 32 else 8
        ret = _word(ex, rsp, width)
        self._abandon(rsp + width, position)
        thread = ex.current_thread
        if self.fn.convention == "ms-x64":
            regs = ("rcx", "rdx", "r8", "r9")
            args = [cpu.reg(regs[i]) if i < 4 else _word(ex, rsp + 0x28 + 8 * (i - 4), 8)
                    for i in range(self.nargs)]
        elif self.fn.convention == "sysv":
            regs = ("rdi", "rsi", "rdx", "rcx", "r8", "r9")
            args = [cpu.reg(regs[i]) if i < 6 else _word(ex, rsp + 8 + 8 * (i - 6), 8)
                    for i in range(self.nargs)]
        else:
            args = [_word(ex, rsp + 4 + 4 * i, 4) for i in range(self.nargs)]
        caller = None
        if ret is not None and ret != layout.KERNEL_RETURN:
            thread = ex.current_thread      # the same code at a return address of a process
            site = (thread.process.pid if thread is not None and ret < layout.KERNEL_SPACE_START
                    else None, ret)
            if site not in self._sites:
                self._sites[site] = call_site(ex, ret, self.fn.bits)
            caller = self._sites[site]
        call = Call(position, thread.process.pid if thread is not None else None,
                    thread.tid if thread is not None else None, cpu.reg("cs") & 3, ex.irql,
                    address, rsp, ret, caller, tuple(args), cpu.cr3)
        self.calls.append(call)
        if ret is not None:
            self._open.setdefault((ret, rsp + width, self._space(rsp)), []).append(call)
            if ret not in self._ret_hooks:
                self._wanted.add(ret)

    def _space(self, rsp: int) -> int | None:
        """Whose stack: None for a kernel stack (the same in every space), else CR3."""
        return None if rsp >= layout.KERNEL_SPACE_START else self.executive.cpu.cr3

    def _on_return(self, uc, address: int, _size: int, _data) -> None:
        """An arrival at a return address: the return of the open calls whose return
        address it is and whose RET left RSP here, in this stack."""
        ex = self.executive
        cpu = ex.cpu
        rsp = cpu.reg("rsp")
        calls = self._open.pop((address, rsp, self._space(rsp)), None)
        if not calls:
            return
        position = cpu.native.completed_before(address) + self.position - cpu.instructions
        value = cpu.reg("eax" if self.fn.bits == 32 else "rax")
        for call in calls:
            call.return_position, call.value = position, value
        self._abandon(rsp, position)

    def _abandon(self, rsp: int, position: int, rip: int | None = None) -> None:
        """Calls of this thread and stack whose frame lies below ``rsp`` can no longer
        return: an exception unwound them (while a call runs, RSP stays at or below its
        return address's slot; once it returns, RSP is one slot above and RIP at the return
        address, which ``rip``, if given, is checked against)."""
        thread = self.executive.current_thread
        tid = thread.tid if thread is not None else None
        space = self._space(rsp)
        for key in [k for k in self._open if k[2] == space and
                    (k[1] < rsp or (k[1] == rsp and rip is not None and rip != k[0]))]:
            left = []
            for call in self._open[key]:
                if call.tid == tid:
                    call.end, call.end_position = UNWOUND, position
                else:
                    left.append(call)
            if left:
                self._open[key] = left
            else:
                del self._open[key]

    def _on_machine_event(self, event: Event, details: dict[str, Any]) -> None:
        if event is Event.PROCESS_EXIT:
            proc = details["process"]
            status = proc.exit_status
            self._exits[proc.pid] = (self.position, "" if status is None else
                                     f"exit status {fmt.status(status)}")
        elif event is Event.BUGCHECK:
            self._bugcheck_at = self.position


# -- the index --------------------------------------------------------------------------------

@dataclass
class _Learnt:
    upto: int                      # calls are known from boot to this position
    calls: list[Call]
    truncated: bool


@dataclass
class CallIndex:
    """What ``history calls`` queries learnt: the calls of each function (with an argument
    count) from boot to a position, kept for the next query; at most MAX_INDEX_CALLS calls,
    the least recently used functions' dropped first."""

    learnt: OrderedDict[tuple[str, int], _Learnt] = field(default_factory=OrderedDict)

    def answer(self, fn: Function, nargs: int, position: int,
               factory: Callable[[], Machine], *,
               ended: bool = False) -> tuple[list[Call], bool, bool]:
        """(the calls of ``fn`` from boot to ``position``, each as seen there; truncated;
        from the index): re-executes only if the index has not seen that far. ``ended``:
        ``position`` is the end of the machine (re-executed to its end, last events too)."""
        key = (fn.name, nargs)
        learnt = self.learnt.get(key)
        cached = learnt is not None and learnt.upto >= position
        if not cached:
            recorder = CallRecorder(factory(), fn, nargs, None if ended else position)
            # Truncated: the first MAX_CALLS calls, with their returns up to ``position``.
            learnt = _Learnt(position, recorder.record(), recorder.truncated)
            self.learnt[key] = learnt
            self._bound()
        self.learnt.move_to_end(key)
        out = [c.at(position) for c in learnt.calls if c.position < position]
        return out, learnt.truncated and len(out) == len(learnt.calls), cached

    def _bound(self) -> None:
        while len(self.learnt) > 1 and \
                sum(len(v.calls) for v in self.learnt.values()) > MAX_INDEX_CALLS:
            self.learnt.popitem(last=False)


def calls(factory: Callable[[], Machine], fn: Function, position: int, *,
          pid: int | None = None, nargs: int | None = None, ended: bool = False,
          index: CallIndex | None = None) -> tuple[list[Call], bool]:
    """Every call of ``fn`` (see ``resolve``) from boot to ``position`` in the machine
    ``factory`` makes, in order, each with its arguments (``nargs``: the function's own
    count by default) and its return or why none; only process ``pid``'s if given;
    ``ended``: ``position`` is where the machine ended.
    Returns (calls, truncated: more than MAX_CALLS). ``index`` keeps what it learnt."""
    index = index if index is not None else CallIndex()
    n = fn.default_args() if nargs is None else nargs
    found, truncated, _ = index.answer(fn, n, position, factory, ended=ended)
    return [c for c in found if pid is None or c.pid == pid], truncated
