"""Trap handling: what the kernel makes of a CPU exception (KiDispatchException's first half).

A user-mode fault becomes an exception record with an NTSTATUS code, the way
Windows reports it to the faulting process (winnt.h EXCEPTION_RECORD;
"Exception Dispatching" in Windows Internals). With no handler in the
process, the process ends with that status and nothing else is touched.

A kernel-mode fault becomes a bug check (Microsoft's bug check reference
gives each code's parameters): the kernel half is shared by everyone, so
there is nothing smaller than the whole system to stop.
"""

from __future__ import annotations

from emu.hw.exceptions import CpuException, Vector
from emu.hw.mmu import PTE, PFErr
from emu.nt.bugcheck import PF_EXECUTE, PF_READ, PF_WRITE, BugCheck, BugCheckCode
from emu.nt.process import ExceptionInfo
from emu.nt.status import NTSTATUS

# ExceptionInformation[0] of an access violation (winnt.h EXCEPTION_*_FAULT).
EXCEPTION_READ_FAULT, EXCEPTION_WRITE_FAULT, EXCEPTION_EXECUTE_FAULT = 0, 1, 8
_AV_KIND = {"read": EXCEPTION_READ_FAULT, "write": EXCEPTION_WRITE_FAULT,
            "fetch": EXCEPTION_EXECUTE_FAULT}
_NO_ADDRESS = 0xFFFF_FFFF_FFFF_FFFF   # what Windows reports for a #GP: it has no address
_AV_WORD = {"read": "read", "write": "write", "fetch": "execute"}

# Instructions that need CPL 0, or CPL <= IOPL for I/O and IF (SDM Vol. 3A §5.9, §19.5):
# at ring 3 their #GP is a privilege violation. (popf at ring 3 does not fault: it just
# leaves IF alone; an iretq that fails its checks is a plain #GP, an access violation.)
PRIVILEGED = frozenset({
    "hlt", "cli", "sti", "lgdt", "lidt", "lldt", "ltr", "clts", "invd", "wbinvd", "invlpg",
    "rdmsr", "wrmsr", "in", "out", "ins", "outs", "insb", "insw", "insd", "outsb", "outsw",
    "outsd", "swapgs", "sysret", "sysretq", "sysexit", "lmsw", "invpcid", "xsetbv", "rdpmc",
    "monitor", "mwait",
})

_VECTOR_STATUS = {
    Vector.UD: NTSTATUS.STATUS_ILLEGAL_INSTRUCTION,
    Vector.BP: NTSTATUS.STATUS_BREAKPOINT,
    Vector.OF: NTSTATUS.STATUS_INTEGER_OVERFLOW,    # KiOverflowTrap (only INTO raises #OF)
    Vector.DB: NTSTATUS.STATUS_SINGLE_STEP,
    Vector.AC: NTSTATUS.STATUS_DATATYPE_MISALIGNMENT,
    Vector.XM: NTSTATUS.STATUS_FLOAT_MULTIPLE_TRAPS,
}


# Debug services (int 2dh, the service in RAX; ketypes.h BREAKPOINT_*) that KdpStub, the
# kernel debugger routine of a machine without a kernel debugger, completes by itself: the
# thread goes on past the int3 byte that follows the int 2dh. Any other service
# (BREAKPOINT_BREAK 0, BREAKPOINT_PROMPT 2, ...) is a STATUS_BREAKPOINT for the process.
BREAKPOINT_BREAK, BREAKPOINT_PRINT, BREAKPOINT_LOAD_SYMBOLS, BREAKPOINT_UNLOAD_SYMBOLS = 0, 1, 3, 4
BREAKPOINT_COMMAND_STRING = 5
_KDPSTUB_SERVICES = frozenset({BREAKPOINT_PRINT, BREAKPOINT_LOAD_SYMBOLS,
                               BREAKPOINT_UNLOAD_SYMBOLS, BREAKPOINT_COMMAND_STRING})
_GATE_HANDLERS = {Vector.OF: "KiOverflowTrap", Vector.FAST_FAIL: "KiRaiseSecurityCheckFailure",
                  Vector.ASSERTION: "KiRaiseAssertion", Vector.DEBUG_SERVICE: "KiDebugServiceTrap"}


def debug_service_done(exc: CpuException) -> int | None:
    """Where a ring-3 thread goes on after an int 2dh that KdpStub completes (the byte
    after the int 2dh skipped: KiDebugServiceTrap adds 1 to RIP), or None."""
    if exc.vector == Vector.DEBUG_SERVICE and exc.next_rip is not None and \
            exc.argument in _KDPSTUB_SERVICES:
        return exc.next_rip + 1
    return None


def is_fast_fail(exc: CpuException) -> bool:
    """Whether ``exc`` is a __fastfail (int 29h): the process ends at once, no handler runs
    (Microsoft's __fastfail documentation)."""
    return exc.vector == Vector.FAST_FAIL and exc.next_rip is not None


