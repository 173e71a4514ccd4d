"""The x87 control word and MXCSR a thread starts with, and that each thread keeps its own.

Microsoft's x64 calling convention (FpCsr, MxCsr) gives a program at its start the x87
control word 0x27F (exceptions masked, double precision, round to nearest) and MXCSR 0x1F80
(exceptions masked, round to nearest). Each process here reads both with FNSTCW and STMXCSR
and ends with ``MXCSR << 16 | FCW`` as its exit status.
"""

from __future__ import annotations

import struct

from emu.nt.loader import Image, Segment
from emu.nt.syscalls import Service

CODE, DATA = 0x40_0000, 0x40_1000
NT_CURRENT_PROCESS = (1 << 64) - 1
READ_AND_EXIT = (
    b"\x0f\xae\x5c\x24\xf8"                 # stmxcsr [rsp - 8]
    b"\x8b\x44\x24\xf8"                     # mov eax, [rsp - 8]
    b"\xc1\xe0\x10"                         # shl eax, 16
    b"\xd9\x7c\x24\xf0"                     # fnstcw [rsp - 16]
    b"\x0f\xb7\x4c\x24\xf0"                 # movzx ecx, word [rsp - 16]
    b"\x09\xc8"                             # or eax, ecx
    b"\x48\x89\xc6"                         # mov rsi, rax: the exit status
    b"\x48\xc7\xc7\xff\xff\xff\xff"         # mov rdi, -1: this process
    + b"\xb8" + struct.pack("<I", Service.NtTerminateProcess) + b"\x0f\x05")
YIELD = b"\xb8" + struct.pack("<I", Service.NtYieldExecution) + b"\x0f\x05"


def _image(name: str, code: bytes) -> Image:
    return Image(name, name, 0, CODE, [Segment(CODE, 4096, 5), Segment(DATA, 4096, 6)],
                 {CODE: code.ljust(4096, b"\xcc"), DATA: bytes(4096)}, {CODE: 5, DATA: 6})


def test_a_thread_starts_with_the_x64_conventions_control_words(machine_factory):
    m = machine_factory(mem="16M")
    proc = m.executive.create_process(_image("fpu", READ_AND_EXIT), [])
    m.run()
    assert proc.exit_status == 0x1F80_027F


def test_each_thread_keeps_its_own_and_a_new_one_gets_the_defaults(machine_factory):
    # A loads MXCSR 0 and the control word 0x37F (FINIT's), yields, then reads them back;
    # B starts while A waits and reads its own: A's loads reach neither B nor the next A.
    zero, cw = DATA, DATA + 8
    a_code = (b"\x0f\xae\x14\x25" + struct.pack("<I", zero)      # ldmxcsr [DATA]
              + b"\xd9\x2c\x25" + struct.pack("<I", cw)           # fldcw [DATA + 8]
              + YIELD + READ_AND_EXIT)
    m = machine_factory(mem="16M")
    ex = m.executive
    a_image = _image("a", a_code)
    a_image.pages[DATA] = (struct.pack("<I", 0).ljust(8, b"\0") + struct.pack("<H", 0x37F)) \
        .ljust(4096, b"\0")
    a = ex.create_process(a_image, [])
    b = ex.create_process(_image("b", READ_AND_EXIT), [])
    m.run()
    assert (a.exit_status, b.exit_status) == (0x0000_037F, 0x1F80_027F)
