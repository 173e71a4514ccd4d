"""Plain words for what the machine did: processes, services, faults, page walks.

Everything here turns machine facts into text; nothing reads the narration back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from emu.fmt import addr
from emu.hw.exceptions import CpuException, Vector
from emu.hw.mmu import PTE, PFErr, WalkStep
from emu.nt.status import status_name
from emu.nt.syscalls import Service

if TYPE_CHECKING:
    from emu.nt.bugcheck import BugCheck
    from emu.nt.kernel import Executive
    from emu.nt.process import ExceptionInfo, Process

ACCESS_WORD = {"read": "reading", "write": "writing", "fetch": "executing",
               "execute": "executing"}
VECTOR_WORD = {Vector.PF: "#PF (page fault)", Vector.GP: "#GP (general protection)",
               Vector.UD: "#UD (invalid opcode)", Vector.DE: "#DE (divide error)",
               Vector.BP: "#BP (breakpoint)"}
_FLAG_ORDER = (PTE.P, PTE.RW, PTE.US, PTE.A, PTE.D, PTE.PS, PTE.NX)


def who(proc: Process | None) -> str:
    """``notepad (4)``, or ``system`` outside any process."""
    return "system" if proc is None else f"{proc.name} ({proc.pid})"


def service(number: int) -> str:
    """The system service's name (docs/abi.md), or its number."""
    try:
        return Service(number).name
    except ValueError:
        return f"service {number:#x}"


def status(value: int | None) -> str:
    """``STATUS_SUCCESS``; None (the call blocked, yielded, or goes on in the kernel)."""
    return "(no status yet: not back in ring 3)" if value is None else \
        status_name(value & 0xFFFF_FFFF)


def size(n: int) -> str:
    """``12 KiB`` for whole kibibytes, else ``N bytes``."""
    if n >= 1 << 20 and not n % (1 << 20):
        return f"{n >> 20} MiB"
    return f"{n >> 10} KiB" if n >= 1024 and not n % 1024 else f"{n} bytes"


def flags(value: int) -> str:
    """The set flags of a paging-structure entry, e.g. ``P RW A NX``; ``US=0`` shown."""
    if not value & PTE.P:
        return "P=0 (not present)"
    names = []
    for flag in _FLAG_ORDER:
        if flag is PTE.US:
            names.append("US" if value & flag else "US=0")
        elif value & flag:
            names.append(flag.name)
    return " ".join(names)


def walk_lines(steps: tuple[WalkStep, ...], blocking: str = "") -> list[str]:
    """One line per entry the walk read: level, index, value, flags; the entry ``blocking``
    names (``PML4E``...) is marked as the one that stopped the access."""
    lines = []
    for step in steps:
        mark = "   <- stops it" if step.name == blocking else ""
        lines.append(f"{step.name + f'[{step.index}]':<11} at {addr(step.entry_address)} = "
                     f"{step.value:#018x}  {flags(step.value)}{mark}")
    return lines


def blocking_level(reason: str) -> str:
    """The entry a walker reason names (``U/S=0 in PML4E: ...`` -> ``PML4E``), or ``''``."""
    for name in ("PML4E", "PDPTE", "PDE", "PTE"):
        if f" in {name}" in reason:
            return name
    return ""


def error_code(code: int) -> str:
    """The #PF error code bit by bit (SDM Vol. 3A §4.7)."""
    fetch = bool(code & PFErr.ID)
    parts = ["P=1 protection" if code & PFErr.P else "P=0 not present",
             "W=1 write" if code & PFErr.W else ("W=0" if fetch else "W=0 read"),
             "U=1 user mode" if code & PFErr.U else "U=0 supervisor"]
    if fetch:
        parts.append("I/D=1 instruction fetch")
    return f"{code:#x} ({', '.join(parts)})"


def kernel_fault(exc: CpuException, bc: BugCheck) -> str:
    """A ring-0 fault that became a bug check: what, where (driver!routine), why."""
    what = VECTOR_WORD.get(exc.vector, f"vector {int(exc.vector)}")
    if exc.access is not None and exc.address is not None:
        what += f" {ACCESS_WORD[exc.access]} {addr(exc.address, ticks=True)}"
    where = bc.location or addr(exc.rip)
    return f"{what} in {where} ({bc.instruction}): {exc.reason or 'a fault at ring 0'}"


def exception(info: ExceptionInfo) -> str:
    """How a process died: ``STATUS_ACCESS_VIOLATION writing 0x0 at rip ... (mov ...)``."""
    text = status_name(info.code)
    if info.access is not None and info.address is not None:
        text += f" {ACCESS_WORD[info.access]} {addr(info.address, ticks=True)}"
    insn = info.instruction if info.instruction.startswith("(") else f"({info.instruction})"
    return f"{text} at rip {addr(info.rip)} {insn}"


def symbol(ex: Executive, address: int) -> str:
    """``slow.sys!DpcForIsr+0x0`` style name of a kernel code address."""
    from emu.nt.drivers import symbolize

    return symbolize(ex, address).removesuffix("+0x0")
