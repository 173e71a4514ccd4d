"""Every fault is precise: reported at the faulting instruction with nothing after it run,
at full speed and counted alike (SDM Vol. 3A §6.5). The faults the CPU layer raises from
Unicorn's hooks (`in`/`out` at CPL 3, `sysenter`), and `int n` to a gate of DPL 0, which
is #GP at the `int` (SDM §6.12.1.1), reported as Windows does: STATUS_ACCESS_VIOLATION
with ExceptionInformation (0, -1) (docs/abi.md, "Exceptions in user mode")."""

from __future__ import annotations

import struct

import pytest

from emu.nt.loader import Image, Segment
from emu.nt.status import NTSTATUS

CODE, DATA = 0x400000, 0x401000
FLAG = DATA + 0x10                       # a byte the guest stores to after the fault
NO_ADDRESS = 0xFFFF_FFFF_FFFF_FFFF

MOV_AL_5A = bytes.fromhex("b05a")
MOV_DX_80 = bytes.fromhex("66ba8000")
OUT = bytes.fromhex("ee")                # out dx, al
IN = bytes.fromhex("ec")                 # in al, dx
SYSENTER = bytes.fromhex("0f34")
STORE_FLAG = bytes.fromhex("c6042510104000" "01")        # mov byte ptr [0x401010], 1
SYSCALL = bytes.fromhex("0f05")


def mov_edi(value: int) -> bytes:
    return b"\xbf" + struct.pack("<I", value)


def mov_esi(value: int) -> bytes:
    return b"\xbe" + struct.pack("<I", value)


def mov_eax(value: int) -> bytes:
    return b"\xb8" + struct.pack("<I", value)


WRITE_HELLO = mov_edi(DATA) + mov_esi(5) + mov_eax(0x01) + SYSCALL     # NtWriteConsole
EXIT_0 = bytes.fromhex("48c7c7ffffffff") + mov_esi(0) + bytes.fromhex("31c0") + SYSCALL
EXIT_7 = bytes.fromhex("48c7c7ffffffff") + mov_esi(7) + bytes.fromhex("31c0") + SYSCALL


def image(code: bytes, handler: bytes = b"") -> Image:
    """A raw 64-bit image: ``code`` at CODE (then ``handler`` at CODE + 0x800), and a data
    page at DATA holding "hello"."""
    text = bytearray(4096)
    text[:len(code)] = code
    text[0x800:0x800 + len(handler)] = handler
    data = bytearray(4096)
    data[:5] = b"hello"
    return Image("raw", "raw", 0, CODE, [Segment(CODE, 4096, 5), Segment(DATA, 4096, 6)],
                 {CODE: text, DATA: data}, {CODE: 5, DATA: 6})


def run(machine_factory, code: bytes, *, counted: bool, handler: bytes = b""):
    m = machine_factory(max_insns=10_000_000 if counted else None)
    p = m.executive.create_process(image(code, handler), [])
    result = m.run()
    return m, p, result


SPEEDS = pytest.mark.parametrize("counted", [False, True], ids=["full-speed", "counted"])


@SPEEDS
def test_out_then_a_system_call_prints_nothing(machine_factory, counted):
    code = MOV_DX_80 + OUT + WRITE_HELLO + EXIT_0
    _, p, _ = run(machine_factory, code, counted=counted)
    assert p.output == b""
    assert p.exit_status == NTSTATUS.STATUS_PRIVILEGED_INSTRUCTION
    assert p.exception.rip == CODE + len(MOV_DX_80)
    assert p.exception.instruction == "out dx, al"


@SPEEDS
def test_out_then_terminate_self_ends_with_the_fault(machine_factory, counted):
    _, p, _ = run(machine_factory, MOV_DX_80 + OUT + EXIT_7, counted=counted)
    assert p.exit_status == NTSTATUS.STATUS_PRIVILEGED_INSTRUCTION


