"""User-mode exception dispatch: a process may handle its own exceptions.

Windows delivers a user-mode exception by copying an EXCEPTION_RECORD and the
thread's CONTEXT onto its user stack and resuming it in ntdll's
KiUserExceptionDispatcher, which runs the handlers; a handler that repairs the
cause resumes the thread with NtContinue(CONTEXT) ("Exception dispatching",
Windows Internals ch. 8). Here the process registers its dispatcher with
NtSetExceptionDispatcher (the guest library's ``set_exception_handler`` does);
without one, an exception ends the process.

The CONTEXT is this machine's own, smaller than Windows' (docs/abi.md):
    rax rbx rcx rdx rsi rdi rbp rsp r8..r15 rip rflags   18 quadwords
    xmm0..xmm15                                          16 x 16 bytes
    mxcsr                                                 1 quadword
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from emu.nt.process import ExceptionInfo, Thread
from emu.nt.status import NTSTATUS
from emu.nt.syscalls import Service, UserAccessViolation, probe_and_read, probe_and_write, service

if TYPE_CHECKING:
    from emu.nt.interfaces import UserExceptionDispatch
    from emu.nt.process import Process

CONTEXT_GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10",
                "r11", "r12", "r13", "r14", "r15", "rip", "rflags")
CONTEXT_SIZE = len(CONTEXT_GPRS) * 8 + 16 * 16 + 8          # 408 bytes
RECORD_SIZE = 152                                           # EXCEPTION_RECORD64
EXCEPTION_MAXIMUM_PARAMETERS = 15
MAX_NESTED = 4                 # exceptions raised while dispatching, before the process dies
RED_ZONE = 128                 # the System V red zone below RSP is left alone
RFLAGS_TF = 0x100              # the trap flag: single-step


def pack_context(regs: dict[str, int]) -> bytes:
    """The CONTEXT bytes for ``regs``."""
    out = struct.pack(f"<{len(CONTEXT_GPRS)}Q", *(regs.get(r, 0) for r in CONTEXT_GPRS))
    out += b"".join(regs.get(f"xmm{i}", 0).to_bytes(16, "little") for i in range(16))
    return out + struct.pack("<Q", regs.get("mxcsr", 0x1F80))


def unpack_context(data: bytes) -> dict[str, int]:
    """The registers a CONTEXT holds."""
    regs = dict(zip(CONTEXT_GPRS, struct.unpack_from(f"<{len(CONTEXT_GPRS)}Q", data),
                    strict=True))
    base = len(CONTEXT_GPRS) * 8
    for i in range(16):
        regs[f"xmm{i}"] = int.from_bytes(data[base + 16 * i:base + 16 * i + 16], "little")
    regs["mxcsr"] = struct.unpack_from("<Q", data, base + 256)[0] & 0xFFFF
    return regs


def pack_record(info: ExceptionInfo) -> bytes:
    """EXCEPTION_RECORD64: code, flags, nested record, address, parameters (winnt.h)."""
    params = list(info.params)[:EXCEPTION_MAXIMUM_PARAMETERS]
    params += [0] * (EXCEPTION_MAXIMUM_PARAMETERS - len(params))
    return struct.pack("<IIQQII15Q", info.code & 0xFFFF_FFFF, 0, 0, info.rip,
                       len(info.params), 0, *params)


def deliver(ex: UserExceptionDispatch, thread: Thread, info: ExceptionInfo,
            context_rip: int | None = None) -> bool:
    """KiDispatchException, user-mode half: if the process has a dispatcher, put the
    record and context on the thread's stack and resume it in the dispatcher with
    (record, context) as arguments; CONTEXT.rip is ``context_rip`` (default: the
    exception's address). False: no dispatcher (or no usable stack)."""
    proc = thread.process
    if not proc.exception_dispatcher or proc.bits != 64 or thread.dispatching >= MAX_NESTED:
        return False
    regs = ex.capture_user_context()
    # The faulting instruction, to retry or skip (a trap's: where its handler resumes).
    regs["rip"] = info.rip if context_rip is None else context_rip
    record_va = (regs["rsp"] - RED_ZONE - RECORD_SIZE) & ~0xF
    context_va = (record_va - CONTEXT_SIZE) & ~0xF
    rsp = context_va - 8                     # as if called: a (null) return address
    try:
        probe_and_write(ex, record_va, pack_record(info))
        probe_and_write(ex, context_va, pack_context(regs))
        probe_and_write(ex, rsp, bytes(8))
    except UserAccessViolation:
        return False                         # the stack itself is bad: the process dies
    thread.dispatching += 1
    # The dispatcher itself runs without TF (else it would single-step); the CONTEXT keeps
    # the thread's TF, for NtContinue to resume with.
    ex.load_user_context(thread, {"rip": proc.exception_dispatcher, "rsp": rsp,
                                  "rdi": record_va, "rsi": context_va,
                                  "rflags": regs["rflags"] & ~RFLAGS_TF})
    return True


@service(Service.NtSetExceptionDispatcher)
def nt_set_exception_dispatcher(ex: UserExceptionDispatch, proc: Process,
                                args: tuple[int, ...]) -> int:
    """NtSetExceptionDispatcher(Dispatcher): where user-mode exceptions are delivered
    (0: nowhere, the process ends on an exception)."""
    if args[0] and not 0x10000 <= args[0] <= proc.highest_address:
        return NTSTATUS.STATUS_INVALID_PARAMETER
    proc.exception_dispatcher = args[0]
    return NTSTATUS.STATUS_SUCCESS


@service(Service.NtContinue)
def nt_continue(ex: UserExceptionDispatch, proc: Process, args: tuple[int, ...]) -> int | None:
    """NtContinue(Context): resume the calling thread with the registers in Context."""
    regs = unpack_context(probe_and_read(ex, args[0], CONTEXT_SIZE))
    if not 0 < regs["rip"] <= proc.highest_address:
        return NTSTATUS.STATUS_INVALID_PARAMETER
    thread = ex.current_thread
    thread.continue_context = regs
    thread.dispatching = max(0, thread.dispatching - 1)
    ex.cpu.stop()                            # the dispatcher loads it once the CPU is out
    return None
