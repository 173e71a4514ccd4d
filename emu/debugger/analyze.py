"""``analyze``: what happened, in words (WinDbg's ``!analyze -v``, for this machine).

Three things can be analyzed, in this order: the CPU exception the debugger stopped at;
the bug check that stopped the machine (each stop code's parameters explained as
Microsoft's bug check reference gives them); the exception that ended a process. Each
gives the instruction, the ring, the access, the page walk that failed (redone through
emu.hw.mmu when the tables still exist), the responsible image and the stack.
"""

from __future__ import annotations

import re
from typing import Any

from emu import fmt
from emu.debugger import walkview
from emu.debugger.memview import backtrace_lines
from emu.debugger.records import TargetError
from emu.debugger.targetbase import Target
from emu.debugger.views import IRQL_NAMES
from emu.hw import mmu
from emu.hw.exceptions import CpuException, Vector
from emu.hw.mmu import PFErr
from emu.nt import layout
from emu.nt.bugcheck import BugCheckCode
from emu.nt.mm import softpte
from emu.nt.process import ExceptionInfo
from emu.nt.status import NTSTATUS
from emu.nt.trap import PRIVILEGED

_VECTOR_WORDS = {
    Vector.DE: "#DE divide error: a division by zero, or a quotient too large",
    Vector.DB: "#DB debug exception",
    Vector.BP: "#BP breakpoint: an int3",
    Vector.UD: "#UD invalid opcode: not an instruction this CPU runs (ud2, or garbage)",
    Vector.GP: "#GP general protection",
    Vector.PF: "#PF page fault",
    Vector.MC: "#MC machine check",
    Vector.DF: "#DF double fault",
}
_STATUS_WORDS = {
    NTSTATUS.STATUS_ACCESS_VIOLATION: "the thread used an address its rights do not allow",
    NTSTATUS.STATUS_PRIVILEGED_INSTRUCTION: "an instruction that needs ring 0 ran at ring 3: "
                                            "the CPU refused it with #GP",
    NTSTATUS.STATUS_ILLEGAL_INSTRUCTION: "the CPU could not decode the instruction (#UD)",
    NTSTATUS.STATUS_INTEGER_DIVIDE_BY_ZERO: "a division by zero (#DE)",
    NTSTATUS.STATUS_INTEGER_OVERFLOW: "a division whose quotient does not fit (#DE)",
    NTSTATUS.STATUS_BREAKPOINT: "an int3 (#BP) with no debugger to take it",
    NTSTATUS.STATUS_STACK_OVERFLOW: "the stack ran into its last guard page: it cannot grow",
    NTSTATUS.STATUS_GUARD_PAGE_VIOLATION: "the first touch of a PAGE_GUARD page",
    NTSTATUS.STATUS_IN_PAGE_ERROR: "the page could not be read back from the pagefile",
}
_AV_ACCESS = {0: "read", 1: "write", 8: "execute"}
_PF50_ACCESS = {0: "read", 2: "write", 0x10: "execute"}

