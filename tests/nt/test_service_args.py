"""Every system service checks every argument before it acts (docs/abi.md, "Pointers from user
mode" and "Handles"): for each service in the service table, a bad pointer in each pointer
argument, handle 0 in each handle argument, and each undefined flag, must come back as the
documented status with nothing changed: no console output, no file offset moved, no handle
or object made, no thread or process started, no memory changed, the caller still alive."""

from __future__ import annotations

import struct

import pytest
from guestcalls import (
    BASEV,
    BASEV2,
    BUF,
    BUF2,
    CMD,
    CONSOLE,
    CONSOLE_STR,
    COUNT,
    CTX,
    DATA,
    EVENT,
    FILE,
    HELLO_STR,
    IOCTL,
    IOCTL_REVERSE_BUFFERED,
    IOSB,
    MBI,
    NT_CURRENT_PROCESS,
    OLDV,
    OUTS,
    OUTV,
    RDONLY,
    REGION,
    SIZEV,
    SIZEV2,
    SIZEV3,
    THREAD_FN,
    TICKET,
    Call,
    data_page,
    read_user,
    run,
    snapshot,
)

from emu.nt.loader import Image, Segment
from emu.nt.status import NTSTATUS
from emu.nt.syscalls import SERVICE_TABLE, Service

S = Service
AV = NTSTATUS.STATUS_ACCESS_VIOLATION
READ, WRITE = "read", "write"

# A good call of every service that takes a pointer: (call, {argument index: access}).
# Index 6 is argument 7, on the user stack.
POINTER_CALLS = {
    "NtWriteConsole": (Call(S.NtWriteConsole, (BUF, 5)), {0: READ}),
    "NtDuplicateObject": (Call(S.NtDuplicateObject, (EVENT, OUTV)), {1: WRITE}),
    "NtCreateProcess": (Call(S.NtCreateProcess, (HELLO_STR, HELLO_STR, OUTV)),
                        {0: READ, 1: READ, 2: WRITE}),
    "NtCreateThread": (Call(S.NtCreateThread, (THREAD_FN, 0, OUTV)), {2: WRITE}),
    "NtCreateEvent": (Call(S.NtCreateEvent, (OUTV, 1, 1)), {0: WRITE}),
    "NtOpenFile": (Call(S.NtOpenFile, (HELLO_STR, OUTV)), {0: READ, 1: WRITE}),
    "NtReadFile file": (Call(S.NtReadFile, (FILE, BUF2, 16, COUNT)), {1: WRITE, 3: WRITE}),
    "NtReadFile device": (Call(S.NtReadFile, (TICKET, BUF2, 16, COUNT)), {1: WRITE, 3: WRITE}),
    "NtQueryExitStatus": (Call(S.NtQueryExitStatus, (NT_CURRENT_PROCESS, OUTV)), {1: WRITE}),
    "NtWriteFile console": (Call(S.NtWriteFile, (CONSOLE, BUF, 5, COUNT)),
                            {1: READ, 3: WRITE}),
    "NtWriteFile device": (Call(S.NtWriteFile, (TICKET, BUF, 5, COUNT)), {1: READ, 3: WRITE}),
    "NtDeviceIoControlFile": (Call(S.NtDeviceIoControlFile,
                                   (IOCTL, IOCTL_REVERSE_BUFFERED, BUF, 5, BUF2, 5), COUNT),
                              {2: READ, 4: WRITE, 6: WRITE}),
    "NtReadFileEx": (Call(S.NtReadFileEx, (TICKET, EVENT, BUF2, 16, IOSB)), {2: WRITE, 4: WRITE}),
    "NtSetSystemInformation": (Call(S.NtSetSystemInformation, (80, CMD, 4)), {1: READ}),
    "NtAllocateVirtualMemory": (Call(S.NtAllocateVirtualMemory, (BASEV, SIZEV, 0x3000, 4)),
                                {0: WRITE, 1: WRITE}),
    "NtFreeVirtualMemory": (Call(S.NtFreeVirtualMemory, (BASEV2, SIZEV2, 0x8000)),
                            {0: WRITE, 1: WRITE}),
    "NtProtectVirtualMemory": (Call(S.NtProtectVirtualMemory, (BASEV2, SIZEV3, 2, OLDV)),
                               {0: WRITE, 1: WRITE, 3: WRITE}),
    "NtQueryVirtualMemory": (Call(S.NtQueryVirtualMemory, (REGION, MBI)), {1: WRITE}),
    "NtContinue": (Call(S.NtContinue, (CTX,)), {0: READ}),
}