# The handler exits with (the faulting context's AL << 8) | the flag byte: AL as it was
# before the `in` (0x5A), and the flag still 0 (the store after the `in` never ran).
HANDLER = bytes.fromhex(
    "4889f1"                 # mov rcx, rsi            (the CONTEXT)
    "0fb6342510104000"       # movzx esi, byte ptr [0x401010]
    "0fb601"                 # movzx eax, byte ptr [rcx]   (CONTEXT.rax)
    "c1e008"                 # shl eax, 8
    "09c6"                   # or esi, eax
    "48c7c7ffffffff"         # mov rdi, -1
    "31c0"                   # xor eax, eax
    "0f05")                  # syscall: NtTerminateProcess(-1, esi)
SET_HANDLER = mov_edi(CODE + 0x800) + mov_eax(0x24) + SYSCALL      # NtSetExceptionDispatcher


@SPEEDS
def test_a_store_after_a_faulting_in_is_not_seen_by_the_handler(machine_factory, counted):
    code = SET_HANDLER + MOV_AL_5A + MOV_DX_80 + IN + STORE_FLAG + EXIT_0
    _, p, _ = run(machine_factory, code, counted=counted, handler=HANDLER)
    assert p.exit_status == 0x5A00


def test_a_faulting_out_is_not_counted_as_completed(machine_factory):
    """Counted like a #GP the CPU raises itself (`hlt` at CPL 3): not completed."""
    nops = b"\x90" * 3
    _, _, hlt = run(machine_factory, nops + b"\xf4" + EXIT_0, counted=True)
    _, _, out = run(machine_factory, nops + OUT + EXIT_0, counted=True)
    assert out.stats.instructions == hlt.stats.instructions


@SPEEDS
def test_sysenter_is_a_general_protection_fault(machine_factory, counted):
    code = b"\x90" + SYSENTER + STORE_FLAG + EXIT_0
    m, p, _ = run(machine_factory, code, counted=counted)
    exc = p.exception
    assert exc is not None and exc.code == NTSTATUS.STATUS_ACCESS_VIOLATION
    assert exc.rip == CODE + 1 and exc.instruction == "sysenter"
    assert exc.params == (0, NO_ADDRESS)


INT_VECTORS = [0x00, 0x01, 0x02, 0x05, 0x07, 0x08, 0x0A, 0x0B, 0x0C, 0x0D, 0x0E, 0x10, 0x11,
               0x13, 0x20, 0x2E, 0x80, 0xFF]


@pytest.mark.parametrize("vector", INT_VECTORS, ids=[f"int{v:#x}" for v in INT_VECTORS])
@SPEEDS
def test_int_n_to_a_kernel_gate_is_gp_at_the_int(machine_factory, vector, counted):
    code = b"\x90" + bytes((0xCD, vector)) + STORE_FLAG + EXIT_0
    _, p, _ = run(machine_factory, code, counted=counted)
    exc = p.exception
    assert exc is not None and exc.code == NTSTATUS.STATUS_ACCESS_VIOLATION, exc
    spelled = f"{vector}" if vector < 10 else f"{vector:#x}"          # as Capstone does
    assert exc.rip == CODE + 1 and exc.instruction == f"int {spelled}"
    assert exc.params == (0, NO_ADDRESS)
    assert exc.detail.startswith(f"#GP({(vector << 3) | 2:#x}): int {vector:#x} at CPL 3")


def test_int_0_before_a_divide_by_zero_is_still_the_int(machine_factory):
    """The bytes before RIP cannot tell `int 0` from a #DE at the next instruction."""
    code = bytes.fromhex("31c9" "cd00" "48f7f1") + EXIT_0       # xor ecx,ecx; int 0; div rcx
    _, p, _ = run(machine_factory, code, counted=False)
    assert p.exception.code == NTSTATUS.STATUS_ACCESS_VIOLATION
    assert p.exception.rip == CODE + 2


