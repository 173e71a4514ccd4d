"""The IDT gates Windows x64 opens to user mode besides int3 (KiInitializeIdt: DPL 3 for
vectors 4, 0x29, 0x2c and 0x2d) do what their Windows handlers do, at full speed and
counted alike (docs/abi.md, "Exceptions in user mode"):

    int 4 / into   KiOverflowTrap               STATUS_INTEGER_OVERFLOW at RIP - 1
    int 0x29       KiRaiseSecurityCheckFailure  __fastfail: the process ends with
                                                STATUS_STACK_BUFFER_OVERRUN (RCX), no handler
    int 0x2c       KiRaiseAssertion             STATUS_ASSERTION_FAILURE at the int
    int 0x2d       KiDebugServiceTrap           a debug service: KdpStub completes 1, 3, 4, 5;
                                                others are STATUS_BREAKPOINT at RIP + 1
"""

from __future__ import annotations

import struct

import pytest

from emu.nt.loader import Image, Segment
from emu.nt.status import NTSTATUS

CODE, DATA = 0x400000, 0x401000
SYSCALL = bytes.fromhex("0f05")
NOP = b"\x90"
STORE_FLAG = bytes.fromhex("c6042510104000" "01")            # mov byte ptr [0x401010], 1
EXIT_0 = bytes.fromhex("48c7c7ffffffff" "be00000000" "31c0") + SYSCALL
EXIT_FLAG = bytes.fromhex("0fb6342510104000" "48c7c7ffffffff" "31c0") + SYSCALL


def mov_eax(value: int) -> bytes:
    return b"\xb8" + struct.pack("<I", value)


def mov_ecx(value: int) -> bytes:
    return b"\xb9" + struct.pack("<I", value)


SET_HANDLER = b"\xbf" + struct.pack("<I", CODE + 0x800) + mov_eax(0x24) + SYSCALL  # 12 bytes
# The handler ends the process with CONTEXT.rip - CODE | (ExceptionAddress - CODE) << 8 |
# NumberParameters << 16 | (ExceptionInformation[0] & 0xFF) << 24.
HANDLER = bytes.fromhex(
    "488b8680000000"         # mov rax, [rsi + 0x80]     CONTEXT.rip
    "482d00004000"           # sub rax, CODE
    "488b5710"               # mov rdx, [rdi + 0x10]     ExceptionAddress
    "4881ea00004000"         # sub rdx, CODE
    "48c1e208" "4809d0"      # shl rdx, 8; or rax, rdx
    "8b4f18"                 # mov ecx, [rdi + 0x18]     NumberParameters
    "48c1e110" "4809c8"      # shl rcx, 16; or rax, rcx
    "0fb64f20"               # movzx ecx, byte [rdi + 0x20]   ExceptionInformation[0]
    "48c1e118" "4809c8"      # shl rcx, 24; or rax, rcx
    "89c6"                   # mov esi, eax
    "48c7c7ffffffff" "31c0" "0f05")   # NtTerminateProcess(-1, esi)

SPEEDS = pytest.mark.parametrize("counted", [False, True], ids=["full-speed", "counted"])


def image(code: bytes, bits: int = 64) -> Image:
    text = bytearray(4096)
    text[:len(code)] = code
    text[0x800:0x800 + len(HANDLER)] = HANDLER
    return Image("raw", "raw", 0, CODE, [Segment(CODE, 4096, 5), Segment(DATA, 4096, 6)],
                 {CODE: text, DATA: bytearray(4096)}, {CODE: 5, DATA: 6}, bits=bits)


def run(machine_factory, code: bytes, *, counted: bool, bits: int = 64):
    m = machine_factory(max_insns=10_000_000 if counted else None)
    p = m.executive.create_process(image(code, bits), [])
    m.run()
    return p


def handled(ctx: int, address: int, params: tuple[int, ...] = ()) -> int:
    """The exit status HANDLER gives for these offsets from CODE."""
    return ctx | address << 8 | len(params) << 16 | ((params[0] & 0xFF) << 24 if params else 0)


