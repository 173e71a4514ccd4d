"""Structured exception handling at ring 0 for PE drivers (RtlDispatchException, RtlUnwindEx
and __C_specific_handler, as Windows x64 does them).

Microsoft's "x64 exception handling" is the reference. An exception raised in a PE
driver (a kernel routine raising one, such as ProbeForRead; or a CPU fault Windows
dispatches: #DE, #UD, int3, #GP, a page fault on a user address below DISPATCH_LEVEL)
is dispatched in two passes over the driver's frames, found by virtual unwind through
the image's .pdata/.xdata (emu.nt.unwind):

1. Dispatch (RtlDispatchException): for each frame, innermost first, whose UNWIND_INFO
   names an exception handler (UNW_FLAG_EHANDLER) that is the image's import of
   ntoskrnl's ``__C_specific_handler``, its SCOPE_TABLE is searched for a ``__try``
   whose range holds the frame's RIP. A ``__finally`` scope is skipped; an ``__except``
   scope's filter runs (the constant 1, EXCEPTION_EXECUTE_HANDLER, needs no call): the
   filter funclet is called at ring 0 on the same stack, in the same address space and
   at the same IRQL, as ``filter(EXCEPTION_POINTERS *, EstablisherFrame)``. It returns
   EXCEPTION_EXECUTE_HANDLER (> 0), EXCEPTION_CONTINUE_SEARCH (0) or
   EXCEPTION_CONTINUE_EXECUTION (< 0), as the CRT's __C_specific_handler compares them.
2. Unwind (RtlUnwindEx) to the frame whose handler will run: the ``__finally`` blocks of
   the scopes being left, innermost first, run as ``finally(TRUE, EstablisherFrame)``
   (AbnormalTermination() is TRUE); then the CPU continues at the ``__except`` block
   with the registers of that frame, RAX holding the exception code (what clang's code
   reads for GetExceptionCode() there: __C_specific_handler passes the code as
   RtlUnwindEx's ReturnValue).

EXCEPTION_CONTINUE_EXECUTION resumes with the CONTEXT record as the filter left it; for
a noncontinuable exception (ExceptionFlags has EXCEPTION_NONCONTINUABLE: every exception
a routine raises, as RtlRaiseStatus raises them) that is STATUS_NONCONTINUABLE_EXCEPTION,
dispatched in turn. The EXCEPTION_RECORD, the CONTEXT and the EXCEPTION_POINTERS a filter
reads are in guest memory, on the kernel stack below the faulting frame, laid out as
winnt.h lays them out for x64 (KiExceptionDispatch puts them there too).

The walk stops at the first frame outside a PE driver image (the executive's own
return trap, or code with no unwind data). An exception inside a filter
or a __finally is dispatched to that funclet's own frames only. A handler other than
__C_specific_handler (a driver's own language handler) is not called: its frame is
passed over, as if it returned ExceptionContinueSearch.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from emu.hw.exceptions import CpuException, Vector
from emu.nt import exports, layout, status, trap, unwind
from emu.nt.bugcheck import BugCheck, BugCheckCode
from emu.nt.status import NTSTATUS

if TYPE_CHECKING:
    from emu.nt.interfaces import ExceptionDispatch
    from emu.nt.loaded_modules import DriverImage

# winnt.h: ExceptionFlags, and the x64 layouts of EXCEPTION_RECORD and CONTEXT.
EXCEPTION_NONCONTINUABLE = 0x01
EXCEPTION_UNWINDING, EXCEPTION_EXIT_UNWIND, EXCEPTION_TARGET_UNWIND = 0x02, 0x04, 0x20
EXCEPTION_MAXIMUM_PARAMETERS = 15
EXCEPTION_RECORD_SIZE = 0x98
CONTEXT_SIZE = 0x4D0
CONTEXT_AMD64, CONTEXT_CONTROL, CONTEXT_INTEGER, CONTEXT_SEGMENTS = 0x100000, 1, 2, 4
CONTEXT_FLOATING_POINT = 8
CONTEXT_FLAGS = CONTEXT_AMD64 | CONTEXT_CONTROL | CONTEXT_INTEGER | CONTEXT_SEGMENTS | \
    CONTEXT_FLOATING_POINT
CONTEXT_FLTSAVE_MXCSR = 0x118              # FltSave (XMM_SAVE_AREA32 at 0x100) + 0x18
CONTEXT_MXCSR, CONTEXT_SEG_CS, CONTEXT_EFLAGS, CONTEXT_RAX, CONTEXT_RIP = 0x34, 0x38, 0x44, \
    0x78, 0xF8
CONTEXT_XMM0 = 0x1A0                       # FltSave (XMM_SAVE_AREA32 at 0x100) + 0xA0
# Rax .. R15 follow Rax in UNWIND_CODE register order (winnt.h CONTEXT).
CONTEXT_GPRS = unwind.GPR_BY_NUMBER
STATUS_NONCONTINUABLE_EXCEPTION = 0xC000_0025
EXCEPTION_EXECUTE_HANDLER = 1              # the constant filter clang stores as HandlerAddress
C_SPECIFIC_HANDLER = "__C_specific_handler"
MAX_FRAMES = 256                           # a loop guard: a corrupt stack ends the walk
DISPATCH_LEVEL = 2
RECORDS_GAP = 0x80                         # bytes left below the faulting RSP
_MASK64 = 0xFFFF_FFFF_FFFF_FFFF


@dataclass
class ExceptionRecord:
    """EXCEPTION_RECORD's fields (winnt.h): code, flags, address, information."""

    code: int
    address: int
    information: tuple[int, ...] = ()
    flags: int = 0
    nested: int = 0                       # the ExceptionRecord field: a chained record's VA
    detail: str = ""                      # what the hardware found (not in the record)

    def pack(self) -> bytes:
        info = (tuple(self.information) + (0,) * EXCEPTION_MAXIMUM_PARAMETERS)[
            :EXCEPTION_MAXIMUM_PARAMETERS]
        return struct.pack("<IIQQI4x15Q", self.code, self.flags, self.nested, self.address,
                           min(len(self.information), EXCEPTION_MAXIMUM_PARAMETERS), *info)