# Stop code -> (what it means, parameter kinds, parameter meanings); Microsoft's "Bug check
# code reference". Kinds: addr, rip, irql, status, vector, pte, acc50, accd1, value, none.
BUGCHECKS: dict[int, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    0x09: ("the IRQL was lowered by a raise (KfRaiseIrql to a lower level)",
           ("irql", "irql", "none", "none"), ("the IRQL asked for", "the IRQL it was",
                                              "reserved", "reserved")),
    0x0A: ("kernel code touched pageable or invalid memory at an IRQL too high to wait "
           "for a page-in", ("addr", "irql", "accd1", "rip"),
           ("the memory referenced", "the IRQL at the time", "the access",
            "the instruction that referenced it")),
    0x0F: ("a spin lock was acquired by the processor that holds it (on one processor "
           "it would spin forever)", ("addr", "none", "none", "none"),
           ("the spin lock", "reserved", "reserved", "reserved")),
    0x10: ("a spin lock was released that is not held", ("addr", "none", "none", "none"),
           ("the spin lock", "reserved", "reserved", "reserved")),
    0x4A: ("a system call returned to user mode above PASSIVE_LEVEL: the driver routine "
           "it ran raised the IRQL and did not lower it", ("addr", "irql", "none", "none"),
           ("the dispatch routine the system call ran", "the IRQL it was left at",
            "reserved", "reserved")),
    0x1A: ("the memory manager found its books broken: a paging structure names what it "
           "should not (a driver garbled a page table?)", ("value",) * 4,
           ("the subtype: 0x41790 a page table's frame, 0x41792 a PTE naming no frame of "
            "RAM or a bad slot, 0x41284 a working-set page, 0x61941 a bad upper-level entry",
            "the address or frame involved", "the entry's address or value",
            "the entry's value")),
    0x1E: ("kernel-mode code raised an exception that nothing handled",
           ("status", "rip", "value", "value"),
           ("the exception code", "where it happened", "the exception's parameter 0",
            "the exception's parameter 1")),
    0x3B: ("an exception in kernel mode while serving a system call",
           ("status", "rip", "addr", "none"),
           ("the exception code", "the instruction that raised it",
            "the context record of the exception",
            "reserved")),
    0x3F: ("no system PTEs were left for a view of an MDL (MmMapLockedPages, or "
           "MmMapLockedPagesSpecifyCache with BugCheckOnFailure)",
           ("value", "value", "value", "value"),
           ("the PTE type (0)", "the pages asked for", "reserved", "reserved")),
    0x44: ("a driver completed an IRP that was already completed",
           ("addr", "none", "none", "none"), ("the IRP", "reserved", "reserved", "reserved")),
    0x4E: ("the PFN database and the page tables disagree about a frame",
           ("value",) * 4,
           ("the subtype: 0x99 a PTE or PFN is corrupt, 0x07 a frame freed twice, 0x02 a "
            "frame beyond RAM", "the frame (PFN)", "its state (page location)", "reserved")),
    0x50: ("kernel-mode code referenced memory that is not mapped (or not valid)",
           ("addr", "acc50", "rip", "none"),
           ("the memory referenced", "the access", "the instruction that referenced it",
            "reserved")),
    0x76: ("a driver left pages locked in a process that ended (parameter 1 = 0), or "
           "unlocked pages that were not locked (1)", ("value", "addr", "value", "none"),
           ("0: a process ended with locked pages, 1: MmUnlockPages of pages not locked",
            "the process (0) or the MDL (1)", "the pages locked in that process",
            "reserved")),
    0x7A: ("a page of kernel data (PagedPool) could not be read back from the pagefile",
           ("value", "status", "pte", "addr"),
           ("the PTE's physical address", "the I/O status of the read", "the PTE",
            "the address that could not be paged in")),
    0x7E: ("a system thread (a driver's DriverEntry or DriverUnload) raised an exception "
           "that nothing handled", ("status", "rip", "addr", "addr"),
           ("the exception code", "where it happened", "the exception record",
            "the context record")),
    0x7F: ("the CPU raised a trap the kernel cannot continue from",
           ("vector", "none", "none", "none"), ("the trap (exception vector)", "reserved",
                                                "reserved", "reserved")),
    0x9C: ("a fatal machine check", ("value",) * 4, ("", "", "", "")),
    0xBE: ("a driver wrote to read-only memory (CR0.WP=1 holds ring 0 to R/W=0)",
           ("addr", "pte", "none", "none"),
           ("the address written", "the PTE", "reserved", "reserved")),
    0xC2: ("a bad pool request (an allocation or a free the pool refuses)",
           ("value", "value", "value", "value"),
           ("the violation (7: freed twice, 8/9: allocated/freed at a bad IRQL, 0xA: wrong "
            "tag, 0x40/0x42/0x46/0x50: not a pool block, 0x9A: MustSucceed)",
            "by parameter 1 (Bug Check 0xC2's table)", "by parameter 1",
            "by parameter 1")),
    0xC4: ("a driver broke a rule the verifier checks", ("value", "addr", "none", "none"),
           ("the rule", "the object involved", "reserved", "reserved")),
    0xD1: ("a driver touched pageable memory at DISPATCH_LEVEL or above, where no page "
           "fault may be taken", ("addr", "irql", "accd1", "rip"),
           ("the memory referenced", "the IRQL at the time", "the access",
            "the instruction that referenced it")),
    0xDA: ("a driver misused system PTEs: MmUnmapLockedPages of an MDL view that is not "
           "mapped (parameter 1 = 6)", ("value", "addr", "addr", "value"),
           ("the violation", "the MDL", "the address given", "the pages")),
    0xE2: ("the machine was stopped on purpose (KeBugCheckEx called by a driver)",
           ("value",) * 4, ("chosen by the caller",) * 4),
    0xFC: ("an attempt to execute non-executable memory (NX=1, or a user page under SMEP)",
           ("addr", "pte", "none", "none"),
           ("the address executed", "the PTE", "reserved", "reserved")),
    0x139: ("kernel code failed a security check: __fastfail (int 0x29) at ring 0",
            ("value", "addr", "addr", "none"),
            ("the fast-fail code (winnt.h FAST_FAIL_*)", "the trap frame",
             "the exception record", "reserved")),
}