# -- vector 4: KiOverflowTrap ----------------------------------------------------------------

@SPEEDS
def test_int_4_is_an_integer_overflow_after_the_int(machine_factory, counted):
    p = run(machine_factory, NOP + b"\xcd\x04" + STORE_FLAG + EXIT_0, counted=counted)
    exc = p.exception
    assert p.exit_status == NTSTATUS.STATUS_INTEGER_OVERFLOW
    assert exc.rip == CODE + 2 and exc.instruction == "int 4" and exc.params == ()


@SPEEDS
def test_int_4_continues_after_the_int(machine_factory, counted):
    p = run(machine_factory, SET_HANDLER + NOP + b"\xcd\x04" + EXIT_0, counted=counted)
    assert p.exit_status == handled(ctx=15, address=14)


@SPEEDS
def test_into_in_a_32_bit_process_is_an_integer_overflow(machine_factory, counted):
    code = bytes.fromhex("b07f" "0401" "ce"                  # mov al, 0x7f; add al, 1; into
                         "b800000000" "bbffffffff" "b907000000" "cd2e")   # exit(7)
    p = run(machine_factory, code, counted=counted, bits=32)
    assert p.exit_status == NTSTATUS.STATUS_INTEGER_OVERFLOW
    assert p.exception.rip == CODE + 4 and p.exception.instruction == "into"


# -- vector 0x29: __fastfail ----------------------------------------------------------------

@SPEEDS
def test_fastfail_ends_the_process_without_its_handler(machine_factory, counted):
    code = SET_HANDLER + mov_ecx(0x37) + b"\xcd\x29" + STORE_FLAG + EXIT_0
    p = run(machine_factory, code, counted=counted)
    exc = p.exception
    assert p.exit_status == NTSTATUS.STATUS_STACK_BUFFER_OVERRUN     # not the handler's
    assert exc.code == NTSTATUS.STATUS_STACK_BUFFER_OVERRUN and exc.params == (0x37,)
    assert exc.rip == CODE + 17 and exc.instruction == "int 0x29"


@SPEEDS
def test_fastfail_in_a_32_bit_process_takes_ecx(machine_factory, counted):
    code = mov_ecx(7) + b"\xcd\x29" + bytes.fromhex("b800000000" "bbffffffff" "cd2e")
    p = run(machine_factory, code, counted=counted, bits=32)
    assert p.exit_status == NTSTATUS.STATUS_STACK_BUFFER_OVERRUN
    assert p.exception.params == (7,) and p.exception.rip == CODE + 5


# -- vector 0x2c: KiRaiseAssertion ----------------------------------------------------------

@SPEEDS
def test_int_2c_is_an_assertion_failure_at_the_int(machine_factory, counted):
    p = run(machine_factory, NOP + b"\xcd\x2c" + STORE_FLAG + EXIT_0, counted=counted)
    exc = p.exception
    assert p.exit_status == NTSTATUS.STATUS_ASSERTION_FAILURE == 0xC0000420
    assert exc.rip == CODE + 1 and exc.instruction == "int 0x2c" and exc.params == ()


@SPEEDS
def test_int_2c_context_is_the_int(machine_factory, counted):
    p = run(machine_factory, SET_HANDLER + NOP + b"\xcd\x2c" + EXIT_0, counted=counted)
    assert p.exit_status == handled(ctx=13, address=13)


# -- vector 0x2d: KiDebugServiceTrap --------------------------------------------------------

@SPEEDS
@pytest.mark.parametrize("service", [1, 3, 4, 5])
def test_int_2d_services_kdpstub_completes_go_on_past_the_next_byte(machine_factory, counted,
                                                                   service):
    # The int3 after the int 2dh is skipped; the store after it runs.
    code = mov_eax(service) + b"\xcd\x2d" + b"\xcc" + STORE_FLAG + EXIT_FLAG
    p = run(machine_factory, code, counted=counted)
    assert p.exception is None and p.exit_status == 1