@dataclass
class Dispatch:
    """One exception being dispatched: the record, the context it was raised in, and
    where both are in guest memory."""

    record: ExceptionRecord
    context: dict[str, int]
    record_va: int = 0
    context_va: int = 0
    pointers_va: int = 0
    stack_top: int = 0                     # the stack funclets run on (below the records)


def capture_context(ex: ExceptionDispatch) -> dict[str, int]:
    """The CPU's registers as a CONTEXT has them (GPRs, RIP, RSP, RFLAGS, XMM0-15)."""
    cpu = ex.cpu
    context = {name: cpu.reg(name) for name in CONTEXT_GPRS}
    context["rip"], context["rflags"] = cpu.reg("rip"), cpu.reg("rflags")
    for i in range(16):
        context[f"xmm{i}"] = cpu.reg_named(f"xmm{i}")
    context["mxcsr"] = cpu.reg_named("mxcsr")
    return context


def load_context(ex: ExceptionDispatch, context: dict[str, int]) -> None:
    """Make the CPU continue with ``context`` (RtlRestoreContext): from the clean ring-0
    state, so that no stale exception of the fault stays in the CPU (platform-facts.md),
    in the address space and at the CR8 (IRQL) that were current."""
    cpu = ex.cpu
    cr3, cr8 = cpu.cr3, cpu.reg_named("cr8")      # the address space and the TPR stay
    cpu.restore_clean_context()
    ex.load_cr3(cr3)
    cpu.set_reg_named("cr8", cr8)
    for name in (*CONTEXT_GPRS, "rip", "rflags"):
        cpu.set_reg(name, context[name] & _MASK64)
    for name, value in context.items():
        if name.startswith("xmm") or name == "mxcsr":
            cpu.set_reg_named(name, value)


def pe_image_at(ex: ExceptionDispatch, address: int) -> DriverImage | None:
    """The loaded PE driver image (one with unwind data kept) that holds ``address``."""
    from emu.nt import loaded_modules

    driver = loaded_modules.driver_at(ex, address)
    if driver is None or not driver.image.is_pe:
        return None
    return driver.image