_ENDS = ("exited", "bugcheck")       # session.StopReason values that end the machine


def analyze_text(target: Target, stop_info: Any = None, pid: int | None = None) -> str:
    """What happened: the stop's CPU exception, else the bug check, else the exception that
    ended the view's process (or the last process one ended)."""
    exc = getattr(stop_info, "exception", None)
    reason = getattr(stop_info, "reason", "")
    reason = str(getattr(reason, "value", reason) or "")     # a StopReason enum, or text
    # At the end of the machine, the bug check or the dead process says more than the
    # exception behind it.
    if isinstance(exc, CpuException) and reason not in _ENDS:
        return cpu_exception_text(target, exc, reason)
    bc = target.bugcheck()
    if bc is not None:
        return bugcheck_text(target, bc)
    found = _dead_process(target, pid)
    if found is not None:
        return process_exception_text(target, *found)
    return ("nothing to analyze: no CPU exception at this stop, no bug check, and no process "
            "ended with an exception" + (f" (stopped: {reason})" if reason else ""))


def _dead_process(target: Target, pid: int | None) -> tuple[int, ExceptionInfo] | None:
    candidates = [pid] if pid is not None else []
    current = target.current_pid()
    if current is not None:
        candidates.append(current)
    candidates += [p.pid for p in reversed(target.processes())]
    for candidate in candidates:
        info = target.exception_of(candidate)
        if info is not None:
            return candidate, info
    return None


def _where(target: Target, address: int, pid: int | None) -> str:
    label = target.symbolize(address, pid)
    return f"{address:#x}" + (f" ({label})" if not label.startswith("0x") else "")


def _redo_walk(target: Target, address: int, access: str, ring: int,
               pid: int | None, rflags: int) -> mmu.PageFault | mmu.Translation | None:
    """The walk again, if the tables still exist (None when they are gone)."""
    try:
        return target.walk(address, pid, access, ring, rflags=rflags)
    except (mmu.PageFault, mmu.GeneralProtection) as fault:
        return fault if isinstance(fault, mmu.PageFault) else None
    except TargetError:
        return None


def _walk_section(target: Target, address: int, access: str, ring: int, pid: int | None,
                  recorded: tuple = (), reason: str = "", code: int = 0) -> list[str]:
    """The failing walk, redone (or as the CPU recorded it), explained."""
    rflags = target.registers()["rflags"] if ring < 3 else 0
    result = _redo_walk(target, address, access, ring, pid, rflags)
    nxe = bool(target.registers()["efer"] & mmu.EFER.NXE)
    try:
        space, note = walkview.address_space(target, address, pid)
    except TargetError:
        space, note = "", None
    lines = [f"the page walk of {address:#x} ({access} at ring {ring})"
             + (f" in {space}" if space else "") + ":", *([note] if note else []),
             walkview.index_line(address)]
    if isinstance(result, mmu.Translation):
        lines += walkview.step_lines(result.steps, nxe)
        lines.append(f"  the tables allow it now (physical {result.pa:#x}): they changed "
                     "after the fault")
        return lines
    if result is None and recorded:
        level = next((s.level for s in reversed(recorded)
                      if re.search(rf"\b{s.name}\b", reason)), recorded[-1].level)
        result = mmu.PageFault(address, PFErr(code), reason, tuple(recorded), level)
        lines[0] = lines[0].rstrip(":") + " as the CPU saw it (the address space is gone now):"
    if result is None:
        return [f"the page walk of {address:#x}: not available (the address space is gone)"]
    lines += walkview.step_lines(result.steps, nxe)
    lines += walkview.fault_lines(target, result, access, ring, pid)
    return lines