def test_a_divide_by_zero_after_int_0_bytes_is_still_a_divide_error(machine_factory):
    """And a real #DE whose instruction follows CD 00 bytes (here an operand) is a #DE."""
    code = bytes.fromhex("31c9" "b80000cd00" "48f7f1") + EXIT_0  # mov eax, 0xcd0000: CD 00
    _, p, _ = run(machine_factory, code, counted=False)
    assert p.exception.code == NTSTATUS.STATUS_INTEGER_DIVIDE_BY_ZERO
    assert p.exception.rip == CODE + 7


@SPEEDS
def test_three_faults_from_hooks_in_a_row_each_report_themselves(machine_factory, counted):
    """out, in, sysenter, each retried past by the handler's NtContinue: no false #DF."""
    skip = bytes.fromhex(
        "4889f3"                 # mov rbx, rsi          (CONTEXT)
        "488b8380000000"         # mov rax, [rbx + 0x80] (CONTEXT.rip)
        "8a10"                   # mov dl, [rax]         (the opcode's first byte)
        "80fa0f"                 # cmp dl, 0x0f
        "7507"                   # jne +7
        "48ff8380000000"         # inc qword [rbx + 0x80]  (two-byte sysenter: one more)
        "48ff8380000000"         # inc qword [rbx + 0x80]
        "fe0425" + "10104000"    # inc byte ptr [0x401010]   (count the faults)
        "4889df"                 # mov rdi, rbx
        "b825000000"             # mov eax, 0x25        (NtContinue)
        "0f05")
    exit_with_count = bytes.fromhex("0fb6342510104000" "48c7c7ffffffff" "31c0" "0f05")
    code = SET_HANDLER + MOV_DX_80 + OUT + IN + SYSENTER + exit_with_count
    _, p, _ = run(machine_factory, code, counted=counted, handler=skip)
    assert p.exit_status == 3, p.exception


@SPEEDS
def test_syscall_in_a_32_bit_process_is_an_invalid_opcode(machine_factory, counted):
    """Intel: SYSCALL is #UD outside 64-bit mode; a 32-bit process enters with int 0x2e."""
    code = bytes.fromhex("b801000000" "0f05"                # mov eax, 1; syscall
                         "b800000000" "bbffffffff" "b907000000" "cd2e")   # exit(7)
    page = bytearray(4096)
    page[:len(code)] = code
    raw32 = Image("raw32", "raw32", 0, CODE, [Segment(CODE, 4096, 5)], {CODE: page},
                  {CODE: 5}, bits=32)
    m = machine_factory(max_insns=10_000_000 if counted else None)
    p = m.executive.create_process(raw32, [])
    m.run()
    assert p.exit_status == NTSTATUS.STATUS_ILLEGAL_INSTRUCTION
    assert p.exception.rip == CODE + 5 and p.exception.instruction == "syscall"


@SPEEDS
def test_int1_is_a_single_step_trap_after_it(machine_factory, counted):
    """INT1 (ICEBP, F1) raises #DB as a trap, with no DPL check: STATUS_SINGLE_STEP with the
    address after it, as `int3` is reported after its own check."""
    _, p, _ = run(machine_factory, b"\x90\xf1\x90" + EXIT_0, counted=counted)
    assert p.exception.code == NTSTATUS.STATUS_SINGLE_STEP
    assert p.exception.rip == CODE + 2


def test_int1_completes_like_int3(machine_factory):
    _, _, int3 = run(machine_factory, b"\x90\x90\xcc" + EXIT_0, counted=True)
    _, _, int1 = run(machine_factory, b"\x90\x90\xf1" + EXIT_0, counted=True)
    assert int1.stats.instructions == int3.stats.instructions


def test_a_faulting_int_n_is_not_counted_as_completed(machine_factory):
    _, _, hlt = run(machine_factory, b"\x90\x90\xf4" + EXIT_0, counted=True)
    _, _, int_n = run(machine_factory, b"\x90\x90\xcd\x40" + EXIT_0, counted=True)
    assert int_n.stats.instructions == hlt.stats.instructions