def _write_records(ex: ExceptionDispatch, d: Dispatch, below: int | None = None) -> None:
    """EXCEPTION_RECORD, CONTEXT and EXCEPTION_POINTERS on the stack below the frame (and
    below ``below``: the records of the exception this one chains to stay intact)."""
    top = (d.context["rsp"] - RECORDS_GAP) & ~0xF
    if below is not None:
        top = min(top, below & ~0xF)
    d.context_va = top - CONTEXT_SIZE
    d.record_va = d.context_va - ((EXCEPTION_RECORD_SIZE + 0xF) & ~0xF)
    d.pointers_va = d.record_va - 0x10
    # Funclets are called with RSP = 8 (mod 16), as after a `call` (x64 ABI).
    d.stack_top = d.pointers_va - 8
    ex.kernel_write(d.record_va, d.record.pack())
    ex.kernel_write(d.context_va, pack_context(d.context))
    ex.kernel_write(d.pointers_va, struct.pack("<QQ", d.record_va, d.context_va))


def pack_context(context: dict[str, int]) -> bytes:
    """A CONTEXT (x64, winnt.h) holding ``context``: control, integer and segment parts,
    MxCsr (also in FltSave) and the XMM registers."""
    raw = bytearray(CONTEXT_SIZE)
    struct.pack_into("<II", raw, 0x30, CONTEXT_FLAGS, context.get("mxcsr", 0x1F80))
    struct.pack_into("<I", raw, CONTEXT_FLTSAVE_MXCSR, context.get("mxcsr", 0x1F80))
    # SegCs, SegDs, SegEs, SegFs, SegGs, SegSs: the kernel's selectors (KGDT64_R0_CODE 0x10,
    # KGDT64_R3_DATA | RPL 3 = 0x2B for the data segments, KGDT64_R0_DATA 0x18 for SS).
    struct.pack_into("<6HI", raw, CONTEXT_SEG_CS, 0x10, 0x2B, 0x2B, 0x53, 0x2B, 0x18,
                     context.get("rflags", 0x202) & 0xFFFF_FFFF)
    for i, name in enumerate(CONTEXT_GPRS):
        struct.pack_into("<Q", raw, CONTEXT_RAX + 8 * i, context[name] & _MASK64)
    struct.pack_into("<Q", raw, CONTEXT_RIP, context["rip"] & _MASK64)
    for i in range(16):
        value = context.get(f"xmm{i}", 0)
        raw[CONTEXT_XMM0 + 16 * i:CONTEXT_XMM0 + 16 * (i + 1)] = value.to_bytes(16, "little")
    return bytes(raw)


def _read_context(ex: ExceptionDispatch, va: int, base: dict[str, int]) -> dict[str, int]:
    """The registers of the CONTEXT at ``va`` (as a filter may have changed them)."""
    raw = ex.kernel_read(va, CONTEXT_SIZE)
    context = dict(base)
    for i, name in enumerate(CONTEXT_GPRS):
        context[name] = struct.unpack_from("<Q", raw, CONTEXT_RAX + 8 * i)[0]
    context["rip"] = struct.unpack_from("<Q", raw, CONTEXT_RIP)[0]
    context["rflags"] = struct.unpack_from("<I", raw, CONTEXT_EFLAGS)[0]
    for i in range(16):
        context[f"xmm{i}"] = int.from_bytes(raw[CONTEXT_XMM0 + 16 * i:CONTEXT_XMM0 + 16 * i + 16],
                                            "little")
    return context


def _is_c_specific_handler(ex: ExceptionDispatch, image: DriverImage, handler: int) -> bool:
    """Whether ``handler`` (an address in the image) is its import of __C_specific_handler:
    the import thunk lld writes, `jmp qword ptr [rip + disp32]` through the import address
    table, or the IAT's value itself."""
    target = exports.pe_address_of("ntoskrnl.exe", C_SPECIFIC_HANDLER)
    if handler == target:
        return True
    try:
        code = ex.kernel_read(handler, 6)
    except BugCheck:
        return False
    if code[:2] != b"\xff\x25":
        return False
    slot = handler + 6 + struct.unpack("<i", code[2:])[0]
    try:
        return ex.kernel_read_u64(slot) == target
    except BugCheck:
        return False