def _a(word: str) -> str:
    """``a read``, ``an execute``."""
    return ("an " if word[:1] in "aeiou" else "a ") + word


def _indent(lines: list[str], by: str = "  ") -> list[str]:
    return [by + line for line in lines]


def _stack(target: Target, pid: int | None) -> list[str]:
    try:
        return ["stack:", *_indent(backtrace_lines(target, pid))]
    except TargetError as err:
        return [f"stack: unavailable ({err})"]


def cpu_exception_text(target: Target, exc: CpuException, reason: str = "") -> str:
    """The exception the CPU just raised, before the executive handles it."""
    pid = target.current_pid()
    who = "the system (no process)" if pid is None else \
        f'process {pid} "{target.process(pid).name}"'
    try:
        insn = target.disassemble(exc.rip, 1, pid)
        text = insn[0][2] if insn else "(bad)"
    except TargetError as err:
        text = f"(unreadable: {err})"
    lines = [f"the CPU raised {_VECTOR_WORDS.get(exc.vector, exc.vector.name)}"
             + (f" (stopped: {reason})" if reason else ""),
             f"  at rip {_where(target, exc.rip, pid)}, ring {exc.cpl}, in {who}",
             f"  instruction: {text}"]
    if exc.vector == Vector.GP:
        mnemonic = text.split(" ", 1)[0]
        why = exc.reason or (f"{mnemonic} needs ring 0" if mnemonic in PRIVILEGED
                             else f"error code {exc.error_code:#x}")
        lines.append(f"  why: {why}")
    if exc.access and exc.address is not None:
        lines.append(f"  access: {_a(exc.access)} of {exc.address:#x}")
    if exc.vector == Vector.PF and exc.address is not None:
        lines += _indent(_walk_section(target, exc.address, exc.access or "read", exc.cpl,
                                       pid, exc.walk, exc.reason, exc.error_code))
    image = target.image_at(exc.rip, pid)
    if image is not None:
        lines.append(f"  image: {image.name} ({target.symbolize(exc.rip, pid)})")
    lines += _indent(_stack(target, None))
    if exc.cpl == 3:
        first = "MmAccessFault may resolve the page fault (demand zero, a page-in, a guard " \
            "page); otherwise t" if exc.vector == Vector.PF else "T"
        lines.append(f"  next: {first}he exception goes to the process's handler, and "
                     "without one the process ends. Other processes go on.")
    else:
        lines.append("  next: a fault in kernel mode cannot be contained: a bug check stops "
                     "the whole machine (unless it is a page-in the kernel may wait for).")
    return "\n".join(lines)


def _param_text(target: Target, kind: str, value: int) -> str:
    if kind in ("addr", "rip"):
        return _where(target, value, None)
    if kind == "irql":
        return f"{value} ({IRQL_NAMES.get(value, 'DIRQL')})"
    if kind == "status":
        return fmt.status(value)
    if kind == "vector":
        try:
            return f"{value} (#{Vector(value).name})"
        except ValueError:
            return str(value)
    if kind == "pte":
        if value and not value & 1:         # not valid: the software bits say where it is
            return f"{value:#018x} (not valid: {softpte.decode(value).describe()})"
        return f"{value:#018x} ({walkview.flag_names(value, 1) or 'not present'})"
    if kind == "acc50":
        return f"{value:#x} ({_PF50_ACCESS.get(value, '?')})"
    if kind == "accd1":
        return f"{value:#x} ({_AV_ACCESS.get(value, '?')})"
    return f"{value:#x}"


def _bugcheck_walk(bc: Any) -> tuple[int, str] | None:
    """(address, access) of the memory a stop code is about, if it is one."""
    p = tuple(bc.params) + (0, 0, 0, 0)
    if bc.code == 0x50:
        return p[0], {2: "write", 0x10: "fetch"}.get(p[1], "read")
    if bc.code in (0x0A, 0xD1):
        return p[0], {1: "write", 8: "fetch"}.get(p[2], "read")
    if bc.code == 0xBE:
        return p[0], "write"
    if bc.code == 0xFC:
        return p[0], "fetch"
    return None