def context_rip(exc: CpuException, info: ExceptionInfo) -> int:
    """CONTEXT.rip of the exception (KiDispatchException): the faulting instruction for a
    fault; for the DPL-3 gates what their Windows handler leaves in the trap frame:
    KiOverflowTrap the instruction after the `int`, KiRaiseAssertion the `int 2ch` itself
    (RIP - 2), KiDebugServiceTrap RIP + 1 less the 1 KiDispatchException takes off every
    STATUS_BREAKPOINT (so the instruction after the `int 2dh`)."""
    if exc.next_rip is None:
        return info.rip
    if exc.vector == Vector.ASSERTION:
        return exc.next_rip - 2
    return exc.next_rip


def _gate_exception(exc: CpuException, instruction: str) -> ExceptionInfo:
    """The record a DPL-3 gate's Windows handler builds (WRK amd64 trap.asm; Windows 8 and
    later for int 29h). ExceptionAddress: KiOverflowTrap RIP - 1 (the last byte of the
    `int 4` or `into`), KiRaiseSecurityCheckFailure and KiRaiseAssertion RIP - 2 (the
    `int`), KiDebugServiceTrap RIP + 1."""
    after = exc.next_rip or 0
    handler = _GATE_HANDLERS[exc.vector]
    if exc.vector == Vector.OF:
        return ExceptionInfo(NTSTATUS.STATUS_INTEGER_OVERFLOW, after - 1, instruction,
                             detail=f"int 0x4 ({handler})")
    if exc.vector == Vector.FAST_FAIL:
        return ExceptionInfo(NTSTATUS.STATUS_STACK_BUFFER_OVERRUN, after - 2, instruction,
                             params=(exc.argument,),
                             detail=f"__fastfail({exc.argument:#x}) ({handler}): the process "
                                    "ends, no handler runs")
    if exc.vector == Vector.ASSERTION:
        return ExceptionInfo(NTSTATUS.STATUS_ASSERTION_FAILURE, after - 2, instruction,
                             detail=f"int 0x2c ({handler})")
    return ExceptionInfo(NTSTATUS.STATUS_BREAKPOINT, after + 1, instruction,
                         params=(exc.argument,),
                         detail=f"int 0x2d, debug service {exc.argument:#x} ({handler})")


def user_exception(exc: CpuException, instruction: str, *, stack_guard: range | None,
                   divisor_is_zero: bool = True) -> ExceptionInfo:
    """The exception record for a ring-3 fault (KiDispatchException's user-mode path)."""
    mnemonic = instruction.split(" ", 1)[0] if instruction else ""
    if exc.next_rip is not None and exc.vector in _GATE_HANDLERS:
        return _gate_exception(exc, instruction)
    if exc.vector == Vector.PF or exc.vector == Vector.MC:
        return _access_violation(exc, instruction, exc.address, stack_guard)
    if exc.vector == Vector.GP:
        if exc.address is not None and exc.access is not None:
            # A non-canonical address: #GP carries no address, so Windows reports -1.
            return ExceptionInfo(NTSTATUS.STATUS_ACCESS_VIOLATION, exc.rip, instruction,
                                 _AV_WORD[exc.access], 0xFFFF_FFFF_FFFF_FFFF,
                                 (_AV_KIND[exc.access], 0xFFFF_FFFF_FFFF_FFFF),
                                 f"non-canonical address 0x{exc.address:x}, #GP")
        if _privileged(instruction, mnemonic):
            return ExceptionInfo(NTSTATUS.STATUS_PRIVILEGED_INSTRUCTION, exc.rip, instruction,
                                 detail=f"{mnemonic} needs CPL 0 (#GP at CPL 3)")
        return ExceptionInfo(NTSTATUS.STATUS_ACCESS_VIOLATION, exc.rip, instruction, "read",
                             _NO_ADDRESS, (EXCEPTION_READ_FAULT, _NO_ADDRESS),
                             exc.reason or f"#GP, error code {exc.error_code:#x}")
    if exc.vector == Vector.DE:
        code = NTSTATUS.STATUS_INTEGER_DIVIDE_BY_ZERO if divisor_is_zero \
            else NTSTATUS.STATUS_INTEGER_OVERFLOW
        return ExceptionInfo(code, exc.rip, instruction, detail="#DE divide error")
    if exc.vector == Vector.BP:
        # KiBreakpointTrap: one parameter, BREAKPOINT_BREAK (0), as every int3 reports it.
        return ExceptionInfo(NTSTATUS.STATUS_BREAKPOINT, exc.rip, instruction,
                             params=(BREAKPOINT_BREAK,), detail="#BP")
    code = _VECTOR_STATUS.get(exc.vector, NTSTATUS.STATUS_ILLEGAL_INSTRUCTION)
    return ExceptionInfo(code, exc.rip, instruction, detail=f"#{exc.vector.name}")