@dataclass(frozen=True)
class Scope:
    """One SCOPE_TABLE record (C_SCOPE_TABLE_ENTRY): a __try's [begin, end), its filter
    (or EXCEPTION_EXECUTE_HANDLER, or the __finally block when target is 0) and the
    __except block's address (0 for a __finally)."""

    begin: int
    end: int
    handler: int
    target: int


def scope_table(ex: ExceptionDispatch, image: DriverImage, data: int) -> list[Scope]:
    """The SCOPE_TABLE at ``data`` (__C_specific_handler's language-specific data): a
    ULONG Count, then Count records of four RVAs (HandlerAddress 1 stays 1)."""
    (count,) = struct.unpack("<I", ex.kernel_read(data, 4))
    scopes = []
    for i in range(min(count, 4096)):
        begin, end, handler, target = struct.unpack("<IIII", ex.kernel_read(data + 4 + 16 * i,
                                                                           16))
        scopes.append(Scope(image.base + begin, image.base + end,
                            handler if handler == EXCEPTION_EXECUTE_HANDLER else
                            image.base + handler, image.base + target if target else 0))
    return scopes


def _frames(ex: ExceptionDispatch, context: dict[str, int], flag: int
            ) -> Iterator[tuple[DriverImage, int, int, dict[str, int],
                                unwind.FrameHandler | None]]:
    """Undo the frames of ``context`` (a copy) one by one while RIP is in a PE driver:
    (image, ControlPc, EstablisherFrame, the frame's own context, its handler) each."""
    walk = dict(context)
    for _ in range(MAX_FRAMES):
        image = pe_image_at(ex, walk["rip"])
        if image is None:
            return
        function = unwind.lookup(image.functions, walk["rip"])
        control_pc, before = walk["rip"], dict(walk)
        try:
            frame, handler = unwind.virtual_unwind(ex.kernel_read, image.base, function, walk,
                                                   flag)
        except (unwind.UnwindError, BugCheck):
            return                      # unwind data or stack unreadable: the walk ends
        yield image, control_pc, frame, before, handler


def dispatch(ex: ExceptionDispatch, record: ExceptionRecord, context: dict[str, int],
             below: int | None = None) -> Dispatch | dict[str, int]:
    """RtlDispatchException for an exception at ring 0 in a PE driver: the context to
    continue with when a handler takes it, else the Dispatch (its records in memory) for
    the bug check. ``below``: where the records of a chained exception begin."""
    d = Dispatch(record, dict(context))
    _write_records(ex, d, below)
    for image, control_pc, frame, _, handler in _frames(ex, context,
                                                         unwind.UNW_FLAG_EHANDLER):
        if handler is None or not _is_c_specific_handler(ex, image, handler.handler):
            continue
        for scope in scope_table(ex, image, handler.data):
            if not scope.begin <= control_pc < scope.end or not scope.target:
                continue                              # not this __try, or a __finally
            value = EXCEPTION_EXECUTE_HANDLER
            if scope.handler != EXCEPTION_EXECUTE_HANDLER:
                value = _signed32(ex.call_kernel(scope.handler, d.pointers_va, frame,
                                                 space=_space(ex),
                                                 stack_top=d.stack_top).rax)
            if value < 0:                             # EXCEPTION_CONTINUE_EXECUTION
                if record.flags & EXCEPTION_NONCONTINUABLE:
                    return dispatch(ex, ExceptionRecord(
                        STATUS_NONCONTINUABLE_EXCEPTION, record.address,
                        flags=EXCEPTION_NONCONTINUABLE, nested=d.record_va), context,
                        below=d.pointers_va)
                return _read_context(ex, d.context_va, context)
            if value > 0:                             # EXCEPTION_EXECUTE_HANDLER
                return _unwind(ex, d, frame, scope.target)
    return d