def _user_address_lines(target: Target, va: int) -> list[str]:
    """A user address means something in one address space only: say whose was current
    and which processes map ``va``."""
    pid = target.current_pid()
    now = "the system's (no process)" if pid is None else \
        f'that of process {pid} "{target.process(pid).name}"'
    lines = [f"{va:#x} is a user address: it names memory in one process's address space "
             f"only, and the address space loaded was {now}"]
    for p in target.processes():
        if not p.has_space:
            continue
        try:
            pa = target.translate(va, p.pid)
            lines.append(f'  in process {p.pid} "{p.name}" it maps physical {pa:#x}')
        except TargetError:
            lines.append(f'  in process {p.pid} "{p.name}" it is not mapped')
    return lines


def bugcheck_text(target: Target, bc: Any) -> str:
    """A bug check: the stop code and each parameter explained, the faulting instruction,
    the walk of the address it is about, the responsible driver and the stack."""
    meaning, kinds, names = BUGCHECKS.get(bc.code, ("", ("value",) * 4, ("",) * 4))
    name = bc.name
    lines = [f"bug check {bc.code:#x} {name}" + (f": {meaning}" if meaning else "")]
    for i, value in enumerate(tuple(bc.params)[:4]):
        if kinds[i] == "none" and not value:
            explained = "0"
        else:
            explained = _param_text(target, kinds[i], value)
        lines.append(f"  parameter {i + 1}  {explained:<44} {names[i]}".rstrip())
    if bc.rip is not None:
        lines.append(f"  rip {_where(target, bc.rip, None)}, ring 0, IRQL {bc.irql}: "
                     f"{bc.instruction or '??'}")
    if bc.detail:
        lines.append(f"  the executive says: {bc.detail}")
    lines.append(f"  process: {bc.process or 'System (no process)'}")
    if bc.driver:
        lines.append(f"  responsible driver: {bc.driver} ({bc.location})")
    about = _bugcheck_walk(bc)
    if about is not None:
        lines += _indent(_walk_section(target, about[0], about[1], 0, None))
        if about[0] < layout.USER_SPACE_END:
            lines += _indent(_user_address_lines(target, about[0]))
    if bc.code in (0x0A, 0xD1):
        lines.append("  at DISPATCH_LEVEL the faulting code cannot wait for the pagefile or "
                     "a zeroed frame: whatever the PTE says, this access is fatal")
    lines += _indent(_stack(target, None))
    if bc.code == BugCheckCode.MANUALLY_INITIATED_CRASH:
        lines.append("  nothing went wrong by accident: the driver asked for this stop")
    return "\n".join(lines)


def process_exception_text(target: Target, pid: int, info: ExceptionInfo) -> str:
    """The exception record that ended a process, and the hardware fault behind it."""
    proc = target.process(pid)
    what = fmt.status(info.code)
    lines = [f'process {pid} "{proc.name}" was ended by {what}'
             + (f": {_STATUS_WORDS[info.code]}" if info.code in _STATUS_WORDS else ""),
             f"  at rip {_where(target, info.rip, pid)}, ring 3: {info.instruction}"]
    if info.access is not None and info.address is not None:
        lines.append(f"  access: {_a(info.access)} of {info.address:#x}")
    if info.detail:
        lines.append(f"  the hardware: {info.detail}")
    if info.params:
        words = [f"[0] = {info.params[0]} ({_AV_ACCESS.get(info.params[0], '?')})"]
        words += [f"[{i}] = {v:#x}" for i, v in enumerate(info.params[1:], 1)]
        lines.append("  ExceptionInformation: " + ", ".join(words))
    if info.code == NTSTATUS.STATUS_ACCESS_VIOLATION and info.address is not None and \
            info.address != (1 << 64) - 1 and info.detail.startswith("#PF"):
        access = {"execute": "fetch"}.get(info.access or "read", info.access or "read")
        if info.address >= layout.KERNEL_SPACE_START or proc.has_space:
            lines += _indent(_walk_section(target, info.address, access, 3, pid))
        else:
            lines.append("  the page walk cannot be redone: the process's address space "
                         "is gone")
    image = target.image_at(info.rip, pid)
    if image is not None:
        lines.append(f"  image: {image.name} ({target.symbolize(info.rip, pid)})")
    lines.append("  no handler in the process took it, so the process ended; the others "
                 "went on (a ring-3 fault stops only its own process)")
    return "\n".join(lines)