# Every service that takes a handle, with handle 0 in it: (call, documented status).
INVALID = NTSTATUS.STATUS_INVALID_HANDLE
HANDLE_ZERO_CALLS = {
    "NtTerminateProcess": Call(S.NtTerminateProcess, (0, 5)),
    "NtClose": Call(S.NtClose, (0,)),
    "NtDuplicateObject": Call(S.NtDuplicateObject, (0, OUTV)),
    "NtWaitForSingleObject": Call(S.NtWaitForSingleObject, (0, 0)),
    "NtTerminateThread": Call(S.NtTerminateThread, (0, 5)),
    "NtSetEvent": Call(S.NtSetEvent, (0,)),
    "NtResetEvent": Call(S.NtResetEvent, (0,)),
    "NtReadFile": Call(S.NtReadFile, (0, BUF2, 16, COUNT)),
    "NtQueryExitStatus": Call(S.NtQueryExitStatus, (0, OUTV)),
    "NtWriteFile": Call(S.NtWriteFile, (0, BUF, 5, COUNT)),
    "NtDeviceIoControlFile": Call(S.NtDeviceIoControlFile,
                                  (0, IOCTL_REVERSE_BUFFERED, BUF, 5, BUF2, 5), COUNT),
    "NtReadFileEx": Call(S.NtReadFileEx, (0, EVENT, BUF2, 16, IOSB)),
}

# The services that take neither a pointer nor a handle.
NO_POINTER_OR_HANDLE = {S.NtGetCurrentProcessId, S.NtYieldExecution, S.NtDelayExecution,
                        S.NtGetCurrentThreadId, S.NtSetExceptionDispatcher}

BAD_POINTERS = {
    "kernel half": 0xFFFF_8000_0000_0000,
    "non-canonical": 0x0000_8000_0000_0000,
    "MmUserProbeAddress": 0x0000_7FFF_FFFF_0000,
    "unmapped": 0x0001_0000,
    "wraps": 0xFFFF_FFFF_FFFF_FFFC,
}


def test_every_service_is_in_a_table():
    covered = {call.number for call, _ in POINTER_CALLS.values()}
    covered |= {call.number for call in HANDLE_ZERO_CALLS.values()} | NO_POINTER_OR_HANDLE
    assert covered == set(SERVICE_TABLE)


@pytest.fixture(scope="module")
def baseline():
    """The machine after the setup alone."""
    from emu import Machine

    m = Machine(mem="16M", max_insns=2_000_000)
    made = [m]
    try:
        _, proc, results, dispatches = run(lambda **kw: made[0], [])
        assert all(r == 0 for r in results[:-1])
        return snapshot(m, proc, dispatches)
    finally:
        m.close()


def _cases():
    for name, (call, pointers) in POINTER_CALLS.items():
        for index, access in pointers.items():
            bad = dict(BAD_POINTERS)
            if access == WRITE:
                bad["read-only page"] = RDONLY
            for what, value in bad.items():
                yield pytest.param(name, call, index, value, id=f"{name}-arg{index + 1}-{what}")


def _with(call: Call, index: int, value: int) -> Call:
    if index == 6:
        return Call(call.number, call.args, value)
    args = list(call.args)
    args[index] = value
    return Call(call.number, tuple(args), call.stack7)