def _unwind(ex: ExceptionDispatch, d: Dispatch, target_frame: int,
            target_ip: int) -> dict[str, int]:
    """RtlUnwindEx to ``target_frame``: the __finally blocks of the scopes left run, then
    the context of the target frame, at ``target_ip`` with RAX = the exception code."""
    for image, control_pc, frame, before, handler in _frames(ex, d.context,
                                                              unwind.UNW_FLAG_UHANDLER):
        target = frame == target_frame
        if handler is not None and _is_c_specific_handler(ex, image, handler.handler):
            for scope in scope_table(ex, image, handler.data):
                if not scope.begin <= control_pc < scope.end:
                    continue
                if target and (scope.target == target_ip or
                               scope.begin <= target_ip < scope.end):
                    break                             # the __except that takes it
                if not scope.target:
                    ex.call_kernel(scope.handler, 1, frame, space=_space(ex),
                                   stack_top=d.stack_top)
        if target:
            before["rip"], before["rax"] = target_ip, d.record.code
            return before
    raise BugCheck(BugCheckCode.KMODE_EXCEPTION_NOT_HANDLED,
                   (d.record.code, d.record.address, *(tuple(d.record.information) + (0, 0))[:2]),
                   d.record.address, "RtlUnwindEx did not find the target frame again")


def _signed32(value: int) -> int:
    value &= 0xFFFF_FFFF
    return value - (1 << 32) if value & 0x8000_0000 else value


def _space(ex: ExceptionDispatch):
    """The address space that is current (funclets run in it, as the driver did)."""
    return next((s for s in ex.mm.spaces if s.cr3 == ex.cpu.cr3), ex.mm.system)


def unhandled(ex: ExceptionDispatch, d: Dispatch, detail: str) -> BugCheck:
    """The bug check for an exception no frame handled, by where it happened:
    - in a system service (a dispatch routine serving an app's request): 0x3B
      SYSTEM_SERVICE_EXCEPTION (code, address, CONTEXT, 0): the system service
      dispatcher's handler, KiSystemServiceHandler, finds it unhandled;
    - in DriverEntry or DriverUnload, which Windows runs in a system thread: 0x7E
      SYSTEM_THREAD_EXCEPTION_NOT_HANDLED (code, address, EXCEPTION_RECORD, CONTEXT), from
      the system thread's filter (PspUnhandledExceptionInSystemThread);
    - elsewhere (an ISR, a DPC): KiDispatchException's own 0x1E KMODE_EXCEPTION_NOT_HANDLED
      (code, address, ExceptionInformation[0], ExceptionInformation[1]). An ISR or DPC that
      runs during a system service (an interrupt taken while a dispatch routine waits) is
      one of these: its walk ended at its own return trap, short of the service's frames."""
    r = d.record
    info = (tuple(r.information) + (0, 0))[:2]
    if ex.interrupt_routines:
        code, params = BugCheckCode.KMODE_EXCEPTION_NOT_HANDLED, (r.code, r.address, *info)
    elif ex.in_system_service:
        code, params = BugCheckCode.SYSTEM_SERVICE_EXCEPTION, (r.code, r.address, d.context_va, 0)
    elif ex.current_thread is None:
        # DriverEntry or DriverUnload, at whatever IRQL it raised itself to: the system
        # thread's filter is on the walk's way as ever.
        code, params = BugCheckCode.SYSTEM_THREAD_EXCEPTION_NOT_HANDLED, \
            (r.code, r.address, d.record_va, d.context_va)
    else:
        code, params = BugCheckCode.KMODE_EXCEPTION_NOT_HANDLED, (r.code, r.address, *info)
    return BugCheck(code, params, r.address, detail)


def status_name(code: int) -> str:
    """``STATUS_X (0x...)`` for a code ntstatus.h names, or the bare hex."""
    name = status.status_name(code)
    return name if name.startswith("0x") else f"{name} (0x{code:08X})"


# The faults Windows dispatches from kernel mode (KiDivideErrorFault, KiInvalidOpcodeFault,
# KiBreakpointTrap, KiGeneralProtectionFault, KiAlignmentFault, KiXmmException,
# KiFloatingErrorFault), besides a page fault on a user address (below).
DISPATCHED_VECTORS = frozenset({Vector.DE, Vector.UD, Vector.BP, Vector.GP, Vector.AC,
                                Vector.XM, Vector.MF})