def _privileged(instruction: str, mnemonic: str) -> bool:
    if mnemonic in PRIVILEGED:
        return True
    return mnemonic == "mov" and any(f"cr{i}" in instruction or f"dr{i}" in instruction
                                     for i in range(9))


def _access_violation(exc: CpuException, instruction: str, address: int | None,
                      stack_guard: range | None) -> ExceptionInfo:
    access = exc.access or "read"
    address = 0 if address is None else address
    code = NTSTATUS.STATUS_ACCESS_VIOLATION
    if stack_guard is not None and address in stack_guard:
        code = NTSTATUS.STATUS_STACK_OVERFLOW   # ran into the page below the committed stack
    detail = exc.reason
    if exc.vector == Vector.PF:
        detail = f"#PF error code {exc.error_code:#x} ({_error_code_text(exc.error_code)})" + \
            (f": {exc.reason}" if exc.reason else "")
    return ExceptionInfo(code, exc.rip, instruction, _AV_WORD[access], address,
                         (_AV_KIND[access], address), detail)


def _error_code_text(code: int) -> str:
    """Spell out a #PF error code (SDM Vol. 3A Figure 4-12)."""
    parts = ["protection violation" if code & PFErr.P else "not present",
             "write" if code & PFErr.W else "read",
             "user" if code & PFErr.U else "supervisor"]
    if code & PFErr.RSVD:
        parts.append("reserved bit set")
    if code & PFErr.ID:
        parts.append("instruction fetch")
    return ", ".join(parts)


def kernel_bugcheck(exc: CpuException, instruction: str, leaf_pte: int = 0, *,
                    divisor_is_zero: bool = True, in_system_service: bool = False) -> BugCheck:
    """The bug check for a ring-0 exception (codes and parameters per the bug check reference)."""
    if exc.vector == Vector.PF:
        address = exc.address or 0
        if exc.error_code & PFErr.P and exc.error_code & PFErr.ID:
            return BugCheck(BugCheckCode.ATTEMPTED_EXECUTE_OF_NOEXECUTE_MEMORY,
                            (address, leaf_pte, 0, 0), exc.rip, exc.reason, instruction=instruction)
        read_only = bool(exc.walk) and not all(step.value & PTE.RW for step in exc.walk)
        if exc.error_code & PFErr.P and exc.error_code & PFErr.W and read_only and not \
                exc.error_code & PFErr.RSVD:
            # A write that R/W=0 refused (not, say, SMAP on a writable user page).
            return BugCheck(BugCheckCode.ATTEMPTED_WRITE_TO_READONLY_MEMORY,
                            (address, leaf_pte, 0, 0), exc.rip, exc.reason, instruction=instruction)
        kind = {"read": PF_READ, "write": PF_WRITE, "fetch": PF_EXECUTE}[exc.access or "read"]
        return BugCheck(BugCheckCode.PAGE_FAULT_IN_NONPAGED_AREA, (address, kind, exc.rip, 0),
                        exc.rip, exc.reason, instruction=instruction)
    if exc.vector in (Vector.DF, Vector.TS, Vector.NP, Vector.SS, Vector.MC):
        return BugCheck(BugCheckCode.UNEXPECTED_KERNEL_MODE_TRAP, (int(exc.vector), 0, 0, 0),
                        exc.rip, exc.reason or f"#{exc.vector.name} in kernel mode",
                        instruction=instruction)
    info = user_exception(exc, instruction, stack_guard=None, divisor_is_zero=divisor_is_zero)
    code = info.code
    if code == NTSTATUS.STATUS_PRIVILEGED_INSTRUCTION:
        # Nothing is privileged at CPL 0: a #GP there (a reserved CR8 bit, a bad MSR) is
        # KiGeneralProtectionFault's STATUS_ACCESS_VIOLATION with no address (-1), as
        # emu.nt.seh.fault_record gives a PE driver's own code.
        code = NTSTATUS.STATUS_ACCESS_VIOLATION
        info = ExceptionInfo(code, exc.rip, instruction, "read", _NO_ADDRESS,
                             (0, _NO_ADDRESS), exc.reason or info.detail)
    if in_system_service:
        # Raised in kernel mode while serving a system call: (code, address, context, 0).
        return BugCheck(BugCheckCode.SYSTEM_SERVICE_EXCEPTION, (code, exc.rip, 0, 0),
                        exc.rip, info.detail or info.name, instruction=instruction)
    p1, p2 = (info.params + (0, 0))[:2]
    # A #GP the CPU layer explained (a reserved CR8 bit, emu.hw.cr8) keeps its own reason:
    # the ring-3 wording ("needs CPL 0") does not fit a fault at CPL 0.
    detail = exc.reason if exc.vector == Vector.GP and exc.reason.startswith("#GP(0)") \
        else info.detail or info.name
    return BugCheck(BugCheckCode.KMODE_EXCEPTION_NOT_HANDLED, (code, exc.rip, p1, p2),
                    exc.rip, detail, instruction=instruction)