WHY_USAGE = "analyze [-v] | analyze --why [ADDR [LEN] [pid N]] [--json]"


def analyze_command(shell: Any, arg: str) -> None:
    """``analyze -v`` (analyze, then --why) and ``analyze --why [ADDR [LEN] [pid N]]
    [--json]`` in ``emu debug``'s shell (emu.debugger.why)."""
    import json

    from emu.debugger import why
    from emu.debugger.history import history_of

    words = arg.split()
    verbose, want_why, as_json = "-v" in words, "--why" in words, "--json" in words
    rest = [w for w in words if w not in ("-v", "--why", "--json")]
    if verbose == want_why or (as_json or rest) and not want_why:
        shell.error(f"analyze {arg.strip()}: not understood ({WHY_USAGE})")
        return
    stop_info = getattr(shell, "stop_info", None)
    if verbose:
        first = analyze_text(shell.target, stop_info, shell.view_pid)
        shell.message(first)
        if first.startswith("nothing to analyze"):
            return
    session = getattr(shell, "session", None)
    if session is None or session.factory is None:
        problem = "analyze --why re-executes the machine from boot: it needs its recipe " \
            "(use emu debug; a crash dump has no past)"
        if verbose:
            shell.message(f"why: {problem}")
        else:
            shell.error(problem)
        return
    try:
        address = _why_address(shell, session, rest)
    except why.WhyError as err:
        shell.error(str(err))
        return
    exc = getattr(stop_info, "exception", None)
    reason = getattr(stop_info, "reason", "")
    reason = str(getattr(reason, "value", reason) or "")
    exception = exc if isinstance(exc, CpuException) and reason not in _ENDS else None
    history = history_of(session.machine)
    events = [record for _, record in history.records()] if history is not None else []
    index = shell.__dict__.get("query_index")
    if index is None:
        from emu.debugger.query import QueryIndex
        index = shell.query_index = QueryIndex()
    try:
        result = why.answer(session.target, session.factory, session.position, events,
                            exception=exception, address=address, index=index)
    except why.WhyError as err:
        if verbose:
            shell.message(f"why: {err}")
        else:
            shell.error(str(err))
        return
    if as_json:
        shell.stdout.write(json.dumps(why.json_record(result), separators=(",", ":")) + "\n")
        return
    shell.message(why.text(result))


def _why_address(shell: Any, session: Any, words: list[str]) -> tuple[int, int, int | None] | None:
    """``ADDR [LEN] [pid N]`` -> (address, length, pid), None for no ADDR; WhyError."""
    from emu.debugger.expr import ExprError, evaluate
    from emu.debugger.why import WhyError

    if not words:
        return None

    def number(text: str, what: str) -> int:
        try:
            return evaluate(text, session.target, shell.view_pid)
        except ExprError as err:
            raise WhyError(f"{what} {text}: {err}") from None
    address = number(words.pop(0), "address")
    length = 8
    if words and words[0] != "pid":
        length = number(words.pop(0), "length")
        if not 1 <= length <= 8:
            raise WhyError(f"length {length:#x}: --why follows one value, 1 to 8 bytes")
    pid = None
    if words and words[0] == "pid":
        words.pop(0)
        if not words:
            raise WhyError("pid needs a process id (see ps)")
        text = words.pop(0)
        try:
            pid = int(text, 0)
        except ValueError:
            raise WhyError(f"pid {text}: not a process id (a number; see ps)") from None
        pids = sorted(p.pid for p in session.machine.processes)
        if pid not in pids:
            raise WhyError(f"pid {pid}: no such process in this machine's history "
                           f"(processes: {', '.join(map(str, pids)) or 'none'})")
    if words:
        raise WhyError(f"unexpected {words[0]!r} ({WHY_USAGE})")
    if address >= layout.KERNEL_SPACE_START:
        return address, length, None
    if address + length > layout.USER_SPACE_END:
        raise WhyError(f"{address:#x}: not a canonical address (user space ends at "
                       "0x7fffffffffff)")
    if pid is None:
        pid = shell.view_pid if shell.view_pid is not None else session.target.current_pid()
    if pid is None:
        raise WhyError(f"{address:#x} is a user address, and no process is current: say "
                       "whose (pid N)")
    return address, length, pid