@pytest.mark.parametrize("name, call, index, value", list(_cases()))
def test_a_bad_pointer_is_refused_before_anything_happens(machine_factory, baseline, name,
                                                          call, index, value):
    m, proc, results, dispatches = run(machine_factory, [_with(call, index, value)])
    assert m.result.bugcheck is None
    assert results[7] == AV
    assert snapshot(m, proc, dispatches) == baseline


@pytest.mark.parametrize("name", list(HANDLE_ZERO_CALLS))
def test_handle_0_is_no_handle_anywhere(machine_factory, baseline, name):
    m, proc, results, dispatches = run(machine_factory, [HANDLE_ZERO_CALLS[name]])
    assert results[7] == INVALID
    assert snapshot(m, proc, dispatches) == baseline


@pytest.mark.parametrize("name", [n for n in POINTER_CALLS if n != "NtContinue"])
def test_each_good_call_works(machine_factory, baseline, name):
    """The calls above are right but for the one bad argument: unchanged, they succeed."""
    call, _ = POINTER_CALLS[name]
    m, proc, results, _ = run(machine_factory, [call])
    expected = {"NtQueryExitStatus": 0, "NtWriteFile device": 0xC0000010}.get(name, 0)
    assert results[7] == expected


FLAG_CALLS = {
    "allocation type 0x80000000": (Call(S.NtAllocateVirtualMemory,
                                        (BASEV, SIZEV, 0x8000_3000, 4)),
                                   NTSTATUS.STATUS_INVALID_PARAMETER),
    "allocation type 0x40000000": (Call(S.NtAllocateVirtualMemory,
                                        (BASEV, SIZEV, 0x4000_1000, 4)),
                                   NTSTATUS.STATUS_INVALID_PARAMETER),
    "allocation type 0x200000": (Call(S.NtAllocateVirtualMemory, (BASEV, SIZEV, 0x20_3000, 4)),
                                 NTSTATUS.STATUS_INVALID_PARAMETER),
    "protection 0x80000004": (Call(S.NtAllocateVirtualMemory,
                                   (BASEV, SIZEV, 0x3000, 0x8000_0004)),
                              NTSTATUS.STATUS_INVALID_PAGE_PROTECTION),
    "new protection 0x10000002": (Call(S.NtProtectVirtualMemory,
                                       (BASEV2, SIZEV3, 0x1000_0002, OLDV)),
                                  NTSTATUS.STATUS_INVALID_PAGE_PROTECTION),
    "free type 0x80008000": (Call(S.NtFreeVirtualMemory, (BASEV2, SIZEV2, 0x8000_8000)),
                             NTSTATUS.STATUS_INVALID_PARAMETER),
    "event type 2": (Call(S.NtCreateEvent, (OUTV, 2, 0)), NTSTATUS.STATUS_INVALID_PARAMETER),
    "event state 2": (Call(S.NtCreateEvent, (OUTV, 0, 2)), NTSTATUS.STATUS_INVALID_PARAMETER),
    "memory list command 7": (Call(S.NtSetSystemInformation, (80, CMD + 1, 4)),
                              NTSTATUS.STATUS_INVALID_PARAMETER),
}


@pytest.mark.parametrize("name", list(FLAG_CALLS))
def test_an_undefined_flag_is_refused_before_anything_happens(machine_factory, baseline, name):
    call, status = FLAG_CALLS[name]
    m, proc, results, dispatches = run(machine_factory, [call])
    assert results[7] == status
    assert snapshot(m, proc, dispatches) == baseline


def test_nt_terminate_process_0_leaves_the_caller_running(machine_factory):
    m, proc, results, _ = run(machine_factory, [Call(S.NtTerminateProcess, (0, 0x55)),
                                                Call(S.NtWriteConsole, (BUF, 5))])
    assert results[7:9] == (INVALID, 0)
    assert proc.output == b"hello" and proc.exit_status is None


@pytest.mark.parametrize("call", [Call(S.NtTerminateProcess, (0xFFFF_FFFF_FFFF_FFFE, 5)),
                                  Call(S.NtTerminateThread, (NT_CURRENT_PROCESS, 5)),
                                  Call(S.NtSetEvent, (NT_CURRENT_PROCESS,)),
                                  Call(S.NtReadFile, (NT_CURRENT_PROCESS, BUF2, 16, 0))],
                         ids=["process(-2)", "thread(-1)", "set-event(-1)", "read(-1)"])