def fault_record(exc: CpuException, instruction: str, irql: int, divisor_is_zero: bool
                 ) -> ExceptionRecord | None:
    """The EXCEPTION_RECORD of a ring-0 fault Windows dispatches as an exception, or None for
    one that stays a bug check: #DE, #UD, #BP, #GP, #AC, #MF/#XM, and a page fault on a USER
    address below DISPATCH_LEVEL that the memory manager could not resolve (MmAccessFault
    returns STATUS_ACCESS_VIOLATION for it). A page fault on a kernel address (0x50), at
    DISPATCH_LEVEL or above (0xD1/0x0A), a SMAP violation and the traps Windows always stops
    on (#DF, #TS, #NP, #SS, #MC: 0x7F) are not dispatched."""
    if exc.vector == Vector.PF:
        if exc.address is None or exc.address >= layout.KERNEL_SPACE_START or \
                irql >= DISPATCH_LEVEL or exc.reason.startswith("SMAP"):
            return None
    elif exc.vector not in DISPATCHED_VECTORS:
        return None
    info = trap.user_exception(exc, instruction, stack_guard=None,
                               divisor_is_zero=divisor_is_zero)
    code, params, detail = info.code, info.params, info.detail or info.name
    if code == NTSTATUS.STATUS_PRIVILEGED_INSTRUCTION:
        # Nothing is privileged at CPL 0: a #GP there (a bad MSR, a bad selector, a reserved
        # CR8 bit) is KiGeneralProtectionFault's STATUS_ACCESS_VIOLATION with no address
        # (-1). The ring-3 wording ("needs CPL 0") does not fit: the CPU's reason does.
        code, params = NTSTATUS.STATUS_ACCESS_VIOLATION, (0, _MASK64)
        detail = exc.reason or f"#GP({exc.error_code or 0:#x}) at CPL 0"
    return ExceptionRecord(code, exc.rip, params, detail=detail)


# x64 KTRAP_FRAME (0x190 bytes) ends with the machine frame the CPU pushes: ErrorCode, then
# Rip at 0x168, SegCs, EFlags, Rsp, SegSs.
KTRAP_FRAME_SIZE, KTRAP_FRAME_RIP = 0x190, 0x168
KGDT64_R0_CODE, KGDT64_R0_DATA = 0x10, 0x18


def fast_fail(ex: ExceptionDispatch, exc: CpuException, instruction: str) -> BugCheck:
    """``int 0x29`` (__fastfail) at ring 0: KiRaiseSecurityCheckFailure stops the machine at
    once, nothing is dispatched: bug check 0x139 KERNEL_SECURITY_CHECK_FAILURE (the
    fast-fail code from RCX, the trap frame, the exception record, 0). Both are written on
    the kernel stack: the trap frame holds only the machine frame (RIP after the int, CS,
    RFLAGS, RSP, SS), the record is STATUS_STACK_BUFFER_OVERRUN at the `int 0x29`,
    noncontinuable, with the code as its one parameter."""
    rsp = ex.cpu.reg("rsp")
    frame = ((rsp - RECORDS_GAP) & ~0xF) - KTRAP_FRAME_SIZE
    record = frame - ((EXCEPTION_RECORD_SIZE + 0xF) & ~0xF)
    ex.kernel_write(frame + KTRAP_FRAME_RIP, struct.pack(
        "<5Q", exc.next_rip, KGDT64_R0_CODE, ex.cpu.reg("rflags"), rsp, KGDT64_R0_DATA))
    ex.kernel_write(record, ExceptionRecord(NTSTATUS.STATUS_STACK_BUFFER_OVERRUN, exc.rip,
                                            (exc.argument,), EXCEPTION_NONCONTINUABLE).pack())
    return BugCheck(BugCheckCode.KERNEL_SECURITY_CHECK_FAILURE,
                    (exc.argument, frame, record, 0), exc.rip,
                    f"__fastfail({exc.argument:#x}) at ring 0 (KiRaiseSecurityCheckFailure)",
                    instruction=instruction)