@SPEEDS
def test_int_2d_other_services_are_a_breakpoint_after_the_next_byte(machine_factory, counted):
    p = run(machine_factory, mov_eax(0) + b"\xcd\x2d" + b"\xcc" + EXIT_0, counted=counted)
    exc = p.exception
    assert p.exit_status == NTSTATUS.STATUS_BREAKPOINT
    assert exc.rip == CODE + 8 and exc.params == (0,) and exc.instruction == "int 0x2d"


@SPEEDS
def test_int_2d_context_is_after_the_int(machine_factory, counted):
    code = SET_HANDLER + mov_eax(2) + b"\xcd\x2d" + b"\xcc" + EXIT_0
    p = run(machine_factory, code, counted=counted)
    assert p.exit_status == handled(ctx=19, address=20, params=(2,))


# -- the gates are counted alike ------------------------------------------------------------

@pytest.mark.parametrize("int_n", [b"\xcd\x04", b"\xcd\x29", b"\xcd\x2c", b"\xcd\x2d"],
                         ids=["int4", "int0x29", "int0x2c", "int0x2d"])
def test_the_int_completes_as_a_trap(machine_factory, int_n):
    """Each gate's `int` completes (a trap: RIP past it), counted as one instruction."""
    m = machine_factory(max_insns=10_000_000)
    p = m.executive.create_process(image(NOP * 3 + int_n + EXIT_0), [])
    counted = m.run().stats.instructions
    m2 = machine_factory(max_insns=10_000_000)
    m2.executive.create_process(image(NOP * 3 + b"\xcc" + EXIT_0), [])
    assert counted == m2.run().stats.instructions         # as int3, a trap: 4 done
    assert p.exception is not None


@pytest.mark.parametrize("vector", [0x05, 0x28, 0x2A, 0x2B, 0x2E, 0x2F])
def test_the_neighbouring_gates_stay_closed(machine_factory, vector):
    """Windows gives these DPL 0 (0x2e too, in a 64-bit process): #GP(n*8+2) at the int,
    an access violation (0, -1)."""
    p = run(machine_factory, NOP + bytes((0xCD, vector)) + EXIT_0, counted=False)
    exc = p.exception
    assert exc.code == NTSTATUS.STATUS_ACCESS_VIOLATION and exc.rip == CODE + 1
    assert exc.params == (0, 0xFFFF_FFFF_FFFF_FFFF)
    assert exc.detail.startswith(f"#GP({(vector << 3) | 2:#x})")


@SPEEDS
def test_into_in_a_64_bit_process_is_an_invalid_opcode(machine_factory, counted):
    code = bytes.fromhex("b07f" "0401" "ce") + EXIT_0      # mov al, 0x7f; add al, 1; into
    p = run(machine_factory, code, counted=counted)
    assert p.exit_status == NTSTATUS.STATUS_ILLEGAL_INSTRUCTION
    assert p.exception.rip == CODE + 4


# -- vector 3: KiBreakpointTrap -------------------------------------------------------------

@SPEEDS
@pytest.mark.parametrize("int3", [b"\xcc", b"\xcd\x03"], ids=["cc", "cd03"])
def test_int3_has_one_parameter_breakpoint_break(machine_factory, counted, int3):
    """KiBreakpointTrap raises STATUS_BREAKPOINT with one parameter, BREAKPOINT_BREAK (0), at
    the last byte of the instruction; CONTEXT.rip is that byte too."""
    p = run(machine_factory, NOP + int3 + EXIT_0, counted=counted)
    exc = p.exception
    assert p.exit_status == NTSTATUS.STATUS_BREAKPOINT and exc.params == (0,)
    last = 12 + len(int3)                     # SET_HANDLER, the nop, then the int3's last byte
    p = run(machine_factory, SET_HANDLER + NOP + int3 + EXIT_0, counted=counted)
    assert p.exit_status == handled(ctx=last, address=last, params=(0,))
