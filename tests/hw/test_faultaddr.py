"""CR2 from the faulting instruction: the address the CPU computed, recomputed."""

from __future__ import annotations

from emu.hw.faultaddr import decode, fault_address, memory_accesses

REGS = {"rax": 0x1000, "rbx": 0x2000, "rsi": 0xFFFF_8000_0000_0000, "rsp": 0x7000, "rip": 0,
        "fs_base": 0x9000_0000, "gs_base": 0}


def test_sib_without_index_is_not_a_register():
    insn = decode(bytes.fromhex("000426"), 0x400000)          # add byte ptr [rsi + riz], al
    (access,) = memory_accesses(insn, REGS.__getitem__)
    assert access.address == REGS["rsi"] and access.write


def test_base_index_scale_displacement():
    insn = decode(bytes.fromhex("488b44d810"), 0x400000)      # mov rax, [rax + rbx*8 + 0x10]
    (access,) = memory_accesses(insn, REGS.__getitem__)
    assert access.address == 0x1000 + 0x2000 * 8 + 0x10 and not access.write


def test_push_faults_below_the_stack_pointer():
    insn = decode(bytes.fromhex("53"), 0x400000)              # push rbx
    assert fault_address(insn, REGS.__getitem__, 0x6000, "write") == 0x7000 - 8


def test_an_access_running_into_the_faulting_page_reports_its_first_byte():
    regs = dict(REGS, rax=0x1FFC)
    insn = decode(bytes.fromhex("488b00"), 0x400000)          # mov rax, [rax]: 0x1ffc..0x2003
    assert fault_address(insn, regs.__getitem__, 0x2000, "read") == 0x2000