def test_a_pseudo_handle_of_the_wrong_type_is_a_type_mismatch(machine_factory, baseline, call):
    """ObReferenceObjectByHandle: NtCurrentProcess()/NtCurrentThread() asked for another
    object type is STATUS_OBJECT_TYPE_MISMATCH, as a real handle of the wrong type is."""
    m, proc, results, dispatches = run(machine_factory, [call])
    assert results[7] == NTSTATUS.STATUS_OBJECT_TYPE_MISMATCH
    assert snapshot(m, proc, dispatches) == baseline


@pytest.mark.parametrize("length, status", [
    (1 << 20, 0), ((1 << 20) + 1, NTSTATUS.STATUS_INVALID_PARAMETER)])
def test_the_write_limit_is_checked_after_the_range(machine_factory, length, status):
    """A range in the user half longer than 1 MiB is STATUS_INVALID_PARAMETER, whatever its
    pages; a range that wraps or reaches the kernel half is STATUS_ACCESS_VIOLATION, whatever
    its length (docs/abi.md)."""
    calls = [Call(S.NtWriteConsole, (0x6000_0000_0000, length)),            # unmapped pages
             Call(S.NtWriteConsole, (0xFFFF_FFFF_FFFF_F000, length)),       # wraps
             Call(S.NtWriteConsole, (0xFFFF_8000_0000_0000, length)),       # kernel half
             Call(S.NtWriteFile, (CONSOLE, 0x6000_0000_0000, length, 0)),
             Call(S.NtWriteFile, (CONSOLE, 0xFFFF_FFFF_FFFF_F000, length, 0)),
             Call(S.NtWriteFile, (CONSOLE, 0xFFFF_8000_0000_0000, length, 0))]
    _, proc, results, _ = run(machine_factory, calls)
    first = AV if status == 0 else status
    assert results[7:13] == (first, AV, AV, first, AV, AV)
    assert proc.output == b""


def _context(rip: int) -> bytes:
    return struct.pack("<18Q", *([0] * 7 + [0x7FFF_FFFF_0000 - 0x100] + [0] * 8 + [rip, 0x202]))


@pytest.mark.parametrize("rip", [0, 0xFFFF_8000_0000_0000, 0x0000_8000_0000_0000,
                                 0x0000_7FFF_FFFF_0000])
def test_nt_continue_refuses_a_rip_outside_user_space(machine_factory, rip):
    """NtContinue with a CONTEXT whose rip is 0, in the kernel half, non-canonical or above
    the highest user address returns STATUS_INVALID_PARAMETER and the thread goes on."""
    m, proc, results, _ = run(machine_factory, [Call(S.NtContinue, (CTX,)),
                                                Call(S.NtWriteConsole, (BUF, 5))],
                              plant={CTX: _context(rip)})
    assert results[7:9] == (NTSTATUS.STATUS_INVALID_PARAMETER, 0)
    assert proc.output == b"hello" and proc.exit_status is None


# The same checks through int 0x2e, from a 32-bit process (docs/abi.md, "32-bit processes").
MOV32 = [b"\xbb", b"\xb9", b"\xba", b"\xbe", b"\xbf", b"\xbd"]   # ebx ecx edx esi edi ebp


