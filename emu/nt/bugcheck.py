"""Bug checks: how the kernel stops the whole machine when kernel-mode code breaks a rule.

Codes and parameters follow Microsoft's "Bug check code reference". A fault in
ring 0 cannot be contained the way a user-mode fault is: every process shares
the kernel's address space, so the only safe move is to stop everything and
report, which is what ``KeBugCheckEx`` does.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class BugCheckCode(enum.IntEnum):
    """Stop codes (bugcodes.h)."""

    INVALID_PROCESS_ATTACH_ATTEMPT = 0x05    # KeStackAttachProcess misused
    INVALID_PROCESS_DETACH_ATTEMPT = 0x06    # KeUnstackDetachProcess of no attachment
    IRQL_NOT_GREATER_OR_EQUAL = 0x09         # also a DPC that returns off DISPATCH_LEVEL
    IRQL_NOT_LESS_OR_EQUAL = 0x0A
    MAXIMUM_WAIT_OBJECTS_EXCEEDED = 0x0C
    SPIN_LOCK_ALREADY_OWNED = 0x0F           # emu.nt.ntos.ke: the one processor holds it
    SPIN_LOCK_NOT_OWNED = 0x10
    REFERENCE_BY_POINTER = 0x18              # an object dereferenced below zero
    MEMORY_MANAGEMENT = 0x1A                 # emu.nt.mm.corruption: parameter 1 says what
    KMODE_EXCEPTION_NOT_HANDLED = 0x1E
    SYSTEM_SERVICE_EXCEPTION = 0x3B
    NO_MORE_SYSTEM_PTES = 0x3F               # emu.nt.ntos.mm: an MDL view that cannot be made
    MULTIPLE_IRP_COMPLETE_REQUESTS = 0x44
    IRQL_GT_ZERO_AT_SYSTEM_SERVICE = 0x4A    # emu.nt.io: a dispatch routine left it raised
    PFN_LIST_CORRUPT = 0x4E                  # emu.nt.mm.pfn: parameter 1 says what
    PAGE_FAULT_IN_NONPAGED_AREA = 0x50
    PROCESS_HAS_LOCKED_PAGES = 0x76          # emu.nt.io: MmUnlockPages of pages not locked
    KERNEL_DATA_INPAGE_ERROR = 0x7A          # emu.nt.mm.paging: PagedPool not read back
    SYSTEM_THREAD_EXCEPTION_NOT_HANDLED = 0x7E   # emu.nt.seh: DriverEntry/DriverUnload
    UNEXPECTED_KERNEL_MODE_TRAP = 0x7F
    MACHINE_CHECK_EXCEPTION = 0x9C
    ATTEMPTED_SWITCH_FROM_DPC = 0xB8         # a wait that must block at DISPATCH_LEVEL
    ATTEMPTED_WRITE_TO_READONLY_MEMORY = 0xBE
    BAD_POOL_CALLER = 0xC2
    DRIVER_VERIFIER_DETECTED_VIOLATION = 0xC4
    IRQL_UNEXPECTED_VALUE = 0xC8             # emu.nt.kintr: an ISR left the IRQL changed
    DRIVER_IRQL_NOT_LESS_OR_EQUAL = 0xD1
    SYSTEM_PTE_MISUSE = 0xDA                 # emu.nt.io: MmUnmapLockedPages of no view
    WORKER_THREAD_RETURNED_AT_BAD_IRQL = 0xE1    # emu.nt.drivers: DriverEntry/Unload did
    MANUALLY_INITIATED_CRASH = 0xE2
    ATTEMPTED_EXECUTE_OF_NOEXECUTE_MEMORY = 0xFC
    KERNEL_SECURITY_CHECK_FAILURE = 0x139    # __fastfail (int 0x29) at ring 0


# Parameter 2 of PAGE_FAULT_IN_NONPAGED_AREA: the kind of access (bug check reference, 0x50).
PF_READ, PF_WRITE, PF_EXECUTE = 0, 2, 0x10


@dataclass
class BugCheck(Exception):
    """KeBugCheckEx(code, p1..p4): raised inside the executive, caught by the machine's run loop."""

    code: int
    params: tuple[int, int, int, int] = (0, 0, 0, 0)
    rip: int | None = None
    detail: str = ""
    registers: dict[str, int] = field(default_factory=dict)
    instruction: str = ""
    driver: str = ""                      # the driver whose code was running, if any
    location: str = ""                    # driver!Function+offset of the faulting RIP
    process: str = ""                     # the process whose address space was current
    irql: int = 0
    backtrace: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__(f"bug check {self.code:#x}")

    @property
    def name(self) -> str:
        """The stop code's symbolic name."""
        try:
            return BugCheckCode(self.code).name
        except ValueError:
            return f"BUGCHECK_{self.code:#X}"


def blue_screen(bc: BugCheck) -> str:
    """The text a blue screen shows: stop code, parameters, faulting instruction, registers."""
    lines = [
        "*** STOP: the system has been halted to prevent damage ***",
        f"*** {bc.name} (0x{bc.code:08X})",
        "*** Parameters: " + ", ".join(f"0x{p:016X}" for p in bc.params),
    ]
    if bc.detail:
        lines.append(f"*** {bc.detail}")
    if bc.driver:
        lines.append(f"*** The fault happened in driver {bc.driver} ({bc.location})")
    if bc.rip is not None:
        lines.append(f"*** Faulting RIP 0x{bc.rip:016x}: {bc.instruction or '??'}")
    lines.append(f"*** Process: {bc.process or 'System (no process)'}, IRQL {bc.irql}")
    if bc.backtrace:
        lines.append("*** Stack: " + " <- ".join(bc.backtrace))
    regs = [f"{name}={value:016x}" for name, value in bc.registers.items()]
    for i in range(0, len(regs), 4):
        lines.append("    " + " ".join(regs[i:i + 4]))
    return "\n".join(lines)