def _run32(machine_factory, calls: list[Call]):
    code = b""
    for i, call in enumerate(calls):
        args = list(call.args) + [0] * (6 - len(call.args))
        for op, value in zip(MOV32, args, strict=True):
            code += op + struct.pack("<I", value & 0xFFFF_FFFF)
        code += b"\xb8" + struct.pack("<I", call.number) + b"\xcd\x2e"
        code += b"\xa3" + struct.pack("<I", DATA + 4 * i)            # mov [slot], eax
    code += b"\xeb\xfe"
    m = machine_factory(mem="16M", max_insns=200_000)
    code_va = 0x40_0000
    image = Image("svc32", "svc32", 0, code_va, [Segment(code_va, 4096, 5), Segment(DATA, 4096, 6)],
                  {code_va: bytearray(code.ljust(4096, b"\xcc")),
                   DATA: bytearray(data_page())}, {code_va: 5, DATA: 6}, bits=32)
    proc = m.executive.create_process(image, [])
    m.run()
    return proc, struct.unpack(f"<{len(calls)}I", read_user(m.executive, proc, DATA,
                                                             4 * len(calls)))


def test_a_32_bit_process_gets_the_same_checks(machine_factory):
    proc, results = _run32(machine_factory, [
        Call(S.NtOpenFile, (CONSOLE_STR, OUTS)),                       # handle 4
        Call(S.NtWriteFile, (4, BUF, 5, 0xFFFF_0000)),                 # count: not user space
        Call(S.NtWriteFile, (4, BUF, 5, RDONLY)),                      # count: not mapped
        Call(S.NtTerminateProcess, (0, 5)),
        Call(S.NtCreateEvent, (0xFFFF_FFF0, 1, 0)),
        Call(S.NtWriteConsole, (BUF, 5))])
    assert results == (0, AV, AV, INVALID, AV, 0)
    assert proc.output == b"hello" and proc.exit_status is None
    assert [v for v, _ in proc.handles.items()] == [4]


def test_nt_continue_takes_the_trap_flag(machine_factory):
    """NtContinue takes TF from the CONTEXT's rflags (docs/abi.md): the thread resumes
    single-stepping, so the first instruction it runs raises STATUS_SINGLE_STEP after it."""
    from guestcalls import CODE, SETUP, assemble

    target = CODE + len(assemble(SETUP + [Call(S.NtContinue, (CTX,))])) - 2   # the next call
    context = bytearray(_context(target))
    context[17 * 8:18 * 8] = struct.pack("<Q", 0x302)                       # IF, TF
    m, proc, _, _ = run(machine_factory, [Call(S.NtContinue, (CTX,)),
                                          Call(S.NtWriteConsole, (BUF, 5))],
                        plant={CTX: bytes(context)})
    assert proc.exit_status == NTSTATUS.STATUS_SINGLE_STEP and proc.output == b""
    assert proc.exception.rip == target + 10                 # after its first movabs


@pytest.mark.parametrize("call, status", [
    (Call(S.NtCreateEvent, (RDONLY, 2, 0)), AV),
    (Call(S.NtCreateEvent, (0xFFFF_8000_0000_0000, 0, 7)), AV),
    (Call(S.NtQueryVirtualMemory, (0xFFFF_8000_0000_0000, RDONLY)), AV),
    (Call(S.NtQueryVirtualMemory, (0x7FFF_FFFF_0000, 0)), AV),
    (Call(S.NtAllocateVirtualMemory, (0, SIZEV, 0, 4)), NTSTATUS.STATUS_INVALID_PARAMETER),
    (Call(S.NtFreeVirtualMemory, (0, SIZEV2, 0)), NTSTATUS.STATUS_INVALID_PARAMETER),
    (Call(S.NtProtectVirtualMemory, (BASEV2, SIZEV3, 0, 0)),
     NTSTATUS.STATUS_INVALID_PAGE_PROTECTION)],
    ids=["event-type", "event-state", "query-kernel", "query-above", "allocate", "free",
         "protect"])
def test_a_bad_pointer_and_a_bad_value_in_windows_order(machine_factory, baseline, call, status):
    """With a bad pointer and a bad value in one call, the status is the first check's in
    Windows' order (docs/abi.md): NtCreateEvent probes its handle pointer before the event
    type, NtQueryVirtualMemory its buffer before the address; the virtual-memory services
    that take flags check them before their pointers."""
    m, proc, results, dispatches = run(machine_factory, [call])
    assert results[7] == status
    assert snapshot(m, proc, dispatches) == baseline
